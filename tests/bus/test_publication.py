"""busd/bus/publication.py runs compiled (setup.py, with publication.pxd's C types): the
same outcomes must settle or drop the same dedup keys and reach the same answers in the
compiled Publication as in the uncompiled source (the oracle)."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.bus.publication as compiled
from busd.store.errors import PublishRefused

oracle = load_source(compiled)


class Dedup:
    def __init__(self, log: list) -> None:
        self.log = log

    def settle(self, entry) -> None:
        self.log.append(("settle", entry))

    def discard(self, entry) -> None:
        self.log.append(("discard", entry))


def run(module, reserved: list | None, outcome, fails: bool) -> list:
    log: list = []

    class Recorded(module.Publication):
        def answer(self, ids, stamps, outcome) -> None:
            log.append(("answer", ids, stamps, outcome))
            if fails:
                raise RuntimeError("answering failed")

    publication = Recorded()
    publication.bind(Dedup(log), "app", [b"e_1"], [b"t"], reserved)
    publication(outcome)
    return log


outcomes = st.one_of(st.integers(-1, 5), st.builds(PublishRefused, st.sampled_from([409, 503]),
                                                   st.just("no"), st.booleans()))


def test_the_installed_module_is_the_compiled_one() -> None:
    assert compiled.__file__.endswith(".so"), compiled.__file__
    assert compiled.Publication is not oracle.Publication


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.lists(st.tuples(st.just(b"app.x"), st.binary(max_size=3)),
                                     max_size=3)), outcomes, st.booleans())
def test_compiled_publication_does_what_the_source_does(reserved, outcome, fails) -> None:
    logging.disable(logging.ERROR)  # a failing answer is logged: both do it
    try:
        assert run(compiled, reserved, outcome, fails) == run(oracle, reserved, outcome, fails)
    finally:
        logging.disable(logging.NOTSET)


def test_keys_are_settled_when_stored_and_dropped_when_refused_unless_taken() -> None:
    keys = [(b"app.x", b"k")]
    for module in (compiled, oracle):
        assert ("settle", keys[0]) in run(module, keys, 3, False)
        assert ("discard", keys[0]) in run(module, keys, PublishRefused(503, "no"), False)
        assert not [step for step in run(module, keys, PublishRefused(409, "dup", True), False)
                    if step[0] != "answer"]


def test_an_answer_that_raises_is_logged_not_raised(caplog) -> None:
    for module in (compiled, oracle):
        assert run(module, None, 0, True)[0][0] == "answer"
    assert caplog.text.count("answering a publish failed ns=app") == 2
