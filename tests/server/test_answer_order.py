"""A connection answers its requests in the order they came, whatever order the answers are
given in (a group commit answers publishes, a located start opens a stream, a PUT is
answered at once), exactly once each, and nothing after the connection closed, was lost
or became a stream. Driven through defer/fulfil/reply/hang_up directly, compiled and as
source (the oracle), against a model: the answers written are those of the requests in
order up to the first one not answered yet."""

from __future__ import annotations

import asyncio

from http_transcript import Transcript
from hypothesis import given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.http as compiled
from busd.server.body_budget import BodyBudget
from busd.server.coalesce import WriteCoalescer

source = load_source(compiled)

# one step: a request whose answer comes later ("defer"), one answered at once ("reply"),
# the k-th answer still owed given now, as bytes or as a stream's start, a hang-up, a loss
STEPS = st.lists(st.one_of(
    st.just(("defer",)), st.just(("reply",)),
    st.tuples(st.just("fulfil"), st.integers(0, 20), st.booleans()),
    st.just(("hang_up",)), st.just(("lost",)),
), max_size=40)


class Request:
    """One request of the model: its ticket (None: answered at once), its answer (None: it
    starts a stream), whether the answer was given."""

    def __init__(self, ticket: int | None, answer: bytes | None, given: bool) -> None:
        self.ticket, self.answer, self.given = ticket, answer, given


def model(requests: list[Request]) -> list[bytes]:
    """What must have been written: the answers in request order, up to the first not given
    yet; a stream's start ends them."""
    out = []
    for request in requests:
        if not request.given:
            break
        out.append(b"stream" if request.answer is None else request.answer)
        if request.answer is None:
            break
    return out


def drive(module, steps: list[tuple]) -> tuple[list[tuple], list[bytes], bool]:
    """The connection's transcript, the model's writes, and whether it must have closed."""
    async def run() -> tuple[list[tuple], list[bytes], bool]:
        transcript = Transcript(module)
        conn = module.HttpConnection(lambda c, r: None, module.Limits(1 << 20, 1 << 16, 5, 5, 5),
                                     set(), BodyBudget(1 << 20), WriteCoalescer())
        conn.connection_made(transcript)
        requests: list[Request] = []
        owed: list[Request] = []
        at_loss = None  # the model when the connection was lost
        hung_up = streaming = False

        def start_stream() -> None:
            nonlocal streaming
            streaming = True  # the connection parses no request after it
            transcript.log.append(("stream",))

        for step in steps:
            taking = at_loss is None and not hung_up and not streaming
            if step[0] == "defer" and taking:
                request = Request(conn.defer(), b"answer %d\r\n" % len(requests), False)
                requests.append(request)
                owed.append(request)
            elif step[0] == "reply" and taking:
                requests.append(Request(None, b"reply %d\r\n" % len(requests), True))
                conn.reply(requests[-1].answer)
            elif step[0] == "fulfil" and owed:  # also to a lost connection: dropped
                request = owed.pop(step[1] % len(owed))
                request.given = True
                if step[2]:
                    request.answer = None
                    conn.fulfil(request.ticket, start_stream)
                else:
                    conn.fulfil(request.ticket, request.answer)
            elif step[0] == "hang_up" and taking:
                hung_up = True
                conn.hang_up()
            elif step[0] == "lost" and at_loss is None:
                at_loss = model(requests)
                conn.connection_lost(None)
        if at_loss is not None:
            return transcript.log, at_loss, False
        expected = model(requests)
        return transcript.log, expected, hung_up and len(expected) == len(requests) and \
            b"stream" not in expected
    return asyncio.run(run())


def written(log: list[tuple]) -> list[bytes]:
    return [b"stream" if entry[0] == "stream" else entry[1] for entry in log
            if entry[0] in ("write", "stream")]


@settings(max_examples=500, deadline=None)
@given(STEPS)
def test_answers_go_out_in_request_order_once_each(steps) -> None:
    log, expected, closes = drive(compiled, steps)
    assert log == drive(source, steps)[0]
    assert written(log) == expected
    if closes:  # hung up: closed (half-closed after an answer) once the last one owed is out
        assert [entry[0] for entry in log if entry[0] in ("write", "close", "eof")][-1] in (
            "close", "eof"), log


def test_an_answer_given_early_waits_for_the_one_before() -> None:
    steps = [("defer",), ("defer",), ("defer",), ("fulfil", 2, False), ("fulfil", 1, False)]
    assert written(drive(compiled, steps)[0]) == []
    log = drive(compiled, [*steps, ("fulfil", 0, False)])[0]
    assert written(log) == [b"answer 0\r\n", b"answer 1\r\n", b"answer 2\r\n"]


def test_a_hang_up_closes_after_the_last_answer_owed() -> None:
    for module in (compiled, source):
        log = drive(module, [("defer",), ("defer",), ("hang_up",), ("fulfil", 1, False),
                             ("fulfil", 0, False)])[0]
        assert [entry for entry in log if entry[0] in ("write", "close", "eof")] == [
            ("write", b"answer 0\r\n"), ("write", b"answer 1\r\n"), ("eof",)], module
