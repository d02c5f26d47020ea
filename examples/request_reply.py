"""Request/reply: a service answering math.add requests, and a caller.

Needs a server with these namespaces:  bus server --namespaces app,orders,notifications,math,critical
Run:  python examples/request_reply.py   (BUS_URL overrides http://localhost:2021)
"""

import os
import threading

from busd import Client

client = Client(os.environ.get("BUS_URL", "http://localhost:2021"))


# The service (usually another process): live when get() returns, so it sees the request
# below; "newest" rather than "oldest", so it does not answer every earlier run's requests.
requests = client.get("math.add", start="newest")


def serve() -> None:
    """Answers math.add requests."""
    for event in requests:
        request = event.payload
        event.ack({"result": request["A"] + request["B"]})  # the reply


threading.Thread(target=serve, daemon=True).start()

# The caller: waits up to 5 s for the reply (TimeoutError otherwise).
resp = client.put("math.add", {"A": 10, "B": 20}, request_reply=True, timeout=5)
print(resp.payload["result"])  # 30
