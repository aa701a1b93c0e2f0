"""A flusher starved of the GIL (a main thread dropping it for short I/O more often than
the switch interval) lowers the interpreter's switch interval while it starves, from when a
call finds it overdue or when it gets the GIL back too late; each push runs with it lowered.
The program gets its own back: exactly, after each push, after the flusher stops starving
(busy or idle), when it ends, in a forked child, and never instead of one the program set
meanwhile. Between the pushes of a flusher that is not starved, a long interval the program
chose included, nothing is changed."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from instrument import Instrumentation
from instrument.delivery import _flusher_thread, _gil

from ..servers import GatewayStandIn
from .test_flusher_schedule import landed_pushes, short_io_step

STARVED = _gil.STARVED_SWITCH_INTERVAL


@pytest.fixture
def program_interval() -> Iterator[float]:
    """The interval before the test, given back after it with the module's state; a test
    that left a lowering held fails here, and the next starts clean."""
    before, known = sys.getswitchinterval(), _gil._program_us
    yield before
    held, _gil._holders = _gil._holders, 0
    sys.setswitchinterval(before)
    _gil._program_us = known
    assert held == 0, f"the test left {held} lowering(s) held"


def make_overdue(inst: Instrumentation) -> _flusher_thread.FlushState:
    """As if ``inst``'s flusher had been waiting for the GIL for ever: the next call to
    start hands it over."""
    state = inst.delivery.handover
    with state.cond:
        state.overdue = -math.inf
        state.tokens[:] = [True]
    return state


def calm(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wake counts as starved unless it is half a second late: a loaded machine's
    scheduling hiccups are no starvation these tests are about."""
    monkeypatch.setattr(_gil, "STARVED_LATENESS", 0.5)


def force_starved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wake and probe counts as starved: what a machine where the race is lost shows
    (on another, the flusher would never starve in these tests)."""
    monkeypatch.setattr(_gil, "STARVED_LATENESS", -1.0)
    monkeypatch.setattr(_gil, "STARVED_INTERVALS", 0)


@pytest.fixture
def starved(
    program_interval: float,
    stand_in: GatewayStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Instrumentation, Path]]:
    """A coalescing Instrumentation whose flusher counts every wake as starved, and the
    small file of the short-I/O steps."""
    force_starved(monkeypatch)
    small = tmp_path / "small.txt"
    small.write_text("x" * 100)
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.02
    )
    yield inst, small
    inst.close()


class Pushes:
    """Counts the flusher's pushes that lower the interval while they run, so that a test
    can read the interval between them (:meth:`between`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.begun = self.ended = 0
        real = _flusher_thread.push_lowered

        def counting(delivery: Any) -> bool:
            self.begun += 1  # before it lowers the interval
            try:
                return real(delivery)
            finally:
                self.ended += 1  # once it gave it back

        monkeypatch.setattr(_flusher_thread, "push_lowered", counting)

    def between(self) -> float | None:
        """The switch interval now, or None when a push ran while it was read."""
        ended = self.ended
        interval = sys.getswitchinterval()
        return interval if self.begun == ended else None


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> Pushes:
    return Pushes(monkeypatch)


def run_short_io(inst: Instrumentation, small: Path, seconds: float, pushes: Pushes) -> list[float]:
    """Decorated short-I/O steps for ``seconds``; the switch interval seen after each that
    no push overlapped."""
    step = inst.monitored_analysis("m", "t")(short_io_step)
    seen = []
    begin = time.monotonic()
    while time.monotonic() - begin < seconds:
        assert step(small) == "x" * 100
        interval = pushes.between()
        if interval is not None:
            seen.append(interval)
    return seen


def until_lowered(inst: Instrumentation, small: Path, pushes: Pushes) -> None:
    """Short-I/O steps until the flusher keeps the interval lowered between its pushes
    (its thread's start and first push may themselves starve first: up to 5 s)."""
    step = inst.monitored_analysis("m", "t")(short_io_step)
    begin = time.monotonic()
    while pushes.between() != STARVED or not _gil._holders:  # a flusher holds it
        assert time.monotonic() - begin < 5, "the flusher never lowered the interval"
        step(small)


def test_a_starved_flusher_lowers_the_interval_says_so_and_close_restores_it(
    program_interval: float,
    starved: tuple[Instrumentation, Path],
    caplog: pytest.LogCaptureFixture,
    pushes: Pushes,
) -> None:
    inst, small = starved
    caplog.set_level(logging.INFO, logger="instrument")
    until_lowered(inst, small, pushes)
    run_short_io(inst, small, 0.2, pushes)
    inst.close()
    assert sys.getswitchinterval() == program_interval
    said = [r.getMessage() for r in caplog.records if "switch interval" in r.getMessage()]
    assert len(said) == 1 and f"instead of {program_interval:g} s" in said[0]


def test_the_programs_own_interval_set_meanwhile_is_kept(
    starved: tuple[Instrumentation, Path], pushes: Pushes
) -> None:
    inst, small = starved
    until_lowered(inst, small, pushes)
    sys.setswitchinterval(0.002)  # the program's choice, after the flusher lowered it
    inst.close()
    assert sys.getswitchinterval() == 0.002


@pytest.mark.parametrize("then", ["busy", "idle"])
def test_the_interval_comes_back_once_the_flusher_no_longer_starves(
    program_interval: float,
    starved: tuple[Instrumentation, Path],
    monkeypatch: pytest.MonkeyPatch,
    pushes: Pushes,
    then: str,
) -> None:
    """Calls going on, or none at all (the flusher then has nothing to push, and still
    wakes to give the interval back)."""
    inst, small = starved
    monkeypatch.setattr(_gil, "STARVED_FOR", 0.05)
    until_lowered(inst, small, pushes)
    monkeypatch.setattr(_gil, "STARVED_LATENESS", 3600.0)  # never starved again
    if then == "busy":
        assert run_short_io(inst, small, 0.5, pushes)[-5:] == [program_interval] * 5
    else:
        time.sleep(0.5)
        assert sys.getswitchinterval() == program_interval


class IntervalDuringCollect(Collector):
    """Records the switch interval each time the flusher thread collects the registry: what
    a push runs with."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def collect(self) -> Iterator[Metric]:
        if threading.current_thread().name == "instrument-flusher":
            self.seen.append(sys.getswitchinterval())
        return iter(())


def between_pushes(
    stand_in: GatewayStandIn, pushes: Pushes, work: Any, seconds: float
) -> tuple[set[float], list[float], float]:
    """Call ``work`` (sleeping 1 ms after each) for ``seconds`` with a coalescing flusher
    pushing every 20 ms: the intervals seen between pushes, those the pushes ran with,
    and how many landed."""
    registry = CollectorRegistry()
    during = IntervalDuringCollect()
    registry.register(during)
    inst = Instrumentation(registry=registry, pushgateway=stand_in.url, push_interval=0.02)
    decorated = inst.monitored_analysis("m", "t")(work)
    seen = set()
    begin = time.monotonic()
    while time.monotonic() - begin < seconds:
        decorated()
        interval = pushes.between()
        if interval is not None:
            seen.add(interval)
        time.sleep(0.001)
    landed = landed_pushes(inst)
    inst.close()
    return seen, during.seen, landed


def test_a_flusher_that_is_not_starved_changes_nothing_between_its_pushes(
    stand_in: GatewayStandIn,
    program_interval: float,
    pushes: Pushes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers that hold the GIL and sleep without I/O: the flusher gets it back within a
    switch interval, so nothing is lowered for it; only its pushes run lowered."""
    calm(monkeypatch)
    caplog.set_level(logging.INFO, logger="instrument")
    seen, during, landed = between_pushes(stand_in, pushes, lambda: 7, 0.5)
    assert landed >= 5
    assert seen == {program_interval}
    assert during and set(during) == {STARVED}
    assert sys.getswitchinterval() == program_interval
    assert not [r for r in caplog.records if "switch interval" in r.getMessage()]


def test_a_long_interval_the_program_chose_is_no_starvation(
    stand_in: GatewayStandIn,
    program_interval: float,
    pushes: Pushes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 ms and a caller that never drops the GIL: the flusher gets it back a whole
    interval after its wait, as the program asked, so between pushes the program keeps its
    interval, and gets it back to the microsecond after each."""
    calm(monkeypatch)
    sys.setswitchinterval(0.05)
    chosen = sys.getswitchinterval()
    seen, during, landed = between_pushes(stand_in, pushes, lambda: sum(range(2000)), 1.0)
    assert landed >= 2
    assert seen == {chosen}
    assert during and set(during) == {STARVED}
    assert sys.getswitchinterval() == chosen


@pytest.mark.parametrize("decorator", ["monitored_analysis", "track_ai_call"])
def test_a_call_that_finds_the_flusher_overdue_hands_it_the_gil(
    decorator: str,
    stand_in: GatewayStandIn,
    program_interval: float,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    pushes: Pushes,
) -> None:
    """A flusher starved of the GIL cannot say so until it has it; the call that holds it
    can. Every wait counts as overdue at once here: the first call lowers the interval
    before the flusher wakes, once however many calls follow, and the flusher keeps it as
    its own (said once) until it ends."""
    monkeypatch.setattr(_flusher_thread, "starved_after", lambda: -3600.0)
    lowerings = []
    lower = _flusher_thread.lower_from_a_call
    monkeypatch.setattr(_flusher_thread, "lower_from_a_call", lambda: lowerings.append(lower()))
    caplog.set_level(logging.INFO, logger="instrument")
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.5
    )
    calls = 0

    def plain() -> int:
        nonlocal calls
        calls += 1
        return 7

    if decorator == "monitored_analysis":
        work = inst.monitored_analysis("m", "t")(plain)
        counted, labels = "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t"}
    else:
        work = inst.track_ai_call("openai", "gpt-4o")(plain)
        counted, labels = "codomyrmex_ai_api_calls_total", {"provider": "openai", "model": "gpt-4o"}

    try:
        assert work() == 7  # starts the flusher: it pushes, then waits 0.5 s
        deadline = time.monotonic() + 5
        while pushes.ended < 1:  # landed, and gave the interval back
            assert time.monotonic() < deadline, "the first push never ended"
            time.sleep(0.005)
        waited = time.monotonic()
        while sys.getswitchinterval() != STARVED:
            assert time.monotonic() - waited < 0.3, "no call handed the flusher the GIL"
            assert work() == 7
            time.sleep(0.005)
        for _ in range(20):
            assert work() == 7
        assert len(lowerings) == 1  # one hand-over, not one per call
        assert _gil._holders == 0  # no flusher took it over yet
        time.sleep(0.7)  # the flusher woke, took it over and pushed
        assert landed_pushes(inst) >= 2
        assert sys.getswitchinterval() == STARVED
        assert _gil._holders == 1
        said = [r.getMessage() for r in caplog.records if "switch interval" in r.getMessage()]
        assert len(said) == 1 and f"instead of {program_interval:g} s" in said[0]
    finally:
        inst.close()
    assert sys.getswitchinterval() == program_interval
    assert _gil._holders == 0
    assert inst.registry.get_sample_value(counted, {**labels, "status": "success"}) == calls
    assert f'status="success"}} {float(calls)}'.encode() in stand_in.bodies[-1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_over_for_its_parents_flusher(
    stand_in: GatewayStandIn, program_interval: float
) -> None:
    """The bindings keep the delivery's hand-over state across a fork; the child's starts
    over (its parent's flusher, overdue or not, is not there to take the GIL)."""
    inst = Instrumentation(registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=30)
    work = inst.monitored_analysis("m", "t")(lambda: 7)
    assert work() == 7
    state = make_overdue(inst)
    pid = os.fork()
    if pid == 0:
        ok = work() == 7 and work() == 7
        ok = ok and sys.getswitchinterval() == program_interval and _gil._holders == 0
        os._exit(0 if ok and state.overdue == math.inf else 1)
    _, status = os.waitpid(pid, 0)
    state.overdue = math.inf
    state.tokens.clear()
    inst.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert sys.getswitchinterval() == program_interval


@pytest.mark.parametrize("chosen", [0.007, 0.000501, 0.005, 0.123456])
def test_the_programs_interval_comes_back_to_the_microsecond(
    program_interval: float, chosen: float
) -> None:
    sys.setswitchinterval(chosen)
    before = sys.getswitchinterval()
    assert _gil.lower_switch_interval() == pytest.approx(before, abs=1e-6)
    assert sys.getswitchinterval() == STARVED
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == before


def test_two_flushers_keep_it_lowered_until_the_last_lets_go(program_interval: float) -> None:
    assert _gil.lower_switch_interval() is not None
    assert _gil.lower_switch_interval() is None  # lowered already
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == STARVED
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == program_interval


def test_a_failing_log_filter_never_ends_the_flusher(program_interval: float) -> None:
    class Failing(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a filter's bug")

    log = logging.getLogger("instrument")
    failing, level = Failing(), log.level
    log.addFilter(failing)
    log.setLevel(logging.INFO)
    try:
        program = _gil.lower_switch_interval()
        assert program is not None
        _gil.log_lowered(program)  # does not raise
    finally:
        log.removeFilter(failing)
        log.setLevel(level)
        _gil.restore_switch_interval()
    assert sys.getswitchinterval() == program_interval


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_the_programs_interval(
    program_interval: float, starved: tuple[Instrumentation, Path], pushes: Pushes
) -> None:
    inst, small = starved
    until_lowered(inst, small, pushes)
    pid = os.fork()
    if pid == 0:  # the child: its parent's flusher is not here, nor its lowering
        os._exit(0 if sys.getswitchinterval() == program_interval else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    inst.close()
    assert sys.getswitchinterval() == program_interval


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_another_thread_holds_the_lowering_lock(program_interval: float) -> None:
    """The child gets the program's interval back and a lock of its own: lowering and
    restoring work there at once."""
    assert _gil.lower_switch_interval() is not None
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _gil._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:
            ok = sys.getswitchinterval() == program_interval
            ok = ok and _gil.lower_switch_interval() is not None
            _gil.restore_switch_interval()
            os._exit(0 if ok and sys.getswitchinterval() == program_interval else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
        _gil.restore_switch_interval()
    assert os.waitstatus_to_exitcode(status) == 0
    assert sys.getswitchinterval() == program_interval


# -- the hand-over under hostile conditions ---------------------------------------------------


def test_a_wait_is_overdue_after_the_programs_intervals_not_the_lowered_one(
    program_interval: float,
) -> None:
    """Another flusher's push holding the lowered interval must not shrink this one's
    threshold: with the program's 50 ms, a wait is overdue four of them after its end."""
    state = _flusher_thread.FlushState()
    sys.setswitchinterval(0.05)
    chosen = sys.getswitchinterval()
    for held in (False, True):
        if held:
            assert _gil.lower_switch_interval() is not None  # as a push does
        before = time.perf_counter()
        state.overdue = math.inf
        state.arm(0.1)
        assert before + 0.3 <= state.overdue <= time.perf_counter() + 0.3
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == chosen


@pytest.mark.parametrize("decorator", ["monitored_analysis", "track_ai_call"])
@pytest.mark.parametrize("where", ["_interval_us", "_set_us"])
def test_an_interrupt_inside_a_hand_over_leaves_nothing_lowered_for_good(
    stand_in: GatewayStandIn,
    program_interval: float,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    decorator: str,
) -> None:
    """A signal handler's exception (Ctrl-C, a timeout) raised in the middle of a call's
    hand-over reaches the call, as it would anywhere in it; the interval is given back by
    the flusher, which takes it over, and nothing is held once it ends; no job is left in
    flight (the hand-over comes before the gauge's step)."""
    real = getattr(_gil, where)
    armed = [True]

    def interrupted(*args: int) -> int | None:
        result = real(*args)
        if armed[0] and threading.current_thread() is threading.main_thread():
            armed[0] = False
            raise KeyboardInterrupt
        return result

    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.05
    )
    if decorator == "monitored_analysis":
        work, job_type = inst.monitored_analysis("m", "t")(lambda: 7), "m"
    else:
        work, job_type = inst.track_ai_call("openai", "gpt-4o")(lambda: 7), "ai_call"
    assert work() == 7
    inst.flush(timeout=5)
    monkeypatch.setattr(_gil, where, interrupted)
    make_overdue(inst)
    with pytest.raises(KeyboardInterrupt):
        work()
    monkeypatch.setattr(_gil, where, real)
    assert work() == 7
    assert inst.flush(timeout=5)
    inst.close()  # the flusher took the hand-over as its own, and gives it back
    assert sys.getswitchinterval() == program_interval
    assert _gil._holders == 0
    active = inst.registry.get_sample_value("codomyrmex_active_jobs", {"job_type": job_type})
    assert active == 0


def test_a_hand_over_run_again_from_inside_itself_finishes(
    stand_in: GatewayStandIn, program_interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a signal handler that runs a decorated call in the middle of a hand-over does:
    the inner call hands over too (a second Instrumentation's flusher is overdue), and
    nothing waits for a lock the outer one holds."""
    insts = [
        Instrumentation(registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=30)
        for _ in range(2)
    ]
    outer, inner = (inst.monitored_analysis("m", "t")(lambda: 7) for inst in insts)
    real = _gil._set_us
    nested: list[int] = []
    entered = []

    set_to: list[int] = []

    def reentered(us: int) -> None:
        if not entered:  # the handler runs once, inside the outer hand-over
            entered.append(True)
            nested.append(inner())
        set_to.append(us)
        real(us)

    monkeypatch.setattr(_gil, "_set_us", reentered)
    for inst in insts:
        make_overdue(inst)
    done = threading.Event()

    def run() -> None:
        assert outer() == 7
        done.set()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        assert done.wait(5), "a hand-over waited for itself"
        assert nested == [7]
        assert _gil._STARVED_US in set_to  # handed over (the pushes since may give it back)
    finally:
        for inst in insts:
            inst.close()
    assert sys.getswitchinterval() == program_interval


def test_a_program_that_puts_back_the_lowered_interval_gets_its_own_at_the_next_push(
    program_interval: float,
) -> None:
    """A program that saved the interval during a push and puts it back after: the next
    push takes that for this module's own (no program chooses 0.499 ms) and gives back the
    program's."""
    assert _gil.lower_switch_interval() is not None  # a push
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.002)  # the program's own, for a while
    _gil.restore_switch_interval()  # the push ends: the program's 2 ms is kept
    assert sys.getswitchinterval() == 0.002
    sys.setswitchinterval(saved)  # the program puts back what it saved
    assert sys.getswitchinterval() == STARVED
    _gil.lower_switch_interval()  # the next push
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == program_interval


def test_a_restore_with_nothing_held_changes_nothing(program_interval: float) -> None:
    """A flusher forked in the middle of a push gives back a lowering its child never
    counted: the count stays at none, and the next lowering still restores."""
    _gil.restore_switch_interval()
    assert _gil._holders == 0
    assert _gil.lower_switch_interval() is not None
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == program_interval


def test_a_program_interval_set_while_one_flusher_pushes_survives_anothers_hand_over(
    program_interval: float,
) -> None:
    """One flusher's push holds the lowered interval; the program sets 7 ms; a call hands
    another flusher the GIL: the push's end gives the program its 7 ms, not the 5 ms
    from before, and so does the other flusher once it held and gave it back."""
    assert _gil.lower_switch_interval() is not None  # flusher A's push
    sys.setswitchinterval(0.007)
    chosen = sys.getswitchinterval()
    _gil.lower_from_a_call()  # for flusher B
    assert sys.getswitchinterval() == STARVED
    _gil.restore_switch_interval()  # A's push ends
    assert sys.getswitchinterval() == chosen
    _gil.lower_switch_interval()  # B runs and holds it
    _gil.restore_switch_interval()
    assert sys.getswitchinterval() == chosen


def test_a_lowered_interval_put_back_after_the_last_push_is_given_back_at_close(
    stand_in: GatewayStandIn, program_interval: float, pushes: Pushes
) -> None:
    inst = Instrumentation(registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=30)
    work = inst.monitored_analysis("m", "t")(lambda: 7)
    assert work() == 7
    deadline = time.monotonic() + 5
    while pushes.ended < 1:
        assert time.monotonic() < deadline, "the first push never ended"
        time.sleep(0.005)
    sys.setswitchinterval(STARVED)  # what the program saw during the push, put back
    inst.close()
    assert sys.getswitchinterval() == program_interval


def test_a_hand_over_that_comes_after_its_flusher_ended_gives_the_interval_back(
    stand_in: GatewayStandIn, program_interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call took the token, and before it lowered the interval the flusher ran again,
    ended and gave everything back (close() in another thread): the call's own lowering
    must not outlive it."""
    inst = Instrumentation(registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=30)
    work = inst.monitored_analysis("m", "t")(lambda: 7)
    assert work() == 7
    assert inst.flush(timeout=5)
    make_overdue(inst)
    closer = threading.Thread(target=inst.close)
    real = _gil.lower_from_a_call

    def after_the_close() -> None:
        closer.start()
        closer.join(10)
        real()

    monkeypatch.setattr(_flusher_thread, "lower_from_a_call", after_the_close)
    assert work() == 7
    assert not closer.is_alive()
    assert inst.delivery.handover.gone
    assert sys.getswitchinterval() == program_interval


def test_a_program_interval_set_while_a_flusher_holds_the_lowering_does_not_undo_its_pushes(
    program_interval: float,
) -> None:
    """A starving flusher holds the lowered interval; the program sets its own (5 ms
    again, say): the next push runs lowered all the same, and the program gets the one it
    set back once nothing holds."""
    assert _gil.lower_switch_interval() is not None  # the starving flusher's hold
    try:
        sys.setswitchinterval(0.007)
        chosen = sys.getswitchinterval()
        assert _gil.lower_switch_interval() is None  # a push, held already: not logged
        assert sys.getswitchinterval() == STARVED
        _gil.restore_switch_interval()  # the push ends; the hold stays
        assert sys.getswitchinterval() == STARVED
    finally:
        _gil.restore_switch_interval()
    assert sys.getswitchinterval() == chosen
