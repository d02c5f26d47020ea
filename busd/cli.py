"""bus: run a busd message bus, and talk to one.

Usage:
  bus server [options]
  bus (-h | --help)
  bus --version

Server options (BUS_* environment variables take precedence over flags, as in Bus):
  --addr ADDR              Listen address [env BUS_ADDR, default :2021].
  --path DIR               Data directory [env BUS_PATH, default ./data].
  --namespaces LIST        Comma-separated namespaces, required [env BUS_NAMESPACES].
  --secret-key KEY         Encrypt logs at rest with this secret [env BUS_SECRET_KEY].
  --block-size SIZE        Encryption block size [env BUS_BLOCK_SIZE, default 4096].
  --log-level LEVEL        DEBUG, INFO, WARN or ERROR [env BUS_LOG_LEVEL, default INFO].
  --dup-size N             Keys remembered per subject for dedup, 0 = off [env BUS_DUP_SIZE,
                           default 1000].
  --dup-ttl DURATION       How long a dedup key is remembered, 0 = no limit [env BUS_DUP_TTL].
  --fsync POLICY           never, interval or always [env BUS_FSYNC, default interval].
  --fsync-interval DUR     Time between fsyncs under `interval` [env BUS_FSYNC_INTERVAL,
                           default 1s].
  --max-event-size SIZE    Largest event accepted [env BUS_MAX_EVENT_SIZE, default 1MiB].
  --retention-age AGE      Delete whole segments older than this, e.g. 7d, 12h
                           [env BUS_RETENTION_AGE].
  --retention-bytes SIZE   Keep at most this much per namespace, e.g. 10GiB
                           [env BUS_RETENTION_BYTES].
  --segment-size SIZE      Roll segment files at this size [env BUS_SEGMENT_SIZE, default 64MiB].
  --ping-interval DUR      Comment line on idle streams [env BUS_PING_INTERVAL, default 30s].
  --max-connections N      Refuse connections beyond this many [env BUS_MAX_CONNECTIONS,
                           default 10000].
  --idle-timeout DUR       Close idle keep-alive connections [env BUS_IDLE_TIMEOUT, default 120s].
  --header-timeout DUR     Cut requests with slow headers [env BUS_HEADER_TIMEOUT, default 10s].
  --body-timeout DUR       Cut requests whose body stalls [env BUS_BODY_TIMEOUT, default 30s].
  --auth-file FILE         TOML file of tokens; without it the bus is open [env BUS_AUTH_FILE].
"""

from __future__ import annotations

import logging
import os
import sys

from docopt import docopt

from busd import __version__
from busd.config import ConfigError, load_config
from busd.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv, version=f"bus (busd) {__version__}")
    if args["server"]:
        return server(args)
    return 2


def server(args: dict) -> int:
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"bus server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    from busd.server import run  # imported late: the CLI's other commands don't need uvloop

    try:
        return run(config)
    except Exception as exc:
        logging.getLogger("busd.server").error("cannot start reason=%r", str(exc))
        print(f"bus server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
