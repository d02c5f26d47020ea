"""Consumer groups: three workers share one stream of orders, each order handled once.

Needs a server with these namespaces:  bus server --namespaces app,orders,notifications,math,critical
Run:  python examples/groups.py   (BUS_URL overrides http://localhost:2021)

Each worker is a member of the group "billing": the server hands every orders.> event to
one member at a time, remembers the group's position across restarts, redelivers what a
member did not ack (or what a member that disconnected held), and after max_deliver
deliveries puts the event on orders.dlq.billing.
"""

import os
import threading
from collections import Counter

from busd import Client

URL = os.environ.get("BUS_URL", "http://localhost:2021")
ORDERS = 30
handled: Counter = Counter()
lock = threading.Lock()
done = threading.Event()


def worker(name: str) -> None:
    with Client(URL) as client:
        # the first join creates the group; ack_wait: how long a member may take
        members = client.get("orders.>", group="billing", start="oldest", max_inflight=10,
                             ack_wait="10s", max_deliver=3, idle_timeout=2)
        for event in members:
            if event.payload.get("poison"):
                event.term()  # never again: straight to orders.dlq.billing
                continue
            with lock:
                handled[name] += 1
            event.ack()


with Client(URL) as client:
    client.put_batch([{"subject": "orders.created", "data": {"order": n}}
                      for n in range(ORDERS)])
    client.put("orders.created", {"poison": True})
    threads = [threading.Thread(target=worker, args=(f"worker-{k}",)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("handled per worker:", dict(handled), "total:", sum(handled.values()))
    state = client.groups("orders", "billing")["orders"]["billing"]
    print("group: acked", state["acked"], "pending", state["pending"], "dead letters",
          state["dead_letters"])
    client.delete_group("orders", "billing")
