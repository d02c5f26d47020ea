"""bus: run a busd message bus, and talk to one.

Usage:
  bus <command> [<args>...]
  bus (-h | --help)
  bus --version

Commands:
  server    Run the bus: HTTP API on --addr, event logs under --path.
  put       Publish one event.
  get       Subscribe and print events, one JSON line each.
  ack       Acknowledge an event for a consumer.
  groups    List, inspect or delete consumer groups.
  debug     Read a data directory offline: events and totals, or --verify its CRCs.
  dump      Write whole namespaces to JSON lines (offline with --path, online with --host).
  restore   Put dumped events back with their ids and timestamps.
  copy      Copy namespaces to another data directory, or one namespace into another.

`bus <command> --help` describes each command and its flags.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from busd.cli.args import ArgvError, parse, usage
from busd.cli.output import EXIT_FAILURE, EXIT_USAGE, CommandError, UsageError, bus_error
from busd.server.config import ConfigError, load_config
from busd.server.logs import setup_logging
from busd.version import __version__
from busd.wire import id_problem, parse_duration

if TYPE_CHECKING:
    from busd.client import Client

# The commands' modules (and the SDK, the data-dir tools) are imported by the command that
# needs them: `bus server` must be listening fast (the Go SDK gives up after ~2 s).

SERVER_USAGE = """bus server: run the bus.

Usage:
  bus server [options]
  bus server (-h | --help)

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
  --dup-bytes SIZE         Memory the dedup cache may use in all [env BUS_DUP_BYTES,
                           default 64MiB].
  --fsync POLICY           never, interval or always [env BUS_FSYNC, default interval].
  --fsync-interval DUR     Time between fsyncs under `interval` [env BUS_FSYNC_INTERVAL,
                           default 1s].
  --max-event-size SIZE    Largest event payload accepted; a single event's body may be
                           64KiB more [env BUS_MAX_EVENT_SIZE, default 1MiB].
  --max-batch N            Most events in one POST; each is stored in one step of the event
                           loop, which other clients wait for [env BUS_MAX_BATCH,
                           default 1000].
  --max-body-memory SIZE   Request bodies buffered at once, all connections together;
                           past it, bodies wait (unread) for room, oldest first
                           [env BUS_MAX_BODY_MEMORY, default 512MiB].
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
  --tls-cert FILE          Serve HTTPS with this PEM certificate chain [env BUS_TLS_CERT].
  --tls-key FILE           The certificate's PEM private key [env BUS_TLS_KEY].
  --cors-origins LIST      Origins browsers may read answers from and POST/PUT from, or *
                           [env BUS_CORS_ORIGINS].
  --store STORE            local (data dir) or jetstream (NATS cluster) [env BUS_STORE].
  --nats-url URLS          JetStream servers, comma-separated [env BUS_NATS_URL].
  --replicas N             JetStream stream replicas, 1-5 [env BUS_REPLICAS, default 1].
  --no-ui                  Do not serve the browser console at /ui [env BUS_UI=off].
"""


PUT_USAGE = """bus put: publish one event.

Usage:
  bus put --subject SUBJECT --data DATA [--trace-id ID] [--key KEY] [--confirm N]
          [--timeout DUR] [--host URL] [--token TOKEN] [--ca-file FILE] [--insecure]
  bus put (-h | --help)

Prints the stored event's id, index and created_at on stderr; with --confirm, the
payloads of the consumers' replies on stdout, one JSON value per line.

Options:
  --subject SUBJECT  Subject to publish to, e.g. app.orders.created.
  --data DATA        Payload: used as JSON when it is JSON ('{"a":1}', 42, '"text"'),
                     otherwise sent as a JSON string.
  --trace-id ID      Trace id stored with the event.
  --key KEY          Deduplication key: the same key on the same subject is refused (409).
  --confirm N        Wait until N consumers have acked the event [default: 0].
  --timeout DUR      How long --confirm waits [default: 30s].
  --host URL         The bus [default: http://localhost:2021].
  --token TOKEN      Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE     Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure         Do not verify an https:// --host (test set-ups only).
"""

GET_USAGE = """bus get: subscribe and print events.

Usage:
  bus get (--subject PATTERN)... [--start START] [--ack MODE] [--redelivery DUR]
          [--redelivery-count N] [--group NAME] [--max-inflight N] [--count N]
          [--host URL] [--token TOKEN] [--ca-file FILE] [--insecure]
  bus get (-h | --help)

Prints each event as one JSON line on stdout and the consumer id on stderr, until
interrupted (or --count events).

Options:
  --subject PATTERN       What to receive: app.orders.created, app.*, app.> …; repeat it
                          for several patterns of one namespace (each event comes once).
  --start START           oldest, newest, or an event id e_… to start right after it
                          [default: newest].
  --ack MODE              auto: ack each event after printing it; manual: print it and wait
                          for `bus ack` (unacked events come again); none [default: none].
  --redelivery DUR        With auto/manual: send an unacked event again after this long
                          [default: 5s].
  --redelivery-count N    With auto/manual: deliveries of one event before it is skipped,
                          0 = unlimited [default: 3].
  --group NAME            Join this consumer group of the pattern's namespace (the first
                          join creates it, from the start given): each event goes to one
                          member. Events are acked after printing, unless the ack mode is
                          manual.
  --max-inflight N        Unacked events at a time (--group or --ack manual) [default: 1].
  --count N               Exit after printing N events.
  --host URL              The bus [default: http://localhost:2021].
  --token TOKEN           Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE          Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure              Do not verify an https:// --host (test set-ups only).
"""

ACK_USAGE = """bus ack: acknowledge an event for a consumer (of `bus get --ack manual`).

Usage:
  bus ack --consumer-id ID --event-id ID [--host URL] [--token TOKEN] [--ca-file FILE]
          [--insecure]
  bus ack (-h | --help)

Options:
  --consumer-id ID   The consumer (c_…), printed by `bus get` on stderr.
  --event-id ID      The event (e_…).
  --host URL         The bus [default: http://localhost:2021].
  --token TOKEN      Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE     Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure         Do not verify an https:// --host (test set-ups only).
"""

GROUPS_USAGE = """bus groups: list, inspect or delete consumer groups.

Usage:
  bus groups [--namespace NS] [--name NAME] [--json] [--host URL] [--token TOKEN]
             [--ca-file FILE] [--insecure]
  bus groups --delete --namespace NS --name NAME [--host URL] [--token TOKEN]
             [--ca-file FILE] [--insecure]
  bus groups (-h | --help)

A table on a terminal (one line per group: members, pending, lag, ack floor,
redeliveries, dead letters); JSON (GET /groups) with --json or into a pipe.

Options:
  --namespace NS     Only this namespace's groups.
  --name NAME        Only this group (with --namespace: its full figures).
  --delete           Remove the group (its members' streams end).
  --json             Print the JSON document even on a terminal.
  --host URL         The bus [default: http://localhost:2021].
  --token TOKEN      Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE     Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure         Do not verify an https:// --host (test set-ups only).
"""

DEBUG_USAGE = """bus debug: read a data directory offline.

Usage:
  bus debug [--path DIR] [--namespace NS] [--verify] [--secret-key KEY]
  bus debug (-h | --help)

Prints every retained event as one JSON line on stdout, then totals (events, bytes,
segments) per namespace on stderr. Changes nothing on disk, so it may run beside a
server. With --verify it checks every record's CRC instead and exits 1 naming the first
bad record's namespace, segment and offset.

Options:
  --path DIR          Data directory (the server's --path) [default: ./data].
  --namespace NS      Only this namespace (default: every namespace in DIR).
  --verify            Check every record instead of printing events.
  --secret-key KEY    Key of an encrypted data directory [env BUS_SECRET_KEY].
"""

DUMP_USAGE = """bus dump: write whole namespaces to JSON lines, exactly as stored.

Usage:
  bus dump [--path DIR] [--namespaces LIST] (--output FILE | --output-dir OUT)
           [--secret-key KEY]
  bus dump --host URL [--namespaces LIST] (--output FILE | --output-dir OUT)
           [--token TOKEN] [--ca-file FILE] [--insecure]
  bus dump (-h | --help)

Offline (--path) reads a data directory no server is using; online (--host) streams
each namespace from a running bus. One line per event: its id, subject, trace_id, key,
created_at and payload as stored. A single --output FILE holds every namespace (- is
stdout); with --output-dir OUT each namespace gets its own OUT/<namespace>.jsonl.

Options:
  --path DIR          Data directory [default: ./data].
  --host URL          A running bus, e.g. http://localhost:2021.
  --namespaces LIST   Comma-separated namespaces (default: all).
  --output FILE       One file for all namespaces.
  --output-dir OUT    One file per namespace.
  --secret-key KEY    Key of an encrypted data directory [env BUS_SECRET_KEY].
  --token TOKEN       Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE      Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure          Do not verify an https:// --host (test set-ups only).
"""

RESTORE_USAGE = """bus restore: put dumped events back, keeping every id and timestamp.

Usage:
  bus restore [--path DIR] (--input FILE | --input-dir IN) [--secret-key KEY]
  bus restore --host URL (--input FILE | --input-dir IN) [--token TOKEN]
              [--ca-file FILE] [--insecure]
  bus restore (-h | --help)

Every line is checked before anything is written. Offline (--path) the events are
appended to the data directory, which must not be in use by a server. Online (--host)
they are published to a running bus, in batches. Either way events whose id is already
there are skipped (online: those a bus on --store local refuses), so a restore can be
run again; it ends with "N restored, M already present" on stderr.

Options:
  --path DIR          Data directory [default: ./data].
  --host URL          A running bus, e.g. http://localhost:2021.
  --input FILE        A dump file (JSON lines).
  --input-dir IN      Every *.jsonl file of a directory, by name.
  --secret-key KEY    Encrypt what is written with this key, as the server will run
                      [env BUS_SECRET_KEY].
  --token TOKEN       Token of a bus run with --auth-file [env BUS_TOKEN].
  --ca-file FILE      Verify an https:// --host with this PEM CA bundle [env BUS_CA_FILE].
  --insecure          Do not verify an https:// --host (test set-ups only).
"""

COPY_USAGE = """bus copy: copy events to another data directory, or to another namespace.

Usage:
  bus copy --from DIR --to DIR [--namespaces LIST] [--skip-ids IDS]
           [--from-secret-key KEY] [--to-secret-key KEY]
  bus copy --dir DIR --src NS --dst NS [--skip-ids IDS] [--secret-key KEY]
  bus copy (-h | --help)

The first form copies whole namespaces between data directories, decrypting with
the --from-secret-key and encrypting with the --to-secret-key (different keys
re-encrypt). The second appends the events of namespace --src to namespace --dst of
the same directory, renaming each subject's first segment. Ids, timestamps and
payloads are kept; ids the destination already holds are skipped. No server may be
using either directory.

Options:
  --from DIR              Source data directory.
  --to DIR                Destination data directory.
  --namespaces LIST       Comma-separated namespaces (default: all).
  --skip-ids IDS          Comma-separated event ids not to copy.
  --from-secret-key KEY   Key of an encrypted source.
  --to-secret-key KEY     Encrypt the copy with this key.
  --dir DIR               Data directory holding both namespaces.
  --src NS                Namespace to copy from.
  --dst NS                Namespace to copy into.
  --secret-key KEY        Key of an encrypted --dir [env BUS_SECRET_KEY].
"""

_TOOL_LOG_LEVEL = "WARN"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `bus get … | head`: the reader went away. Point stdout at /dev/null so the
        # interpreter's last flush does not fail again (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = "bus"
    try:
        if not argv:
            raise ArgvError("give a command (bus --help describes them)", usage(__doc__))
        args = parse(__doc__, argv, argv, version=f"bus (busd) {__version__}",
                     options_first=True)
        command, rest = args["<command>"], args["<args>"]
        if command != "server" and command not in _COMMANDS:
            print(f"bus: unknown command {command!r}; the commands are "
                  f"server, {', '.join(_COMMANDS)} (bus --help)", file=sys.stderr)
            return EXIT_USAGE
        name = f"bus {command}"
        doc, run = (SERVER_USAGE, server) if command == "server" else _COMMANDS[command]
        options = parse(doc, [command, *rest], rest)
    except ArgvError as exc:
        print(f"{name}: {exc}\n{exc.usage}", file=sys.stderr)
        return exc.code
    if command == "server":
        return run(options)
    setup_logging(_log_level())
    from busd.client import BusError  # `bus server` (above) does without the SDK
    try:
        return run(options)
    except CommandError as exc:
        print(f"bus {command}: {exc}", file=sys.stderr)
        return exc.code
    except BusError as exc:
        print(f"bus {command}: {bus_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _log_level() -> str:
    """Tools log warnings (e.g. a torn tail seen while reading) unless BUS_LOG_LEVEL says
    otherwise; an invalid BUS_LOG_LEVEL is the server's business, not the tools'."""
    level = os.environ.get("BUS_LOG_LEVEL", "").strip().upper()
    return level if level in ("DEBUG", "INFO", "WARN", "ERROR") else _TOOL_LOG_LEVEL


# -- flag values ------------------------------------------------------------------------------
def _int(options: dict, flag: str, minimum: int = 0) -> int:
    text = options[flag]
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: invalid number {text!r}") from None
    if value < minimum:
        raise UsageError(f"{flag}: must be at least {minimum}")
    return value


def _duration(options: dict, flag: str) -> float:
    text = options[flag]
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _choice(options: dict, flag: str, choices: tuple[str, ...]) -> str:
    value = options[flag].strip().lower()
    if value not in choices:
        raise UsageError(f"{flag}: invalid value {options[flag]!r} (one of "
                         f"{', '.join(choices)})")
    return value


def _start(options: dict) -> str:
    start = options["--start"].strip()
    if start in ("oldest", "newest") or id_problem(start.encode()) is None:
        return start
    raise UsageError(f"--start: invalid value {start!r} (oldest, newest or an event id)")


def _consumer_id(options: dict) -> str:
    from busd._core import is_xid

    value = options["--consumer-id"].strip()
    if not (len(value) == 22 and value.startswith("c_") and is_xid(value[2:].encode())):
        raise UsageError(f"--consumer-id: invalid id {value!r} (expected c_<20-character xid>)")
    return value


def _event_id(options: dict) -> str:
    value = options["--event-id"].strip()
    problem = id_problem(value.encode())
    if problem is not None:
        raise UsageError(f"--event-id: {problem}")
    return value


def _secret_key(options: dict) -> str | None:
    """--secret-key, else $BUS_SECRET_KEY, as `bus server` reads it (the flag is explicit)."""
    return options.get("--secret-key") or os.environ.get("BUS_SECRET_KEY") or None


def _bus(options: dict) -> Client:
    """The bus of --host; the token of --token, else $BUS_TOKEN, and the CA file of
    --ca-file, else $BUS_CA_FILE (the flags are explicit: --insecure overrides the
    variable). The TLS flags only count for an https:// host."""
    import ssl

    from busd.client import Client

    token = options.get("--token") or os.environ.get("BUS_TOKEN") or None
    insecure = bool(options.get("--insecure"))
    ca_file = options.get("--ca-file")
    if insecure and ca_file:
        raise UsageError("--ca-file and --insecure cannot be used together")
    if not insecure:
        ca_file = ca_file or os.environ.get("BUS_CA_FILE") or None
    try:
        return Client(options["--host"], token=token, ca_file=ca_file, insecure=insecure)
    except ValueError as exc:
        raise UsageError(f"--host: {exc}") from None
    except OSError as exc:  # (the CA file, read when an https:// client is made)
        why = "it holds no valid PEM certificate" if isinstance(exc, ssl.SSLError) \
            else exc.strerror or exc
        raise UsageError(f"--ca-file: cannot load {ca_file}: {why}") from None


def _path(options: dict, flag: str = "--path") -> Path:
    value = options[flag]
    if not value or not value.strip():
        raise UsageError(f"{flag}: empty path")
    return Path(value)


# -- commands ---------------------------------------------------------------------------------
def _put(o: dict) -> int:
    import busd.cli.pubsub as cli_pubsub

    bus = _bus(o)
    confirm = _int(o, "--confirm")
    timeout = _duration(o, "--timeout")
    return cli_pubsub.put(bus, o["--subject"], o["--data"], o["--trace-id"], o["--key"],
                          confirm, timeout or 30.0)


def _get(o: dict) -> int:
    import busd.cli.pubsub as cli_pubsub

    bus = _bus(o)
    _duration(o, "--redelivery")
    return cli_pubsub.get(bus, tuple(o["--subject"]), _start(o),
                          _choice(o, "--ack", ("auto", "manual", "none")), o["--redelivery"],
                          _int(o, "--redelivery-count", minimum=-(1 << 31)),
                          _int(o, "--count", 1) if o["--count"] is not None else 0,
                          o["--group"], _int(o, "--max-inflight", 1))


def _groups(o: dict) -> int:
    import busd.cli.groups as cli_groups

    if o["--delete"]:
        return cli_groups.delete(_bus(o), o["--namespace"], o["--name"])
    return cli_groups.show(_bus(o), o["--namespace"], o["--name"], o["--json"])


def _ack(o: dict) -> int:
    import busd.cli.pubsub as cli_pubsub

    return cli_pubsub.ack(_bus(o), _consumer_id(o), _event_id(o))


def _debug(o: dict) -> int:
    import busd.cli.debug as cli_debug
    from busd.cli.datadir import parse_namespace_list

    namespace = o["--namespace"]
    if namespace is not None:
        parse_namespace_list(namespace, "--namespace")
    return cli_debug.debug(_path(o), namespace, o["--verify"], _secret_key(o))


def _dump(o: dict) -> int:
    import busd.cli.dump as cli_dump
    from busd.cli.datadir import parse_namespace_list

    namespaces = parse_namespace_list(o["--namespaces"], "--namespaces")
    if o["--host"] is not None:
        return cli_dump.dump_online(_bus(o), namespaces, o["--output"], o["--output-dir"])
    return cli_dump.dump(_path(o), namespaces, o["--output"], o["--output-dir"],
                         _secret_key(o))


def _restore(o: dict) -> int:
    import busd.cli.restore as cli_restore

    files = cli_restore.input_files(o["--input"], o["--input-dir"])
    if o["--host"] is not None:
        return cli_restore.restore_online(_bus(o), files)
    return cli_restore.restore(_path(o), files, _secret_key(o))


def _copy(o: dict) -> int:
    import busd.cli.copy as cli_copy
    from busd.cli.datadir import parse_namespace_list

    skip_ids = cli_copy.parse_skip_ids(o["--skip-ids"])
    if o["--dir"] is not None:
        src = parse_namespace_list(o["--src"], "--src")
        dst = parse_namespace_list(o["--dst"], "--dst")
        if len(src) != 1 or len(dst) != 1:  # type: ignore[arg-type]
            raise UsageError("--src/--dst: one namespace each")
        return cli_copy.copy_namespace(_path(o, "--dir"), src[0], dst[0],  # type: ignore[index]
                                       skip_ids, _secret_key(o))
    return cli_copy.copy_dirs(_path(o, "--from"), _path(o, "--to"),
                              parse_namespace_list(o["--namespaces"], "--namespaces"),
                              skip_ids, o["--from-secret-key"], o["--to-secret-key"])


_COMMANDS = {
    "put": (PUT_USAGE, _put),
    "get": (GET_USAGE, _get),
    "ack": (ACK_USAGE, _ack),
    "groups": (GROUPS_USAGE, _groups),
    "debug": (DEBUG_USAGE, _debug),
    "dump": (DUMP_USAGE, _dump),
    "restore": (RESTORE_USAGE, _restore),
    "copy": (COPY_USAGE, _copy),
}


def server(args: dict) -> int:
    """Run the bus; a value it cannot start with (a bad flag, a taken --addr, an unusable
    --path) is one line naming the flag and exit 2."""
    try:
        config = load_config(args, os.environ)
        setup_logging(config.log_level)
        from busd.server.app import run  # imported late: the CLI's other commands don't need uvloop

        return run(config)
    except ConfigError as exc:
        print(f"bus server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        logging.getLogger("busd.server.app").error("cannot start reason=%r", str(exc))
        print(f"bus server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
