"""Pub/sub: a subscriber that acks by hand, and a publisher.

Needs a server with these namespaces:  bus server --namespaces app,orders,notifications,math,critical
Run:  python examples/pubsub.py   (BUS_URL overrides http://localhost:2021)
"""

import os

from busd import Client

client = Client(os.environ.get("BUS_URL", "http://localhost:2021"))

# Subscriber (can be in a different service): live from the moment get() returns.
# Manual ack: an event not acked within 5 s is delivered again; 3 deliveries in all.
events = client.get("notifications.*", start="newest", ack="manual",
                    redelivery=5.0, redelivery_count=3)

# Publisher
r = client.put("notifications.email", {"to": "user@example.com", "subject": "Welcome!"})
print("published", r.id, "at index", r.index)

for event in events:
    print("received", event.subject, event.payload)
    event.ack()  # acknowledge to prevent redelivery
    break
events.close()
