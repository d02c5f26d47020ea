"""Process lifecycle: open the store, listen, run the periodic duties, shut down cleanly."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping

import uvloop

from busd._core import sse_chunk
from busd.bus.broker import Broker
from busd.server.api import Api
from busd.server.auth import Auth
from busd.server.body_budget import BodyBudget
from busd.server.coalesce import WriteCoalescer
from busd.server.config import Config, ConfigError
from busd.server.http import (
    LINGER_INPUT,
    CorsHttpConnection,
    HttpConnection,
    Limits,
    error_response,
    linger,
    restrict_cors,
)
from busd.server.logs import describe_config
from busd.server.sweep import Sweep
from busd.server.systemd import notify, watchdog_interval
from busd.store.interface import Store
from busd.store.local.log import EncryptionKeyError
from busd.store.local.store import LocalStore, StoreLockedError
from busd.version import __version__

log = logging.getLogger("busd.server.app")

PING = sse_chunk(b": ping\n\n")
SHUTDOWN_GRACE_SECONDS = 3.0
DEDUP_SAVE_SECONDS = 10.0  # a start-up after a crash replays about this much of the logs
DEDUP_SAVE_STEP_KEYS = 10_000  # keys dumped per step of the loop (a few ms)
BACKLOG = 4096
MAX_LINGERING_REFUSALS = 256  # refused connections read at once; past it, closed at once
# what opening a --path fails with when the path itself cannot be used
_UNUSABLE_PATH = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                            errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP})


class Server:
    """One bus: the store, the broker, the listening socket and every connection."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.store: Store
        if config.store == "jetstream":  # nats is optional: imported only when asked for
            from busd.store.jetstream.store import JetStreamStore

            self.store = JetStreamStore(config, self.loop)
        else:
            self.store = LocalStore(config.path, list(config.namespaces),
                                    segment_bytes=config.segment_bytes,
                                    retention_age=config.retention_age,
                                    retention_bytes=config.retention_bytes,
                                    secret_key=config.secret_key, block_size=config.block_size,
                                    fsync_always=config.fsync == "always")
        self.broker = Broker(config, self.store)
        self.connections: set[HttpConnection] = set()
        self._sweep = Sweep(self.loop, self._housekeep)
        self.broker.metrics.connections = self.connections
        self.api = Api(self.broker, Auth(config.auth_file) if config.auth_file else None)
        self.limits = Limits(config.max_request_size, config.max_event_size,
                             config.header_timeout, config.body_timeout, config.idle_timeout)
        self.body_budget = BodyBudget(config.max_body_memory)
        self.broker.metrics.body_budget = self.body_budget
        self.coalescer = WriteCoalescer()
        self.listeners: list[asyncio.base_events.Server] = []
        self._connection_class = HttpConnection
        if config.cors_origins is not None:
            restrict_cors(config.cors_origins)
            self._connection_class = CorsHttpConnection
        self.ssl = _ssl_context(config) if config.tls_cert else None
        self.stopping = asyncio.Event()
        self._duties: list[list[asyncio.TimerHandle]] = []  # each: [next timer of one duty]
        self._dedup_saving = False

    def _new_connection(self) -> asyncio.Protocol:
        if len(self.connections) >= self.config.max_connections:
            return _Refuse(self.config.max_connections)
        return self._connection_class(self.api.route, self.limits, self.connections,
                                      self.body_budget, self.coalescer)

    async def start(self) -> None:
        """Raises ConfigError (the one line to print names the flag) when --addr, --path or
        --namespaces cannot be used; nothing is created under --path before --addr is bound."""
        log.info("starting version=%s pid=%d %s", __version__, os.getpid(),
                 describe_config(self.config))
        if self.config.store == "local":
            _check_namespace_names(self.config)
        sockets = _bind(self.config.host, self.config.port)
        try:
            reports = await self._start_store()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        for namespace, report in reports.items():
            first, head = self.store.first_index(namespace), self.store.next_index(namespace)
            log.info("opened namespace ns=%s events=%d first_index=%d next_index=%d %s",
                     namespace, head - first, first, head, report)
        keys = self.broker.rebuild_dedup()
        log.info("dedup cache rebuilt keys=%d", keys)
        self._save_dedup(wait=True)  # from now on a restart replays only what follows
        log.info("consumer groups loaded groups=%d",
                 self.broker.groups.open(self.config.namespaces))
        for sock in sockets:
            try:
                sock.listen(BACKLOG)  # only now do connections get in
            except OSError as exc:  # a server that bound the port meanwhile listens first
                raise _addr_error(self.config.host, self.config.port, exc) from None
            self.listeners.append(await self.loop.create_server(
                self._new_connection, sock=sock, backlog=BACKLOG, ssl=self.ssl))
        address = sockets[0].getsockname()
        log.info("listening addr=%s:%d version=%s fsync=%s namespaces=%s", address[0],
                 address[1], __version__, self.config.fsync, ",".join(self.config.namespaces))
        self._every(1.0, self._tick)
        if self.config.fsync == "interval":
            self._every(self.config.fsync_interval, self._sync_if_dirty)
        if self.config.retention_age or self.config.retention_bytes:
            self._every(1.0, self._retention)
        self._every(DEDUP_SAVE_SECONDS, self._save_dedup)
        watchdog = watchdog_interval()
        if watchdog:
            self._every(watchdog, lambda: notify("WATCHDOG=1"))
        if self.api.auth is not None:
            log.info("access control on auth_file=%s tokens=%d names=%s", self.api.auth.path,
                     len(self.api.auth.tokens),
                     ",".join(sorted(t.name for t in self.api.auth.tokens.values())))
        _freeze_start_up_heap()
        notify("READY=1")

    async def _start_store(self) -> Mapping[str, object]:
        """Start the store. A local one's data directory that cannot be used, or that another
        process holds, is the --path's fault (a key that does not fit, the --secret-key's)."""
        try:
            return await self.store.start(self.broker)
        except StoreLockedError as exc:
            raise ConfigError(f"--path/BUS_PATH: {exc}; stop it, or give another --path"
                              ) from None
        except EncryptionKeyError as exc:
            raise ConfigError(exc.advice("--secret-key/BUS_SECRET_KEY")) from None
        except OSError as exc:
            if self.config.store != "local" or exc.errno not in _UNUSABLE_PATH:
                raise
            path = self.config.path
            if path.exists() and not path.is_dir():
                raise ConfigError(f"--path/BUS_PATH: {path} is not a directory") from None
            where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
            raise ConfigError(f"--path/BUS_PATH: cannot use {path}: {exc.strerror}{where}"
                              ) from None

    def _every(self, seconds: float, duty) -> None:
        """Run `duty` every `seconds` on the loop until shutdown."""

        def run() -> None:
            try:
                duty()
            except Exception:  # a failing duty must not stop the others
                log.exception("periodic duty failed duty=%s", getattr(duty, "__name__", duty))
            if not self.stopping.is_set():
                timer[0] = self.loop.call_later(seconds, run)

        timer = [self.loop.call_later(seconds, run)]
        self._duties.append(timer)

    def _tick(self) -> None:
        """Once a second: time out slow or idle connections, ping idle streams (a slice
        of the connections per loop callback, see busd/server/sweep.py)."""
        self._sweep.start(self.connections)

    def _housekeep(self, conn: HttpConnection, now: float) -> None:
        if conn not in self.connections:
            return  # closed since the sweep began
        if conn.stream is not None:
            if conn.last_write < now - self.config.ping_interval and not conn.write_paused:
                conn.write(PING)
        else:
            conn.check_timeouts(now)

    def reload(self) -> None:
        """SIGHUP: re-read the auth file; connections and streams stay up."""
        if self.api.auth is None:
            log.info("SIGHUP: nothing to reload (no --auth-file)")
        else:
            self.api.auth.reload()

    def _sync_if_dirty(self) -> None:
        if self.store.dirty:
            self.store.fsync(lambda error: None)

    def _save_dedup(self, wait: bool = False, force: bool = False) -> None:
        """Save the dedup cache if it moved: unless `wait`, dumped a step of the loop at a
        time and written off the loop."""
        if self._dedup_saving and not wait:
            return
        pieces = self.broker.save_dedup(force, 0 if wait else DEDUP_SAVE_STEP_KEYS)
        if pieces is None:
            return
        if wait:
            self.broker.write_dedup(b"".join(pieces))
            return
        self._dedup_saving, done = True, []

        def step() -> None:
            piece = next(pieces, None)
            if piece is not None:
                done.append(piece)
                self.loop.call_soon(step)
                return
            future = self.loop.run_in_executor(None, self.broker.write_dedup, b"".join(done))
            future.add_done_callback(lambda _: setattr(self, "_dedup_saving", False))

        step()

    def _retention(self) -> None:
        deleted = self.store.apply_retention(time.time())
        if deleted:
            log.info("retention deleted segments=%d", deleted)

    async def stop(self) -> None:
        """Stop accepting and reading requests, end streams, answer what is in flight,
        fsync, close. The store is closed whatever happens before."""
        log.info("shutting down connections=%d", len(self.connections))
        notify("STOPPING=1")
        try:
            for timer in self._duties:
                timer[0].cancel()
            for listener in self.listeners:
                listener.close()
            for conn in tuple(self.connections):
                if conn.stream is not None:
                    conn.stream.end()
                else:
                    conn.hang_up()
            await asyncio.sleep(0)  # let a scheduled group commit run and answer
            synced = self.loop.create_future()
            self.store.fsync(lambda error: synced.done() or synced.set_result(error))
            try:
                await asyncio.wait_for(synced, SHUTDOWN_GRACE_SECONDS)
            except TimeoutError:
                log.warning("shutdown: the last fsync took over %gs; closing the store "
                            "waits for it", SHUTDOWN_GRACE_SECONDS)
            self._save_dedup(wait=True, force=True)
            deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
            while any(c.unanswered() for c in self.connections) and \
                    time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for conn in tuple(self.connections):
                conn.close()
            await asyncio.sleep(0)
        finally:
            self.broker.groups.close()
            await self.store.stop()
        log.info("stopped")


def _freeze_start_up_heap() -> None:
    """Move what start-up made (modules, classes, the config, the rebuilt caches) out of the
    collector's reach: it lives until exit, yet every full collection walked all of it, a
    10-20 ms stall of every delivery about once a second under load (perf/RESULTS.md,
    "Latency tail"). Collected first so no start-up garbage is frozen with it."""
    gc.collect()
    gc.freeze()


def _check_namespace_names(config: Config) -> None:
    """Each namespace is a directory under --path: refuse a name longer than that filesystem
    takes before anything is made (ENAMETOOLONG would come after the others' directories)."""
    existing = config.path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):  # no limit to tell: opening the store will say
        return
    for name in config.namespaces:
        if len(name) > limit:  # names are ASCII: one byte a character
            raise ConfigError(f"--namespaces/BUS_NAMESPACES: namespace {name[:20]}… is "
                              f"{len(name)} characters long; the filesystem of {existing} "
                              f"takes names of at most {limit}")


def _bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to --addr, not yet listening: a taken port is found before the store
    is opened, and no client connects to a server that may still refuse to start."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: v4 gets its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _addr_error(host, port, exc) from None
    return sockets


def _addr_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"--addr/BUS_ADDR: {host}:{port} is already in use (is another "
                           "server running?); stop it, or give another --addr")
    return ConfigError(f"--addr/BUS_ADDR: cannot listen on {host}:{port}: "
                       f"{exc.strerror or exc}")


def _ssl_context(config: Config):
    """TLS for `--tls-cert`/`--tls-key` (PEM); TLS 1.2 or newer."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert/--tls-key: cannot load {config.tls_cert} and "
                         f"{config.tls_key}: {exc}") from None
    return context


class _Refuse(asyncio.Protocol):
    """Answers 503 and hangs up: the server is at --max-connections. It lingers (see
    `linger`) so that the 503 is read, as long as fewer than MAX_LINGERING_REFUSALS do."""

    lingering = 0  # refused connections being read, server-wide

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(error_response(503, f"too many connections (limit "
                                                 f"{self.limit}); try again later",
                                            close=True))
        if _Refuse.lingering >= MAX_LINGERING_REFUSALS:
            self.transport.close()
            return
        _Refuse.lingering += 1
        self.timer = linger(self.transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > LINGER_INPUT:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            _Refuse.lingering -= 1


async def serve(config: Config) -> None:
    """Signal handlers come first: a SIGHUP or SIGTERM during a long recovery must neither
    kill the process nor be lost (a stop asked for during start-up follows it)."""
    server = Server(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    await server.stopping.wait()
    await server.stop()


def run(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT; the process exit code."""
    uvloop.run(serve(config))
    return 0
