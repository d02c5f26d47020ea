"""Container health check: exit 0 when the busd in this container answers GET /healthz "ok".

The image's HEALTHCHECK runs `python3 /opt/busd/healthcheck.py` (standard library only: the
slim image has no curl or wget). It asks the server where BUS_ADDR says it listens, on the
loopback address when it listens on all interfaces, over HTTPS when BUS_TLS_CERT is set
(without verifying the certificate: it is the container's own server).
"""

import json
import os
import ssl
import sys
import urllib.request


def main() -> int:
    host, _, port = os.environ.get("BUS_ADDR", ":2021").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    tls = bool(os.environ.get("BUS_TLS_CERT"))
    url = f"{'https' if tls else 'http'}://{host}:{port or 2021}/healthz"
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            status = json.load(answer).get("status")
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != "ok":
        print(f"unhealthy: {url}: status {status!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
