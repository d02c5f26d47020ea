"""busd/server/body_budget.py runs compiled (setup.py, with body_budget.pxd's C types): the
same bodies arriving and ending on the same connections, in the same order, must make the
compiled budget and the uncompiled source (the oracle) pause and grant the same
connections, and count the same bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from source_module import load_source

import busd.server.body_budget as compiled

oracle = load_source(compiled)


class Connection:
    """A Waiter that writes down what the budget tells it."""

    def __init__(self, name: int, log: list) -> None:
        self.name, self.log = name, log

    def wait_for_budget(self) -> None:
        self.log.append(("wait", self.name))

    def budget_granted(self) -> None:
        self.log.append(("granted", self.name))


def run(module, limit: int, steps: list[tuple[int, int]]) -> list:
    """Step (i, n): n > 0 bytes of connection i's body arrive; n = 0 its body ends (it gives
    back what it holds), as HttpConnection does; n < 0, a body of -n bytes came and went in
    one read of connection i (never taken, it counts towards the peak)."""
    budget, log = module.BodyBudget(limit), []
    conns = [Connection(i, log) for i in range(4)]
    held = [0] * 4
    for i, size in steps:
        if size < 0:
            budget.passed(-size)
        elif size:
            budget.take(conns[i], size)
            held[i] += size
        elif held[i]:
            budget.give_back(conns[i], held[i])
            held[i] = 0
        log.append(("state", budget.used, budget.peak, budget.waiting))
    return log


def test_the_installed_module_is_the_compiled_one() -> None:
    assert compiled.__file__.endswith(".so"), compiled.__file__
    assert compiled.BodyBudget is not oracle.BodyBudget


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 300), st.lists(st.tuples(st.integers(0, 3), st.integers(-200, 200)),
                                      max_size=40))
def test_compiled_budget_does_what_the_source_does(limit: int, steps) -> None:
    assert run(compiled, limit, steps) == run(oracle, limit, steps)


def test_the_comparison_sees_a_difference() -> None:
    """The log is not blind: a wait happens, and a different limit is a different log."""
    steps = [(0, 80), (1, 80), (2, 80), (0, 0), (1, 0), (2, 0)]
    base = run(oracle, 100, steps)
    assert run(compiled, 100, steps) == base
    assert ("wait", 1) in base and ("granted", 1) in base
    assert run(oracle, 1000, steps) != base
