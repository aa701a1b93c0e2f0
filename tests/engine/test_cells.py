"""Recording through per-thread cells (``instrument._cells``) is exact at every read.

Every read (``get_sample_value``, ``registry.collect()``, a push, the textfile) sees every
call that ended before it began; ``active_jobs`` is exact at every read; totals are exact
under thread churn, scrape storms, a fork and a tiny switch interval; a fold that fails
half-way loses nothing; finalizers never record inside the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.values import MutexValue

from instrument import Instrumentation
from instrument.ai._streams import usage_lock
from instrument.analysis import AnalysisMonitor

from ..servers import Pushgateway
from ..support import FORKED_WORKERS, run_script

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"module": "m", "analysis_type": "t"}


@pytest.fixture
def off() -> Iterator[Instrumentation]:
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    yield inst
    inst.close()


def reading(inst: Instrumentation) -> dict[str, float]:
    """One read of the registry (one collect): the numbers of the ``m``/``t`` analysis."""
    out = {"success": 0.0, "error": 0.0, "cancelled": 0.0, "count": 0.0, "sum": 0.0}
    out["active"] = 0.0
    for family in inst.registry.collect():
        for s in family.samples:
            if s.name == "codomyrmex_analyses_total" and s.labels.get("module") == "m":
                out[s.labels["status"]] = s.value
            elif s.name == "codomyrmex_analysis_duration_seconds_count":
                out["count"] = s.value
            elif s.name == "codomyrmex_analysis_duration_seconds_sum":
                out["sum"] = s.value
            elif s.name == "codomyrmex_active_jobs" and s.labels == {"job_type": "m"}:
                out["active"] = s.value
    return out


def work_of(inst: Instrumentation) -> tuple[AnalysisMonitor, Callable[[int], int]]:
    monitor = inst.monitored_analysis("m", "t")

    @monitor
    def work(i: int) -> int:
        return i

    return monitor, work


def hammer(
    inst: Instrumentation,
    threads: int,
    calls: int,
    scrape_every: float,
    scrapers: int = 1,
    during: contextlib.AbstractContextManager[object] | None = None,
) -> list[dict[str, float]]:
    """``threads`` threads make ``calls`` calls each while ``scrapers`` threads read every
    ``scrape_every`` seconds; each read must see at least the calls that ended before it.
    ``during`` is entered once every thread runs, and left once they all ended."""
    _, work = work_of(inst)
    finished = [0] * threads  # written by each thread after its call returned
    stop = threading.Event()
    # Halfway, each thread waits for a few reads: on a loaded machine the threads could
    # otherwise finish before a scraper ever ran, and nothing would have been attacked.
    reads_made = threading.Event()
    reads: list[dict[str, float]] = []
    failures: list[str] = []
    # Every thread waits here until ``during`` is entered: a thread's start (a tracer's
    # settrace under coverage, say) is not what a test of the recording attacks.
    go = threading.Barrier(threads + scrapers + 1)

    def run(n: int) -> None:
        go.wait()
        for i in range(calls):
            work(i)
            if i % 64 == 0:
                finished[n] = i + 1
            if i == calls // 2:
                reads_made.wait(30)

    def scrape() -> None:
        go.wait()
        while not stop.is_set():
            before = sum(finished)
            now = reading(inst)
            reads.append(now)
            if len(reads) >= 4:
                reads_made.set()
            if now["success"] < before:
                failures.append(f"a read saw {now['success']} of {before} ended calls")
            # The gauge counts only the jobs in flight. (A family read later in the same
            # collect may include calls that ended meanwhile: each metric folds as it is
            # read, for reads of some names only; so no check that the families agree.)
            if not 0 <= now["active"] <= threads:
                failures.append(f"active_jobs {now['active']} with {threads} threads")
            time.sleep(scrape_every)

    readers = [threading.Thread(target=scrape) for _ in range(scrapers)]
    for scraper in readers:
        scraper.start()
    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    with during or contextlib.nullcontext():
        go.wait()
        for t in workers:
            t.join()
        stop.set()
        for scraper in readers:
            scraper.join()
    assert failures == []
    final = reading(inst)
    assert final["success"] == final["count"] == threads * calls
    assert final["active"] == 0
    return reads


def test_threads_with_a_scrape_every_5ms_are_exact(off: Instrumentation) -> None:
    reads = hammer(off, threads=4, calls=20_000, scrape_every=0.005)
    assert len(reads) > 3  # the reads really ran while the threads recorded
    values = [r["success"] for r in reads]
    assert values == sorted(values)  # never goes back


def test_8_threads_x_200000_calls_with_a_scrape_every_5ms(off: Instrumentation) -> None:
    hammer(off, threads=8, calls=200_000, scrape_every=0.005)


def test_concurrent_scrapes_never_apply_a_difference_twice(off: Instrumentation) -> None:
    hammer(off, threads=4, calls=10_000, scrape_every=0.0005, scrapers=3)


@contextlib.contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_a_tiny_switch_interval_changes_nothing(off: Instrumentation) -> None:
    # Set once every thread runs: at 1e-6 s a thread switch inside a new thread's settrace
    # (coverage's tracer, an audit hook) makes CPython 3.11 refuse the trace function and
    # kill the thread before it ever records; that race is CPython's, not the recording's.
    hammer(off, threads=4, calls=5_000, scrape_every=0.001, during=switch_interval(1e-6))


def test_active_jobs_is_exact_at_every_read(off: Instrumentation) -> None:
    monitor = off.monitored_analysis("m", "t")
    inside, release = threading.Event(), threading.Event()

    @monitor
    def held() -> None:
        inside.set()
        release.wait(10)

    t = threading.Thread(target=held)
    t.start()
    assert inside.wait(10)
    assert reading(off)["active"] == 1  # started in another thread, seen at once
    release.set()
    t.join()
    assert reading(off)["active"] == 0
    with monitor:
        assert reading(off)["active"] == 1
    final = reading(off)
    assert (final["active"], final["success"], final["count"]) == (0, 2, 2)


def test_a_job_ended_in_another_thread_than_it_started(off: Instrumentation) -> None:
    monitor = off.monitored_analysis("m", "t")
    _, work = work_of(off)

    def items() -> Generator[int, None, None]:
        yield 1
        yield 2

    gen = monitor(items)()
    assert next(gen) == 1  # started here
    t = threading.Thread(target=lambda: (list(gen), work(0)))
    t.start()
    t.join()
    assert reading(off)["success"] == 2
    assert reading(off)["active"] == 0


def test_threads_that_die_mid_run_lose_nothing(off: Instrumentation) -> None:
    monitor, work = work_of(off)
    stop = threading.Event()

    def forever() -> None:
        while not stop.is_set():
            work(0)

    steady = threading.Thread(target=forever)
    steady.start()
    for _ in range(20):  # threads come and go while another keeps recording
        short = [threading.Thread(target=lambda: [work(i) for i in range(500)]) for _ in range(4)]
        for t in short:
            t.start()
        reading(off)
        for t in short:
            t.join()
    stop.set()
    steady.join()
    final = reading(off)
    steady_calls = final["success"] - 20 * 4 * 500
    assert steady_calls > 0 and final["count"] == final["success"]
    assert final["active"] == 0
    binding = monitor._binding
    assert binding is not None
    assert binding.series.cell_count() == 0  # every thread that recorded is gone, and folded


def test_10000_short_lived_threads_leave_no_cells(off: Instrumentation) -> None:
    monitor, work = work_of(off)
    most = 0
    binding = None
    for _ in range(100):
        batch = [threading.Thread(target=work, args=(1,)) for _ in range(100)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
        binding = monitor._binding
        assert binding is not None
        most = max(most, binding.series.cell_count())
    assert binding is not None
    # Dropped as new threads make theirs, with no read at all: at most a batch's worth.
    assert most <= 101
    assert reading(off)["success"] == 10_000
    assert binding.series.cell_count() == 0


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
def test_a_million_calls_grow_rss_by_under_2_mib(off: Instrumentation) -> None:
    _, work = work_of(off)
    for i in range(10_000):  # cells, children and caches made
        work(i)
    reading(off)
    gc.collect()
    before = rss()
    for i in range(1_000_000):
        work(i)
    reading(off)
    gc.collect()
    assert rss() - before < 2 * 1024 * 1024
    assert reading(off)["success"] == 1_010_000


def test_a_fold_failing_half_way_loses_and_doubles_nothing(
    off: Instrumentation, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, work = work_of(off)
    for i in range(10):
        work(i)
    real = MutexValue.inc
    calls = [0]

    def flaky(self: MutexValue, amount: float) -> None:
        calls[0] += 1
        if calls[0] >= 3:  # part of the fold is applied, then the children fail
            raise OSError("injected")
        real(self, amount)

    monkeypatch.setattr(MutexValue, "inc", flaky)
    half = reading(off)
    monkeypatch.setattr(MutexValue, "inc", real)
    assert half["success"] + half["count"] < 20  # not everything got through
    for i in range(5):
        work(i)
    final = reading(off)
    assert final["success"] == final["count"] == 15
    assert final["active"] == 0
    assert 0 < final["sum"] < 1


def test_a_read_right_after_a_failed_fold_sees_every_call(
    off: Instrumentation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is recorded between the failed read and the next: that one still folds.
    _, work = work_of(off)
    for i in range(10):
        work(i)
    real = MutexValue.inc

    def failing(self: MutexValue, amount: float) -> None:
        raise OSError("injected")

    monkeypatch.setattr(MutexValue, "inc", failing)
    assert reading(off)["success"] == 0
    monkeypatch.setattr(MutexValue, "inc", real)
    # A read of one metric (not the registry's whole collect, which always folds).
    (family,) = off.metrics.analysis_duration.collect()
    assert [s.value for s in family.samples if s.name.endswith("_count")] == [10]
    again = reading(off)
    assert again["success"] == again["count"] == 10
    assert again["active"] == 0


def test_every_reader_sees_the_folded_values(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.prom"
    inst = Instrumentation(registry=CollectorRegistry(), textfile=str(path), push_mode="each")
    try:
        _, work = work_of(inst)
        t = threading.Thread(target=lambda: [work(i) for i in range(7)])
        t.start()
        t.join()
        # The textfile: written by the last call's own end, in that thread.
        text = path.read_text()
        assert (
            'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"} 7.0' in text
        )
        assert (
            inst.registry.get_sample_value("codomyrmex_analysis_duration_seconds_count", LABELS)
            == 7
        )
        from prometheus_client import generate_latest

        assert b'status="success"} 7.0' in generate_latest(inst.registry)
    finally:
        inst.close()


def test_a_push_carries_the_folded_values(pushgateway: Pushgateway, job_name: str) -> None:
    inst = Instrumentation(pushgateway=pushgateway.url, job=job_name, push_mode="off")
    try:
        _, work = work_of(inst)
        threads = [threading.Thread(target=lambda: [work(i) for i in range(50)]) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inst.push()
        value = pushgateway.value(
            "codomyrmex_analyses_total", status="success", job=job_name, **LABELS
        )
        assert value == 150
        assert pushgateway.value("codomyrmex_active_jobs", job_type="m", job=job_name) == 0
    finally:
        inst.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_from_the_state_at_the_fork(off: Instrumentation) -> None:
    _, work = work_of(off)
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [work(0) for _ in iter(stop.is_set, True)])
    busy.start()  # records while the fork happens
    for i in range(100):
        work(i)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own cells, from the parent's state at the fork
        try:
            at_fork = reading(off)
            for i in range(25):
                work(i)
            after = reading(off)
            ok = (
                after["success"] == at_fork["success"] + 25 == after["count"]
                and after["active"] == at_fork["active"]
            )
            os.write(write, f"{int(ok)} {at_fork['success']} {after['success']}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 200).decode().split()
    os.close(read)
    stop.set()
    busy.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer[0] == "1", answer
    assert float(answer[1]) >= 100  # the child saw the parent's calls up to the fork
    final = reading(off)
    assert final["success"] == final["count"] and final["active"] == 0


@pytest.mark.subprocess
def test_multiprocess_mode_keeps_the_direct_path_and_is_exact(tmp_path: Path) -> None:
    code = """
        from instrument import Instrumentation

        inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
        monitor = inst.monitored_analysis("m", "t")

        @monitor
        def work(i):
            return i

        def worker(n):
            for i in range(300):
                work(i)

        if __name__ == "__main__":
            work(0)
            assert not monitor._binding.cells, "multiprocess mode must update the children"
            collected = run_forked(worker, 3)
            labels = {"module": "m", "analysis_type": "t", "status": "success"}
            print(collected.get_sample_value("codomyrmex_analyses_total", labels))
    """
    # The script beside the workers' files: the collector reads only *.db.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = run_script(tmp_path / "script.py", code, env, prelude=FORKED_WORKERS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "901.0"


# -- ends outside a call: finalizers (rev-ai 5) ---------------------------------------------------


def within(seconds: float, action: Callable[[], Any]) -> None:
    """Run ``action`` in a thread; fail (rather than hang the suite) if it deadlocks."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "deadlocked"
    assert errors == []


def test_a_suspended_ai_generator_collected_under_the_usage_lock(off: Instrumentation) -> None:
    @off.track_ai_call("openai", "gpt-4o")
    def chunks() -> Generator[dict[str, Any], None, None]:
        yield {"choices": [{"delta": {"content": "hi"}}]}
        yield {"choices": [{"delta": {"content": "!"}}]}

    def collect_holding_the_lock() -> None:
        gen = chunks()
        next(gen)  # suspended mid-stream
        cycle: list[Any] = [gen]
        cycle.append(cycle)  # only the cyclic collector frees it
        del gen, cycle
        with usage_lock:  # held by this very thread while the collector finalizes the stream
            gc.collect()

    within(10, collect_holding_the_lock)
    calls = off.registry.get_sample_value(
        "codomyrmex_ai_api_calls_total",
        {"provider": "openai", "model": "gpt-4o", "status": "cancelled"},
    )
    assert calls == 1
    assert off.registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_a_never_awaited_handover_collected_under_the_usage_lock(off: Instrumentation) -> None:
    async def answer() -> int:
        return 1

    @off.track_ai_call("openai", "gpt-4o")
    def create() -> Any:
        return answer()  # a sync function handing on a coroutine

    def collect_holding_the_lock() -> None:
        pending = create()
        cycle: list[Any] = [pending]
        cycle.append(cycle)
        del pending, cycle
        with usage_lock:
            gc.collect()

    within(10, collect_holding_the_lock)
    labels = {"provider": "openai", "model": "gpt-4o", "status": "cancelled"}
    assert off.registry.get_sample_value("codomyrmex_ai_api_calls_total", labels) == 1


def test_a_call_nested_in_its_own_threads_write_is_deferred_not_interleaved(
    off: Instrumentation,
) -> None:
    # What a finalizer or signal handler calling a decorated function inside this thread's
    # own write would see: the cell marked as being written.
    monitor, work = work_of(off)
    work(0)
    reading(off)  # folded: the cell's numbers are all applied
    binding = monitor._binding
    assert binding is not None

    @monitor  # the same series as work's
    def fail() -> None:
        raise LookupError("no such module")

    cell = binding.series.cell()
    numbers, logged, started = cell.values[:], len(cell.log), len(cell.starts)
    ended = len(cell.ends)
    cell.writing = True
    try:
        work(1)
        with pytest.raises(LookupError):
            fail()
        # No read-modify-write of the cell's numbers meanwhile: the starts, the usual end
        # (a success) and the error's end are appended to the cell's logs, which needs no
        # care.
        assert cell.values == numbers
        assert len(cell.log) == logged + 1
        assert len(cell.starts) == started + 2
        assert len(cell.ends) == ended + 1
    finally:
        cell.writing = False
    final = reading(off)  # the deferred numbers are recorded before the read
    assert final["success"] == 2 and final["error"] == 1
    assert final["count"] == 3
    assert final["active"] == 0


def test_an_end_with_an_exemplar_inside_its_threads_write_is_deferred(
    off: Instrumentation,
) -> None:
    # An end whose exemplar the cell keeps is written in place: inside this thread's own
    # write it waits for the engine's deferred work, run before the next read.
    from instrument import run_id

    monitor, work = work_of(off)
    work(0)
    binding = monitor._binding
    assert binding is not None
    cell = binding.series.cell()
    numbers, exemplars = cell.values[:], cell.exemplars
    cell.writing = True
    try:
        with run_id("nightly"):
            work(1)
        assert cell.values == numbers and cell.exemplars == exemplars
    finally:
        cell.writing = False
    final = reading(off)
    assert final["success"] == final["count"] == 2
    assert final["active"] == 0
    samples = [
        s
        for family in off.registry.collect()
        for s in family.samples
        if s.name == "codomyrmex_analysis_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert [s.exemplar.labels for s in samples] == [{"run_id": "nightly"}]


async def test_an_async_call_makes_one_coroutine(off: Instrumentation) -> None:
    @off.monitored_analysis("m", "t")
    async def work() -> int:
        return 1

    started: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_flags & 0x80:  # CO_COROUTINE
            started.append(frame.f_code.co_name)

    await work()
    sys.setprofile(profile)
    try:
        await work()
    finally:
        sys.setprofile(None)
    # The decorated function's own coroutine, and the engine's one around it.
    assert sorted(started) == ["_awaited_job", "work"]
    assert reading(off)["success"] == 2
    await asyncio.sleep(0)


# -- property: any sequence of calls, reads and thread deaths reads back exactly ----------------


class _Worker:
    """A thread that runs what it is given, one thing at a time, until retired."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.done: queue.Queue[BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
                self.done.put(None)
            except BaseException as exc:
                self.done.put(exc)

    def run(self, job: Callable[[], Any]) -> None:
        self.jobs.put(job)
        outcome = self.done.get(timeout=10)
        if outcome is not None and not isinstance(outcome, LookupError):
            raise outcome

    def retire(self) -> None:
        self.jobs.put(None)
        self.thread.join(10)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from(["success", "error"]), st.integers(0, 3)),
        st.tuples(st.just("enter"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("read"), st.just(""), st.just(0)),
        st.tuples(st.just("retire"), st.just(""), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_any_mix_of_threads_calls_and_reads_reads_back_exactly(
    ops: list[tuple[str, str, int]],
) -> None:
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    monitor = inst.monitored_analysis("m", "t")

    @monitor
    def work(fail: bool) -> None:
        if fail:
            raise LookupError("failed")

    workers = [_Worker() for _ in range(4)]
    model = {"success": 0, "error": 0, "active": 0}
    try:
        for op, status, n in ops:
            if op == "call":
                workers[n].run(partial(work, status == "error"))
                model[status] += 1
            elif op == "enter":  # a with-block entered in one thread, exited in another
                exit_in = workers[(n + 1) % 4]
                workers[n].run(monitor.__enter__)
                model["active"] += 1
                assert reading(inst)["active"] == model["active"]
                exit_in.run(lambda: monitor.__exit__(None, None, None))
                model["active"] -= 1
                model["success"] += 1
            elif op == "retire":
                workers[n].retire()
                workers[n] = _Worker()
            now = reading(inst)
            assert (now["success"], now["error"], now["active"]) == (
                model["success"],
                model["error"],
                model["active"],
            )
            assert now["count"] == model["success"] + model["error"]
    finally:
        for w in workers:
            w.retire()
        inst.close()


def test_a_failing_fold_as_a_new_thread_starts_loses_neither_count(
    off: Instrumentation, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, work = work_of(off)
    t = threading.Thread(target=work, args=(0,))
    t.start()
    t.join()  # a dead thread's cell, folded when the next thread makes its first

    def broken(self: MutexValue, amount: float) -> None:
        raise OSError("injected")

    monkeypatch.setattr(MutexValue, "inc", broken)
    t = threading.Thread(target=work, args=(1,))
    t.start()
    t.join()
    monkeypatch.undo()
    final = reading(off)
    assert final["success"] == final["count"] == 2
    assert final["active"] == 0


def test_a_read_of_some_names_or_of_one_metric_sees_the_folded_values(
    off: Instrumentation,
) -> None:
    # prometheus_client collects a restricted registry (a scrape with ?name[]=) in no set
    # order: the registry-wide fold may come after the metric was read.
    _, work = work_of(off)
    name = "codomyrmex_analyses_total"
    for round_ in range(1, 30):
        t = threading.Thread(target=work, args=(round_,))
        t.start()
        t.join()
        restricted = off.registry.restricted_registry([name, "codomyrmex_active_jobs"])
        values = {
            (s.name, s.labels.get("status")): s.value
            for family in restricted.collect()
            for s in family.samples
            if s.labels.get("module", s.labels.get("job_type")) == "m"
        }
        assert values[(name, "success")] == round_
        assert values[("codomyrmex_active_jobs", None)] == 0
        (family,) = off.metrics.analysis_duration.collect()
        count = [s.value for s in family.samples if s.name.endswith("_count")]
        assert count == [round_]


def test_a_cell_carries_the_latest_exemplar_of_a_bucket_to_the_fold(off: Instrumentation) -> None:
    # Room for the traces work: no public way to attach one yet, so it is set on the cell.
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.samples import Exemplar

    monitor, work = work_of(off)
    work(0)
    binding = monitor._binding
    assert binding is not None
    cell = binding.series.cell()
    first_bucket = 5  # the duration histogram's sum is number 4, its buckets follow
    with cell.lock:
        cell.exemplars = {first_bucket: Exemplar({"trace_id": "abc123"}, 0.05, 1.0)}
    text = openmetrics(off.registry).decode()
    (line,) = [ln for ln in text.splitlines() if 'le="0.1"' in ln and "duration" in ln]
    assert line.endswith('# {trace_id="abc123"} 0.05 1.0')
    assert cell.exemplars is None  # taken by the fold


# -- counters known only later: the spare numbers (issue 13, third pass) ------------------------


class _Keeper:
    """What uses a series (a binding, in the package): the series lives as long as it."""


def _counter_series(
    keeper: _Keeper, spare: int
) -> tuple[CollectorRegistry, Any, Callable[[str], Any]]:
    """A series with one counter (index 0) and ``spare`` free numbers, on a fresh registry;
    and what makes a further child of the same counter family."""
    from prometheus_client import Counter

    from instrument._cells import CellSeries

    registry = CollectorRegistry()
    family = Counter("spare_things", "Things", ["kind"], registry=registry)
    series = CellSeries(
        keeper, counters={0: family.labels("base")}, gauges={}, histograms={}, spare=spare
    )
    return registry, series, family.labels


def _things(registry: CollectorRegistry, kind: str) -> float | None:
    """A read as an Instrumentation's registry makes it: the fold first (its hook)."""
    from instrument._cells import fold_if_changed

    fold_if_changed()
    return registry.get_sample_value("spare_things_total", {"kind": kind})


def test_a_counter_added_later_is_counted_through_the_cells() -> None:
    keeper = _Keeper()
    registry, series, child = _counter_series(keeper, spare=2)
    series.add(((0, 1),))
    late = series.counter(child("late"))
    assert late == 1
    series.add(((0, 1), (late, 5)))
    assert _things(registry, "base") == 2
    assert _things(registry, "late") == 5
    other = series.counter(child("other"))
    assert other == 2
    assert series.counter(child("none left")) is None  # the caller increments it directly
    series.add(((other, 3),))
    assert _things(registry, "other") == 3


def test_counters_added_while_threads_count_and_reads_fold_are_exact() -> None:
    """Writers add counters as they go and count into them while a reader folds all the
    time: every read only grows, and the totals are exact (none lost, none twice)."""
    keeper = _Keeper()
    registry, series, child = _counter_series(keeper, spare=64)
    stop = threading.Event()
    failures: list[str] = []

    def write(n: int) -> None:
        for k in range(8):
            index = series.counter(child(f"w{n}k{k}"))
            assert index is not None
            for _ in range(500):
                series.add(((index, 1), (0, 1)))

    def read() -> None:
        last = 0.0
        while not stop.is_set():
            base = _things(registry, "base") or 0.0
            if base < last:
                failures.append(f"base went from {last} to {base}")
            last = base

    reader = threading.Thread(target=read)
    reader.start()
    try:
        in_threads_of(write, 4)
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert _things(registry, "base") == 4 * 8 * 500
    assert all(_things(registry, f"w{n}k{k}") == 500 for n in range(4) for k in range(8))


def in_threads_of(work: Callable[[int], object], count: int) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_counters_added_from_many_threads_each_get_their_own_number() -> None:
    keeper = _Keeper()
    registry, series, child = _counter_series(keeper, spare=16)
    got: list[int | None] = []
    lock = threading.Lock()

    def add(n: int) -> None:
        index = series.counter(child(f"k{n}"))
        with lock:
            got.append(index)
        if index is not None:
            series.add(((index, n + 1),))
        else:
            child(f"k{n}").inc(n + 1)

    in_threads_of(add, 24)
    numbers = [i for i in got if i is not None]
    assert sorted(numbers) == list(range(1, 17))
    assert got.count(None) == 8
    assert all(_things(registry, f"k{n}") == n + 1 for n in range(24))


def test_a_counter_a_thread_added_and_counted_into_during_a_fold_before_it_exited_counts() -> None:
    """A fold reads the series' counters, then a thread adds one, counts into it and exits
    before the fold reaches its cell: that cell's last fold still applies the new counter
    (it is dropped after it, so nothing would apply it later)."""
    from prometheus_client import Counter

    from instrument._cells import CellSeries

    registry = CollectorRegistry()
    family = Counter("late_things", "Things", ["kind"], registry=registry)
    base = family.labels("base")
    ready, go = threading.Event(), threading.Event()

    def late_writer() -> None:
        series.add(((0, 1),))  # its cell exists before the fold begins
        ready.set()
        go.wait(10)
        index = series.counter(family.labels("late"))
        assert index is not None
        series.add(((index, 3),))

    class Pausing:
        """The base counter, through which the fold of the first cell lets the writer add
        its counter, count and exit."""

        _value = base._value

        def inc(self, amount: float) -> None:
            go.set()
            writer.join(10)
            base.inc(amount)

    keeper = _Keeper()
    series = CellSeries(keeper, counters={0: Pausing()}, gauges={}, histograms={}, spare=2)
    series.add(((0, 1),))  # this thread's cell: the first the fold reaches
    writer = threading.Thread(target=late_writer)
    writer.start()
    assert ready.wait(10)
    from instrument._cells import fold_all

    fold_all()
    assert not writer.is_alive()
    assert registry.get_sample_value("late_things_total", {"kind": "base"}) == 2
    assert registry.get_sample_value("late_things_total", {"kind": "late"}) == 3
    assert series.cell_count() == 1  # the writer's cell folded and dropped


# -- the log of usual ends: against a plain prometheus_client histogram -------------------------

_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: One step of a job's life as the property test drives it: a usual end (its seconds), an
#: end with another status, a read, or a read whose second increment fails.
#: Seconds anywhere, and exactly on a bucket's bound (which belongs to that bucket).
_SECONDS = st.one_of(st.floats(0, 20, allow_nan=False), st.sampled_from([0.0, *_BOUNDS]))
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("usual"), _SECONDS),
        st.tuples(st.just("error"), _SECONDS),
        st.tuples(st.just("exemplar"), _SECONDS),
        st.tuples(st.just("read"), st.just(0.0)),
        st.tuples(st.just("failing read"), st.just(0.0)),
    ),
    max_size=300,
)


def _job_series(
    keeper: _Keeper,
) -> tuple[CollectorRegistry, Any, Callable[[], dict[str, float]]]:
    """A job's series (gauge, two statuses, a histogram) on a fresh registry, and what
    reads its numbers the way a scrape does (the fold first)."""
    from prometheus_client import Counter, Gauge, Histogram

    from instrument._cells import CellSeries, fold_if_changed

    registry = CollectorRegistry()
    active = Gauge("log_active", "Active", registry=registry)
    done = Counter("log_done", "Done", ["status"], registry=registry)
    seconds = Histogram("log_seconds", "Seconds", buckets=_BOUNDS, registry=registry)
    series = CellSeries(
        keeper,
        counters={1: done.labels("success"), 2: done.labels("error")},
        gauges={0: active},
        histograms={3: seconds},
        gauge=0,
        histogram=3,
        usual=1,
    )

    def read() -> dict[str, float]:
        fold_if_changed()
        numbers = {
            "active": registry.get_sample_value("log_active"),
            "success": registry.get_sample_value("log_done_total", {"status": "success"}),
            "error": registry.get_sample_value("log_done_total", {"status": "error"}),
            "sum": registry.get_sample_value("log_seconds_sum"),
            "count": registry.get_sample_value("log_seconds_count"),
        }
        for bound in (*_BOUNDS, float("inf")):
            numbers[f"le={bound}"] = registry.get_sample_value(
                "log_seconds_bucket", {"le": str(bound) if bound != float("inf") else "+Inf"}
            )
        return {name: value or 0.0 for name, value in numbers.items()}

    return registry, series, read


def _second_fails(real: Callable[..., None], calls: list[int]) -> Callable[..., None]:
    """An increment that fails the second time it is called."""

    def inc(self: MutexValue, amount: float) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("injected")
        real(self, amount)

    return inc


@settings(max_examples=60, deadline=None)
@given(_STEPS)
def test_usual_ends_through_the_log_read_back_as_a_plain_histogram_would(
    steps: list[tuple[str, float]],
) -> None:
    """Ends logged, compacted by their owner every so many, counted by folds in between
    (some failing half-way): every read equals a prometheus_client histogram that saw the
    same ends, bucket by bucket, none lost and none counted twice."""
    from prometheus_client import Histogram

    keeper = _Keeper()
    _, series, read = _job_series(keeper)
    plain = Histogram("plain_seconds", "Seconds", buckets=_BOUNDS, registry=CollectorRegistry())
    ended = {"success": 0, "error": 0}
    real = MutexValue.inc
    for step, seconds in steps:
        if step in ("usual", "error", "exemplar"):
            series.begin()
            if step == "usual":
                series.end_usual(seconds)
                ended["success"] += 1
            elif step == "exemplar":  # written in place, beside the logs
                series.end(1, seconds, (), {"run_id": "r"})
                ended["success"] += 1
            else:
                series.end(2, seconds)
                ended["error"] += 1
            plain.observe(seconds)
            continue
        if step == "failing read":
            MutexValue.inc = _second_fails(real, [0])  # type: ignore[method-assign]
            try:
                read()
            finally:
                MutexValue.inc = real  # type: ignore[method-assign]
            continue
        got = read()
        assert got["active"] == 0
        assert got["success"] == ended["success"] and got["error"] == ended["error"]
        assert got["count"] == ended["success"] + ended["error"]
        expected_sum = plain._sum.get()
        assert got["sum"] == pytest.approx(expected_sum, rel=1e-9, abs=1e-9)
        for bound, bucket in zip((*_BOUNDS, float("inf")), plain._buckets, strict=True):
            below = sum(b.get() for b in plain._buckets[: plain._buckets.index(bucket) + 1])
            assert got[f"le={bound}"] == below
    final = read()
    assert (
        final["count"]
        == ended["success"] + ended["error"]
        == len([s for s in steps if s[0] in ("usual", "error", "exemplar")])
    )
    assert all(len(c.log) < 64 and len(c.ends) < 64 for c in series._cells)  # bounded


def test_a_log_counted_by_a_read_then_compacted_is_not_counted_again(off: Instrumentation) -> None:
    monitor, work = work_of(off)
    for i in range(10):
        work(i)
    assert reading(off)["success"] == 10  # counted from the log
    binding = monitor._binding
    assert binding is not None
    cell = binding.series.cell()
    assert len(cell.log) == 10  # the read did not change the cell
    for i in range(200):  # the owner compacts three times, the ten read above included
        work(i)
    assert len(cell.log) < 64
    final = reading(off)
    assert final["success"] == final["count"] == 210
    assert final["active"] == 0


def test_a_forked_child_gets_the_logged_ends_of_its_parent(off: Instrumentation) -> None:
    _, work = work_of(off)
    for i in range(30):  # in the log, not yet compacted
        work(i)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(40):  # across a compaction in the child
                work(i)
            got = reading(off)
            os.write(write, f"{got['success']} {got['count']} {got['active']}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    answer = os.read(read, 200).decode().split()
    os.close(read)
    assert [float(x) for x in answer] == [70, 70, 0]
    assert reading(off)["success"] == 30  # the parent's own, unchanged by the child


# -- interleavings a review found: a read between the owner's appends, inside its compaction --


class _Tripwire(list):  # type: ignore[type-arg]
    """A cell's log that runs ``then`` when it is copied or trimmed: what another thread or
    a signal handler does at that very moment."""

    def __init__(self, entries: list[Any], then: Callable[[], None], on: str) -> None:
        super().__init__(entries)
        self.then, self.on, self.armed = then, on, True

    def _fire(self, what: str) -> None:
        if self.armed and what == self.on:
            self.armed = False
            self.then()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            self._fire("copy")
        return super().__getitem__(index)

    def __delitem__(self, index: Any) -> None:
        self._fire("trim")
        super().__delitem__(index)


def test_a_job_that_starts_and_ends_while_a_read_copies_the_logs_is_in_flight() -> None:
    # Another thread reads while the owner starts and ends a job between the read's copy
    # of the ends and of the starts: the job counts as in flight, never as -1 active.
    keeper = _Keeper()
    _, series, read = _job_series(keeper)
    series.begin()
    series.end_usual(0.001)
    cell = series.cell()

    def owner_starts_and_ends() -> None:
        cell.starts.append(1)
        cell.log.append(0.002)

    cell.log = _Tripwire(cell.log, owner_starts_and_ends, "copy")
    seen: list[dict[str, float]] = []
    reader = threading.Thread(target=lambda: seen.append(read()))
    reader.start()
    reader.join()
    assert seen[0]["active"] in (0, 1)  # the job in flight, or not yet begun
    assert seen[0]["success"] == seen[0]["count"] >= 1
    final = read()
    assert final["active"] == 0 and final["success"] == final["count"] == 2


@pytest.mark.parametrize("moment", ["trim", "copy"])
def test_a_read_inside_the_owners_compaction_sees_every_call_once(moment: str) -> None:
    # A signal handler or finalizer reading while its thread compacts the logs: at the
    # trim (the numbers already published) and at the copy (before anything changed).
    # Mid-way through its own thread's write the read leaves that cell to the next one,
    # so it never sees a log emptied into numbers not yet there, nor one counted twice.
    keeper = _Keeper()
    _, series, read = _job_series(keeper)
    for _ in range(10):
        series.begin()
        series.end_usual(0.001)
    assert read()["success"] == 10
    cell = series.cell()
    inside: list[dict[str, float]] = []
    cell.log = _Tripwire(cell.log, lambda: inside.append(read()), moment)
    for _ in range(60):  # the 64th entry compacts
        series.begin()
        series.end_usual(0.001)
    assert len(inside) == 1
    assert inside[0]["success"] == inside[0]["count"] in (10, 70)  # whole, never half
    final = read()
    assert final["success"] == final["count"] == 70
    assert final["active"] == 0


def test_an_exception_raised_inside_a_compaction_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What a signal handler raising (a timeout, KeyboardInterrupt) at the copy does: the
    # compaction stops before it changed anything, and the logs keep every call.
    keeper = _Keeper()
    _, series, read = _job_series(keeper)
    cell = series.cell()

    def interrupt() -> None:
        raise TimeoutError("alarm")

    cell.log = _Tripwire(cell.log, interrupt, "copy")
    for _ in range(100):
        series.begin()
        series.end_usual(0.001)
    final = read()
    assert final["success"] == final["count"] == 100
    assert final["active"] == 0


def test_a_read_nested_in_its_own_threads_read_returns() -> None:
    # A finalizer that reads the registry while this thread folds: it returns (the fold
    # under way applies everything) instead of waiting for its own thread forever.
    from instrument._cells import fold_all

    keeper = _Keeper()
    registry, series, read = _job_series(keeper)
    series.begin()
    series.end_usual(0.001)
    nested: list[float | None] = []
    cell = series.cell()

    def read_inside() -> None:
        fold_all()
        nested.append(registry.get_sample_value("log_done_total", {"status": "success"}))

    cell.log = _Tripwire(cell.log, read_inside, "copy")
    within(10, read)
    assert len(nested) == 1
    assert read()["success"] == 1
