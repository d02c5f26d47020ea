"""Reading a subscription: the SSE decoder, and where to resume after a dropped connection."""

from __future__ import annotations

import threading
from collections import deque

# A message as the decoder hands it on: (event type, id or None, data).
Message = tuple[bytes, "bytes | None", bytes]

_MSG_HEAD = b"\nevent: msg\ndata: "
_RESUME_AFTER = b": resume-after "
# The kind under which the decoder hands on the server's `: resume-after` comment (a
# leading ':' cannot start a field name, so no real event type collides with it).
RESUME_AFTER = b":resume-after"
_RECENT_ACKS = 4096


class SSEDecoder:
    """Incremental Server-Sent-Events decoder: `feed` de-chunked body bytes in any pieces,
    complete messages collect in `messages`. Comments (`: ping`) and `retry:` are dropped,
    except busd's `: resume-after <point>`, handed on as (RESUME_AFTER, None, point)."""

    __slots__ = ("_buf", "messages")

    def __init__(self) -> None:
        self._buf = b""
        self.messages: deque[Message] = deque()

    def feed(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if b"\r" in data:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()
        out = self.messages
        for block in blocks:
            # fast path: busd's and Bus's framing of a stored record, on one data line
            if block[:6] == b"id: e_" and block[26:44] == _MSG_HEAD and b"\n" not in block[44:]:
                out.append((b"msg", block[4:26], block[44:]))
            elif block[:15] == _RESUME_AFTER and b"\n" not in block:
                out.append((RESUME_AFTER, None, block[15:].strip()))
            elif block:
                message = _parse_block(block)
                if message is not None:
                    out.append(message)


def _parse_block(block: bytes) -> Message | None:
    event, event_id, data = b"message", None, []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id":
            event_id = value
    if not data and event_id is None:
        return None  # e.g. a lone `retry:` field
    return event, event_id, b"\n".join(data)


class Resume:
    """Where a subscription picks up after a reconnect, and which deliveries to hide.

    With `ack="none"` that is simply the last event handed to the caller. With
    `ack="manual"` it is the last event of the longest delivered prefix that the caller
    acked (or the server gave up redelivering), so an unacked event comes back after a
    reconnect; events the caller acked out of order, or acked just before the server
    redelivered them, are not handed out again (the SDK re-acks them itself).

    Until the first event is delivered there is no such event: the resume point is then
    the server's `: resume-after` hint (the event before where the stream started, or
    "oldest"), so a `start="newest"` subscription loses nothing published while it was
    reconnecting. With `ack="manual"` it stays the base of the acked prefix.
    """

    def __init__(self, manual: bool, redelivery_count: int | None) -> None:
        self.manual = manual
        self.last_id: str | None = None
        self.hint: str | None = None   # the server's resume-after point, until a delivery
        self.started = False           # an event was delivered: hints no longer apply
        # server default is 3 deliveries; <= 0 means unlimited
        self._limit = 3 if redelivery_count is None else redelivery_count
        self._pending: dict[str, list] = {}  # in delivery order: id -> [deliveries, acked]
        self._acked: dict[str, None] = {}    # recently acked ids (bounded), to hide redeliveries
        self._lock = threading.Lock()

    def delivered(self, event_id: str) -> bool:
        """Note a delivery; False if the caller already acked this event (hide it)."""
        self.started = True
        if not self.manual:
            self.last_id = event_id
            return True
        with self._lock:
            if event_id in self._acked:
                return False
            state = self._pending.get(event_id)
            if state is None:
                state = self._pending[event_id] = [0, False]
            state[0] += 1
            if 0 < self._limit <= state[0]:
                self._advance()
            return True

    def acked(self, event_id: str) -> None:
        if not self.manual:
            return
        with self._lock:
            self._acked[event_id] = None
            if len(self._acked) > _RECENT_ACKS:
                del self._acked[next(iter(self._acked))]
            if event_id in self._pending:
                self._pending[event_id][1] = True
                self._advance()

    def resume_after(self, point: str) -> None:
        """The server's `: resume-after` hint for the stream just opened: `e_<id>` or
        "oldest". It only counts while no event has been delivered."""
        if not self.started and (point == "oldest" or point.startswith("e_")):
            self.hint = point

    def reconnecting(self) -> str | None:
        """The id to resume after (`Last-Event-ID`), "oldest", or None (resume as first
        asked); the new consumer redelivers everything after it, so the delivery counts
        start again."""
        with self._lock:
            self._pending.clear()
            return self.last_id or self.hint

    def _advance(self) -> None:
        pending, limit = self._pending, self._limit
        while pending:
            event_id, (count, acked) = next(iter(pending.items()))
            if not (acked or 0 < limit <= count):
                break
            del pending[event_id]
            self.last_id = event_id
