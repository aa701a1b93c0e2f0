"""The engine's public face. Its hooks, as a policy uses them: ending a job after the wrapper
returned (``end_job`` / ``aend_job``), deferred work (``defer`` / ``run_deferred``) and the
guard (``report_failure``); and the proxy's call, which hands the engine every argument as
given. Each test reads back what a user would check: the registry, or what was pushed.

(The engine's guards under fault injection are in test_guards.py, its hostile cases in
test_hostile.py, both beside this file.)"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest

from instrument import Instrumentation
from instrument._engine import (
    Instrumenter,
    Probe,
    aend_job,
    defer,
    end_job,
    report_failure,
    run_deferred,
)
from instrument.ai import record_abandoned_streams
from instrument.analysis import AnalysisJob
from instrument.testing import assert_analyses, sample_value


@pytest.fixture(autouse=True)
def nothing_deferred() -> Iterator[None]:
    run_deferred()  # what other tests left behind
    yield
    run_deferred()


@pytest.fixture
def pushing(tmp_path: Path, registry: CollectorRegistry) -> Iterator[tuple[Instrumentation, Path]]:
    """An instrumentation whose post-job step pushes each job to a textfile at once."""
    textfile = tmp_path / "metrics.prom"
    inst = Instrumentation(registry=registry, textfile=str(textfile), push_mode="each")
    yield inst, textfile
    inst.close()


def pushed(textfile: Path, status: str) -> bool:
    line = f'codomyrmex_analyses_total{{analysis_type="t",module="m",status="{status}"}} 1.0'
    return textfile.exists() and line in textfile.read_text().splitlines()


def started(inst: Instrumentation) -> AnalysisJob:
    """A job started as the engine starts one, to be ended by hand."""
    return inst.monitored_analysis("m", "t").start(None, (), {})


# -- end_job / aend_job --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (LookupError("the job's own"), "error"),
        (asyncio.CancelledError(), "cancelled"),
        (KeyboardInterrupt(), "cancelled"),
        (SystemExit(1), "cancelled"),
        (GeneratorExit(), "cancelled"),
    ],
)
def test_end_job_records_an_exception_by_the_engines_rule_then_pushes(
    exc: BaseException, status: str, pushing: tuple[Instrumentation, Path]
) -> None:
    inst, textfile = pushing
    job = started(inst)
    assert sample_value(inst, "active_jobs", {"job_type": "m"}) == 1
    end_job(job, exc)
    assert_analyses(inst, "m", "t", success=0, error=int(status == "error"))
    assert_analyses(inst, "m", "t", cancelled=int(status == "cancelled"))
    assert sample_value(inst, "active_jobs", {"job_type": "m"}) == 0
    error_type = {"module": "m", "analysis_type": "t", "error_type": "LookupError"}
    assert sample_value(inst, "analysis_errors_total", error_type) == (
        1 if status == "error" else None
    )
    assert pushed(textfile, status)  # the post-job step ran: "each" mode pushed the end


def test_end_job_without_an_exception_runs_only_the_post_job_step(
    pushing: tuple[Instrumentation, Path],
) -> None:
    inst, textfile = pushing
    job = started(inst)
    job.success(None)  # the policy recorded the end itself
    assert not pushed(textfile, "success")
    end_job(job)
    assert pushed(textfile, "success")
    assert_analyses(inst, "m", "t", success=1, error=0, cancelled=0)


async def test_aend_job_awaits_the_async_post_job_step(
    pushing: tuple[Instrumentation, Path],
) -> None:
    inst, textfile = pushing
    job = started(inst)
    await aend_job(job, ValueError("late"))
    assert pushed(textfile, "error")  # pushed by the time aend_job returned
    assert_analyses(inst, "m", "t", success=0, error=1, cancelled=0)


class _Failing(Probe):
    """A probe whose recording and post-job step both raise."""

    def __init__(self) -> None:
        self.after_job = self._push

    def error(self, exc: BaseException) -> None:
        raise ArithmeticError("metric backend down")

    def _push(self) -> None:
        raise OSError("gateway down")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_end_job_never_raises_and_logs_each_failure(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="instrument"):
        if kind == "sync":
            end_job(_Failing(), ValueError("the job's own"))
        else:
            await aend_job(_Failing(), ValueError("the job's own"))
    messages = [(r.getMessage(), r.exc_info and r.exc_info[0]) for r in caplog.records]
    unaffected = "failed; the instrumented call is unaffected"
    assert messages == [
        (f"instrument: recording an exception {unaffected}", ArithmeticError),
        (f"instrument: delivery {unaffected}", OSError),
    ]


# -- a policy whose job outlives the call, built on the public hooks alone ---------------------


class _Handle:
    """What the decorated call returns: the job ends when the caller closes it."""

    def __init__(self, probe: _LeaseProbe, value: Any, after: Callable[[], None] | None) -> None:
        self.probe, self.value, self.after = probe, value, after

    def _ending(self, exc: BaseException | None) -> None:
        if exc is None:  # the policy's own end; an exception is the engine's to record
            self.probe.ended.labels("closed").inc()
        self.probe.after_job = self.after

    def close(self, exc: BaseException | None = None) -> None:
        self._ending(exc)
        end_job(self.probe, exc)

    async def aclose(self, exc: BaseException | None = None) -> None:
        self._ending(exc)
        await aend_job(self.probe, exc)


class _LeaseProbe(Probe):
    def __init__(self, ended: Counter, after: Callable[[], None]) -> None:
        self.ended = ended
        self.after_job = after

    def success(self, result: Any) -> Any:
        # The call only opened the lease: its end, and the post-job step, come with close().
        handle = _Handle(self, result, self.after_job)
        self.after_job = None
        return handle

    def error(self, exc: BaseException) -> None:
        self.ended.labels("error").inc()

    def cancel(self) -> None:
        self.ended.labels("cancelled").inc()


class _Leases(Instrumenter[_LeaseProbe]):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.ended = Counter("leases_ended", "Leases ended", ["how"], registry=registry)
        self.after_jobs = 0

    def _after(self) -> None:
        self.after_jobs += 1

    def start(self, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _LeaseProbe:
        return _LeaseProbe(self.ended, self._after)

    def null_probe(self) -> _LeaseProbe:
        return _LeaseProbe(self.ended, self._after)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_job_that_ends_after_the_wrapper_returned(
    kind: str, registry: CollectorRegistry
) -> None:
    leases = _Leases(registry)

    def lease_sync(n: int) -> int:
        return n

    async def lease_async(n: int) -> int:
        return n

    lease = leases(lease_sync if kind == "sync" else lease_async)
    handles: list[_Handle] = [
        await lease(i) if kind == "async" else lease(i)  # type: ignore[misc]
        for i in range(3)
    ]
    assert [h.value for h in handles] == [0, 1, 2]  # the caller gets the policy's handle
    assert leases.after_jobs == 0  # no job has ended yet
    ends: list[BaseException | None] = [None, RuntimeError("lost"), asyncio.CancelledError()]
    for handle, exc in zip(handles, ends, strict=True):
        if kind == "sync":
            handle.close(exc)
        else:
            await handle.aclose(exc)
    for how in ("closed", "error", "cancelled"):
        assert registry.get_sample_value("leases_ended_total", {"how": how}) == 1
    assert leases.after_jobs == 3


# -- defer / run_deferred ----------------------------------------------------------------------


def test_deferred_work_runs_once_at_the_next_read_of_the_registry(inst: Instrumentation) -> None:
    runs: list[str] = []
    defer(lambda: runs.append("ran"))
    assert runs == []
    assert b"codomyrmex_analyses_total" in generate_latest(inst.registry)  # a scrape
    assert runs == ["ran"]
    run_deferred()
    assert sample_value(inst, "active_jobs", {"job_type": "m"}) is None
    assert runs == ["ran"]


def test_deferred_work_is_in_the_next_push(tmp_path: Path, registry: CollectorRegistry) -> None:
    textfile = tmp_path / "metrics.prom"
    inst = Instrumentation(registry=registry, textfile=str(textfile), push_mode="off")
    try:
        job = started(inst)
        defer(lambda: job.error(TimeoutError("found late")))  # records; never pushes itself
        assert inst.push()
        assert pushed(textfile, "error")
    finally:
        inst.close()


def test_a_failing_piece_of_deferred_work_is_logged_and_the_rest_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    def broken() -> None:
        raise KeyError("gone")

    defer(lambda: runs.append(1))
    defer(broken)
    defer(lambda: runs.append(3))
    with caplog.at_level(logging.ERROR, logger="instrument"):
        run_deferred()
    assert runs == [1, 3]
    records = [r for r in caplog.records if r.name == "instrument"]
    assert [r.getMessage() for r in records] == [
        "instrument: deferred recording failed; the instrumented call is unaffected"
    ]
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError


def test_record_abandoned_streams_runs_the_deferred_work() -> None:
    runs: list[str] = []
    defer(lambda: runs.append("ran"))
    record_abandoned_streams()
    assert runs == ["ran"]


def test_defer_from_a_finalizer_runs_nothing_under_the_collectors_lock(
    inst: Instrumentation,
) -> None:
    # The work takes a lock that the thread running the collector holds: run there, it
    # would deadlock. Deferred, it runs at the next safe point instead.
    lock = threading.Lock()
    job = started(inst)

    def end_under_the_lock() -> None:
        with lock:
            job.cancel()

    class Finalized:
        def __del__(self) -> None:
            defer(end_under_the_lock)

    holder = Finalized()
    holder.self = holder  # type: ignore[attr-defined]  # only the cyclic collector frees it
    del holder
    collected = threading.Event()

    def collect_holding_the_lock() -> None:
        with lock:
            gc.collect()
        collected.set()

    gc.disable()
    try:
        threading.Thread(target=collect_holding_the_lock, daemon=True).start()
        assert collected.wait(5), "deferred work ran inside the finalizer"
    finally:
        gc.enable()
    assert_analyses(inst, "m", "t", cancelled=1)  # reading the registry ran it
    assert sample_value(inst, "active_jobs", {"job_type": "m"}) == 0


def test_a_job_ended_by_a_finalizer_runs_no_deferred_work(inst: Instrumentation) -> None:
    # A sync layer over a coroutine function hands its job to the coroutine it returns;
    # dropped unstarted, that carrier's finalizer ends the job. Deferred work must wait for
    # a safe point, not run in there.
    async def work() -> int:
        return 1

    @functools.wraps(work)
    def layer() -> Coroutine[Any, Any, int]:
        return work()

    runs: list[str] = []
    wrapped = inst.monitored_analysis("m", "t")(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the carrier was never awaited
        carrier = wrapped()
        defer(lambda: runs.append("ran"))
        del carrier  # its finalizer ends the job, as cancelled
        assert runs == []
    assert_analyses(inst, "m", "t", cancelled=1)  # reading the registry: a safe point
    assert runs == ["ran"]


def test_work_that_defers_more_work_cannot_keep_a_run_going() -> None:
    runs: list[int] = []

    def again() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            defer(again)  # as a policy bug that never makes progress would, for a while

    defer(again)
    run_deferred()
    assert runs == [0]  # one turn per run: the push or scrape waiting on it goes on
    run_deferred()
    assert runs == [0, 1]
    run_deferred()
    run_deferred()
    assert runs == [0, 1, 2]


def test_deferred_from_many_threads_while_others_run_it_each_runs_once() -> None:
    counts: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def work(key: tuple[int, int]) -> Callable[[], None]:
        def run() -> None:
            with lock:
                counts[key] = counts.get(key, 0) + 1

        return run

    stop = threading.Event()

    def deferring(t: int) -> None:
        for i in range(2000):
            defer(work((t, i)))

    def running() -> None:
        while not stop.is_set():
            run_deferred()

    runners = [threading.Thread(target=running) for _ in range(2)]
    deferrers = [threading.Thread(target=deferring, args=(t,)) for t in range(6)]
    for thread in runners + deferrers:
        thread.start()
    for thread in deferrers:
        thread.join()
    stop.set()
    for thread in runners:
        thread.join()
    run_deferred()
    assert len(counts) == 6 * 2000  # none lost
    assert set(counts.values()) == {1}  # none run twice


# -- the proxy's call: the engine gets the call's arguments as they were given -----------------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(str.isidentifier)


@given(
    args=st.lists(st.integers() | st.text(max_size=3) | st.none(), max_size=4),
    kwargs=st.dictionaries(_names, st.integers() | st.text(max_size=3), max_size=5),
)
@settings(max_examples=60, deadline=None)
def test_any_arguments_reach_the_function_as_given(args: list[Any], kwargs: dict[str, Any]) -> None:
    inst = Instrumentation(registry=CollectorRegistry())

    def echo(*a: Any, **k: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return a, k

    class Owner:
        @inst.monitored_analysis("m", "t")
        def method(self, *a: Any, **k: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
            return self, a, k

        @inst.monitored_analysis("m", "t")
        @classmethod
        def klass(cls, *a: Any, **k: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
            return cls, a, k

        @inst.monitored_analysis("m", "t")
        @staticmethod
        def static(*a: Any, **k: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return a, k

    owner = Owner()
    decorated = inst.monitored_analysis("m", "t")(echo)
    assert decorated(*args, **kwargs) == (tuple(args), kwargs)
    assert owner.method(*args, **kwargs) == (owner, tuple(args), kwargs)
    assert Owner.method(owner, *args, **kwargs) == (owner, tuple(args), kwargs)
    assert owner.klass(*args, **kwargs) == (Owner, tuple(args), kwargs)
    assert Owner.static(*args, **kwargs) == (tuple(args), kwargs)
    assert_analyses(inst, "m", "t", success=5, error=0)
    inst.close()


# -- report_failure ------------------------------------------------------------------------------


def test_report_failure_logs_what_failed_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="instrument"):
        try:
            raise ValueError("chunk without usage")
        except ValueError:
            report_failure("recording a chunk")
    (record,) = caplog.records
    assert record.name == "instrument" and record.levelno == logging.ERROR
    assert record.getMessage() == (
        "instrument: recording a chunk failed; the instrumented call is unaffected"
    )
    assert record.exc_info is not None and record.exc_info[0] is ValueError
