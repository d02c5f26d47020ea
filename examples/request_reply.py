"""Request/reply: a service answering math.add requests, and a caller.

Needs a server with these namespaces:  bus server --namespaces app,notifications,math,critical
Run:  python examples/request_reply.py   (BUS_URL overrides http://localhost:2021)
"""

import os
import threading

from busd import Client

client = Client(os.environ.get("BUS_URL", "http://localhost:2021"))


def serve() -> None:
    """The service (handles math.add requests; usually another process)."""
    for event in client.get("math.add", start="oldest"):
        request = event.payload
        event.ack({"result": request["A"] + request["B"]})  # the reply


threading.Thread(target=serve, daemon=True).start()

# The caller: waits up to 5 s for the reply (TimeoutError otherwise).
resp = client.put("math.add", {"A": 10, "B": 20}, request_reply=True, timeout=5)
print(resp.payload["result"])  # 30
