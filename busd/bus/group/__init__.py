"""Consumer groups (SPEC §3.7): durable, competing subscribers of one namespace.

settings.py   what a group is created with (name, subjects, ack_wait, max_deliver, ...)
journal.py    its durable state on disk: ack floor and pending deliveries, group-committed
dispatcher.py one group's delivery: pending events, timers, naks, dead letters
member.py     one connected member: its SSE stream and its in-flight events
registry.py   every group of the server: create/join, load at start-up, commit, delete
"""
