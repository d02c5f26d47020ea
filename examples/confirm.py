"""Publisher confirmation: put() returns once a consumer has acked the event.

Needs a server with these namespaces:  bus server --namespaces app,orders,notifications,math,critical
Run:  python examples/confirm.py   (BUS_URL overrides http://localhost:2021)
"""

import os
import threading

from busd import Client

client = Client(os.environ.get("BUS_URL", "http://localhost:2021"))


# The subscriber must be live before the publish for the publisher to get its confirmation;
# "newest", so it does not replay every earlier run's events.
events = client.get("critical.events", start="newest")


def consume() -> None:
    """Processes and acks each event."""
    for event in events:
        print("processing", event.payload)
        event.ack()  # this unblocks the publisher


threading.Thread(target=consume, daemon=True).start()

# The publisher waits for 1 consumer to ack (TimeoutError after 5 s otherwise).
client.put("critical.events", "important data", confirm=1, timeout=5)
print("confirmed")
