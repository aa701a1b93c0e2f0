"""A flusher starved of the GIL (a main thread dropping it for short I/O more often than
the switch interval) lowers the interpreter's switch interval while it starves, and the
program gets its own back: exactly, after the flusher stops starving (busy or idle), when
it ends, in a forked child, and never instead of one the program set meanwhile. A flusher
that is not starved, a long interval the program chose included, changes nothing."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.delivery import _gil

from ..servers import GatewayStandIn
from .test_flusher_schedule import landed_pushes, short_io_step

STARVED = _gil.STARVED_SWITCH_INTERVAL


@pytest.fixture
def program_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


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


def run_short_io(inst: Instrumentation, small: Path, seconds: float) -> list[float]:
    """Decorated short-I/O steps for ``seconds``; the switch interval seen after each."""
    step = inst.monitored_analysis("m", "t")(short_io_step)
    seen = []
    begin = time.monotonic()
    while time.monotonic() - begin < seconds:
        assert step(small) == "x" * 100
        seen.append(sys.getswitchinterval())
    return seen


def until_lowered(inst: Instrumentation, small: Path) -> None:
    """Short-I/O steps until the flusher lowered the interval (its thread's start and
    first push may themselves starve first: up to 5 s)."""
    step = inst.monitored_analysis("m", "t")(short_io_step)
    begin = time.monotonic()
    while sys.getswitchinterval() != STARVED:
        assert time.monotonic() - begin < 5, "the flusher never lowered the interval"
        step(small)


def test_a_starved_flusher_lowers_the_interval_says_so_and_close_restores_it(
    program_interval: float,
    starved: tuple[Instrumentation, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    inst, small = starved
    caplog.set_level(logging.INFO, logger="instrument")
    until_lowered(inst, small)
    run_short_io(inst, small, 0.2)
    inst.close()
    assert sys.getswitchinterval() == program_interval
    said = [r.getMessage() for r in caplog.records if "switch interval" in r.getMessage()]
    assert len(said) == 1 and f"instead of {program_interval:g} s" in said[0]


def test_the_programs_own_interval_set_meanwhile_is_kept(
    starved: tuple[Instrumentation, Path],
) -> None:
    inst, small = starved
    until_lowered(inst, small)
    sys.setswitchinterval(0.002)  # the program's choice, after the flusher lowered it
    inst.close()
    assert sys.getswitchinterval() == 0.002


@pytest.mark.parametrize("then", ["busy", "idle"])
def test_the_interval_comes_back_once_the_flusher_no_longer_starves(
    program_interval: float,
    starved: tuple[Instrumentation, Path],
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """Calls going on, or none at all (the flusher then has nothing to push, and still
    wakes to give the interval back)."""
    inst, small = starved
    monkeypatch.setattr(_gil, "STARVED_FOR", 0.05)
    until_lowered(inst, small)
    monkeypatch.setattr(_gil, "STARVED_LATENESS", 3600.0)  # never starved again
    if then == "busy":
        assert run_short_io(inst, small, 0.5)[-1] == program_interval
    else:
        time.sleep(0.5)
        assert sys.getswitchinterval() == program_interval


def test_a_flusher_that_is_not_starved_leaves_the_interval_alone(
    stand_in: GatewayStandIn, program_interval: float
) -> None:
    """Callers that hold the GIL and sleep without I/O: the flusher gets it back within a
    switch interval, so nothing is changed."""
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.02
    )
    work = inst.monitored_analysis("m", "t")(lambda: 7)
    seen = []
    begin = time.monotonic()
    while time.monotonic() - begin < 0.5:
        assert work() == 7
        seen.append(sys.getswitchinterval())
        time.sleep(0.001)
    pushes = landed_pushes(inst)
    inst.close()
    assert pushes >= 5
    assert set(seen) == {program_interval}


def test_a_long_interval_the_program_chose_is_no_starvation(
    stand_in: GatewayStandIn, program_interval: float
) -> None:
    """50 ms and a caller that never drops the GIL: the flusher gets it back a whole
    interval after its wait, as the program asked, and nothing is changed."""
    sys.setswitchinterval(0.05)
    chosen = sys.getswitchinterval()
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.02
    )
    work = inst.monitored_analysis("m", "t")(lambda: sum(range(2000)))
    seen = set()
    begin = time.monotonic()
    while time.monotonic() - begin < 1.0:
        work()
        seen.add(sys.getswitchinterval())
    pushes = landed_pushes(inst)
    inst.close()
    assert pushes >= 2
    assert seen == {chosen}


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
    program_interval: float, starved: tuple[Instrumentation, Path]
) -> None:
    inst, small = starved
    until_lowered(inst, small)
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


def test_a_probe_before_a_push_lowers_at_once_when_starved(
    program_interval: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a push's first steps would otherwise starve through before any wait measured
    it: the probe hands the GIL over and, starved, lowers the interval there and then."""
    caplog.set_level(logging.INFO, logger="instrument")
    monkeypatch.setattr(_gil, "STARVED_LATENESS", 3600.0)
    assert _gil.probe() is None  # came back at once: nothing changes
    assert sys.getswitchinterval() == program_interval
    force_starved(monkeypatch)
    until = _gil.probe()
    try:
        assert until is not None and until > time.monotonic()
        assert sys.getswitchinterval() == STARVED
        assert any("switch interval" in r.getMessage() for r in caplog.records)
    finally:
        _gil.restore_switch_interval()
    assert sys.getswitchinterval() == program_interval
