"""monitored_analysis: every function kind, outcomes, concurrency, with-blocks, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import pickle
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import instrument
from instrument import Instrumentation, configure, monitored_analysis

from .pickled import module_level_analysis
from .support import FakeClock, active, analyses, analysis_duration, analysis_errors, in_threads


@pytest.fixture
def clock(clock: FakeClock) -> FakeClock:
    """The shared clock, moving 0.25 s at each reading: a job's start and end differ by it."""
    clock.now, clock.step = 100.0, 0.25
    return clock


# -- every kind of function -------------------------------------------------------------------


def test_sync_function_records_count_duration_and_gauge(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    seen_active = []

    @inst.monitored_analysis("m", "t")
    def analyze(path: str, *, depth: int = 1) -> str:
        """Analyse a path."""
        seen_active.append(active(registry))
        return f"{path}:{depth}"

    assert analyze("src", depth=2) == "src:2"
    assert analyze("lib") == "lib:1"
    assert seen_active == [1.0, 1.0]
    assert analyses(registry, "success") == 2
    assert analyses(registry, "error") == 0
    assert analysis_duration(registry, "count") == 2
    assert analysis_duration(registry, "sum") == pytest.approx(0.5)  # one 0.25 s step per call
    assert active(registry) == 0


def test_metadata_is_preserved(inst: Instrumentation) -> None:
    def plain(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    async def coro(a: int) -> int:
        return a

    def gen(n: int) -> Iterator[int]:
        yield from range(n)

    async def agen(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    for func in (plain, coro, gen, agen):
        wrapped = inst.monitored_analysis("m", "t")(func)
        assert wrapped.__name__ == func.__name__
        assert wrapped.__qualname__ == func.__qualname__
        assert wrapped.__doc__ == func.__doc__
        assert inspect.signature(wrapped) == inspect.signature(func)
        assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(func)
        assert inspect.isgeneratorfunction(wrapped) == inspect.isgeneratorfunction(func)
        assert inspect.isasyncgenfunction(wrapped) == inspect.isasyncgenfunction(func)


async def test_async_function_times_the_awaited_work(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @inst.monitored_analysis("m", "t")
    async def analyze(x: int) -> int:
        assert active(registry) == 1
        clock.now += 10.0  # the awaited work takes 10 s of fake time
        await asyncio.sleep(0)
        return x * 2

    coroutine = analyze(21)
    assert active(registry) == 0  # creating the coroutine starts nothing
    assert await coroutine == 42
    assert analyses(registry, "success") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(10.25)
    assert active(registry) == 0


def test_generator_job_spans_first_next_to_exhaustion(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @inst.monitored_analysis("m", "t")
    def files(n: int) -> Iterator[int]:
        for i in range(n):
            clock.now += 1.0
            yield i
        return None

    gen = files(3)
    assert active(registry) == 0 and analyses(registry, "success") == 0
    assert next(gen) == 0
    assert active(registry) == 1
    assert list(gen) == [1, 2]
    assert analyses(registry, "success") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(3.25)
    assert active(registry) == 0


def test_generator_never_started_records_nothing(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.monitored_analysis("m", "t")
    def files() -> Iterator[int]:
        yield 1

    gen = files()
    gen.close()
    del gen
    assert analyses(registry, "success") == 0
    assert analyses(registry, "cancelled") == 0
    assert analysis_duration(registry, "count") == 0


def test_generator_closed_early_is_cancelled_and_send_throw_pass_through(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.monitored_analysis("m", "t")
    def echo() -> Iterator[Any]:
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "caught"

    gen = echo()
    assert next(gen) is None
    assert gen.send("hello") == "hello"
    assert gen.throw(ValueError("x")) == "caught"
    gen.close()
    assert analyses(registry, "cancelled") == 1
    assert analyses(registry, "success") == 0
    assert analysis_duration(registry, "count") == 1
    assert active(registry) == 0


def test_generator_error_counts_error(inst: Instrumentation, registry: CollectorRegistry) -> None:
    @inst.monitored_analysis("m", "t")
    def broken() -> Iterator[int]:
        yield 1
        raise KeyError("boom")

    with pytest.raises(KeyError):
        list(broken())
    assert analyses(registry, "error") == 1
    assert analysis_errors(registry, "KeyError") == 1


async def test_async_generator(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @inst.monitored_analysis("m", "t")
    async def chunks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    assert [c async for c in chunks(3)] == [0, 1, 2]
    assert analyses(registry, "success") == 1

    agen = chunks(5)
    assert await agen.__anext__() == 0
    assert active(registry) == 1
    await agen.aclose()
    assert analyses(registry, "cancelled") == 1
    assert analysis_duration(registry, "count") == 2
    assert active(registry) == 0


async def test_async_generator_asend_athrow_and_error(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.monitored_analysis("m", "t")
    async def echo() -> AsyncIterator[Any]:
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "caught"
            if received == "stop":
                raise RuntimeError("stopped")

    agen = echo()
    assert await agen.asend(None) is None
    assert await agen.asend("a") == "a"
    assert await agen.athrow(ValueError("x")) == "caught"
    with pytest.raises(RuntimeError, match="stopped"):
        await agen.asend("stop")
    assert analyses(registry, "error") == 1
    assert analysis_errors(registry, "RuntimeError") == 1
    assert active(registry) == 0


def test_methods_classmethods_staticmethods(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class Analyzer:
        factor = 3

        def __init__(self) -> None:
            self.offset = 1

        @inst.monitored_analysis("m", "t")
        def method(self, x: int) -> int:
            return x + self.offset

        @inst.monitored_analysis("m", "t")
        @classmethod
        def klass(cls, x: int) -> int:
            return x * cls.factor

        @inst.monitored_analysis("m", "t")
        @staticmethod
        def static(x: int) -> int:
            return -x

        @classmethod
        @inst.monitored_analysis("m", "t")
        def inner_classmethod(cls, x: int) -> int:
            return x * cls.factor * 2

    obj = Analyzer()
    assert obj.method(1) == 2
    assert Analyzer.method(obj, 2) == 3
    assert Analyzer.klass(2) == 6 and obj.klass(1) == 3
    assert Analyzer.static(4) == -4 and obj.static(5) == -5
    assert Analyzer.inner_classmethod(1) == 6
    assert analyses(registry, "success") == 7


# -- outcomes ------------------------------------------------------------------------------------


def test_exception_is_reraised_unchanged(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    error = ValueError("bad input")

    @inst.monitored_analysis("m", "t")
    def analyze() -> None:
        raise error

    with pytest.raises(ValueError) as info:
        analyze()
    assert info.value is error
    # The traceback still ends in the user's function.
    assert info.traceback[-1].name == "analyze"
    assert analyses(registry, "error") == 1
    assert analysis_errors(registry, "ValueError") == 1
    assert analysis_duration(registry, "count") == 1
    assert active(registry) == 0


async def test_cancelled_task_counts_cancelled(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    started = asyncio.Event()

    @inst.monitored_analysis("m", "t")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(slow())
    await started.wait()
    assert active(registry) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert analyses(registry, "cancelled") == 1
    assert analyses(registry, "error") == 0
    assert active(registry) == 0


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_interrupts_count_cancelled(
    inst: Instrumentation, registry: CollectorRegistry, exc_type: type[BaseException]
) -> None:
    @inst.monitored_analysis("m", "t")
    def analyze() -> None:
        raise exc_type()

    with pytest.raises(exc_type):
        analyze()
    assert analyses(registry, "cancelled") == 1
    assert active(registry) == 0


# -- concurrency ---------------------------------------------------------------------------------


def test_fifty_overlapping_threads(inst: Instrumentation, registry: CollectorRegistry) -> None:
    barrier = threading.Barrier(50)
    peak = []

    @inst.monitored_analysis("m", "t")
    def analyze(i: int) -> int:
        barrier.wait(10)
        peak.append(active(registry))
        barrier.wait(10)
        if i % 5 == 0:
            raise ValueError(i)
        return i

    def call(i: int) -> None:
        with contextlib.suppress(ValueError):
            analyze(i)

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(call, range(50)))
    assert set(peak) == {50.0}
    assert analyses(registry, "success") == 40
    assert analyses(registry, "error") == 10
    assert analysis_duration(registry, "count") == 50
    assert active(registry) == 0


async def test_fifty_overlapping_tasks(inst: Instrumentation, registry: CollectorRegistry) -> None:
    gate = asyncio.Event()
    peak = []

    @inst.monitored_analysis("m", "t")
    async def analyze(i: int) -> int:
        await gate.wait()
        peak.append(active(registry))
        return i

    tasks = [asyncio.create_task(analyze(i)) for i in range(50)]
    await asyncio.sleep(0.01)
    assert active(registry) == 50
    gate.set()
    assert sorted(await asyncio.gather(*tasks)) == list(range(50))
    assert analyses(registry, "success") == 50
    assert active(registry) == 0


# -- with-blocks -----------------------------------------------------------------------------------


def test_with_block(inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock) -> None:
    job_monitor = inst.monitored_analysis("m", "t", project="proj")
    with job_monitor as job:
        assert active(registry) == 1
        job.record_quality(91.5)
    with pytest.raises(OSError), job_monitor:
        raise OSError("disk")
    assert analyses(registry, "success") == 1
    assert analyses(registry, "error") == 1
    assert analysis_errors(registry, "OSError") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(0.5)
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "proj", "module": "m"}
        )
        == 91.5
    )
    assert active(registry) == 0


async def test_async_with_block(inst: Instrumentation, registry: CollectorRegistry) -> None:
    async with inst.monitored_analysis("indexer", "reindex") as job:
        job.record_quality(80, project="repo")
        assert active(registry, "indexer") == 1
    assert analyses(registry, "success", "indexer", "reindex") == 1
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "repo", "module": "indexer"}
        )
        == 80
    )
    assert active(registry, "indexer") == 0


def test_one_with_block_object_shared_by_threads(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    shared = inst.monitored_analysis("m", "t")
    barrier = threading.Barrier(20)

    def work(i: int) -> None:
        with shared:
            barrier.wait(10)
            if i % 4 == 0:
                with shared:  # nested use of the same object in one thread
                    pass

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(work, range(20)))
    assert analyses(registry, "success") == 25
    assert active(registry) == 0


async def test_one_with_block_object_shared_by_tasks(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    shared = inst.monitored_analysis("m", "t")

    async def work(i: int) -> None:
        async with shared:
            await asyncio.sleep(0.001 * (i % 3))
            if i % 2:
                raise LookupError(i)

    results = await asyncio.gather(*(work(i) for i in range(30)), return_exceptions=True)
    assert sum(isinstance(r, LookupError) for r in results) == 15
    assert analyses(registry, "success") == 15
    assert analyses(registry, "error") == 15
    assert active(registry) == 0


def test_job_type_defaults_to_module_and_can_be_set(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    with inst.monitored_analysis("m", "t", job_type="batch"):
        assert active(registry, "batch") == 1
        assert active(registry, "m") is None
    assert active(registry, "batch") == 0


# -- quality and project ----------------------------------------------------------------------------


def test_quality_and_project_callables(inst: Instrumentation, registry: CollectorRegistry) -> None:
    class Result:
        overall_quality_score = 87.5

    @inst.monitored_analysis(
        "static_analysis",
        "codebase",
        project=lambda a: a["codebase_path"].rsplit("/", 1)[-1],
        quality=lambda r: r.overall_quality_score,
    )
    def analyze_codebase(codebase_path: str) -> Result:
        return Result()

    analyze_codebase("/src/alpha")
    analyze_codebase(codebase_path="/src/beta")
    for project in ("alpha", "beta"):
        assert (
            registry.get_sample_value(
                "codomyrmex_code_quality_score", {"project": project, "module": "static_analysis"}
            )
            == 87.5
        )


def test_project_callable_sees_self_of_methods(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class Repo:
        name = "gamma"

        @inst.monitored_analysis("m", "t", project=lambda a: a["self"].name, quality=len)
        def files(self, names: list[str]) -> list[str]:
            return names

    Repo().files(["a", "b", "c"])
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "gamma", "module": "m"}
        )
        == 3
    )


@pytest.mark.parametrize(
    "quality",
    [lambda r: 1 / 0, lambda r: "high", lambda r: None, lambda r: float("nan")],
    ids=["raises", "string", "none", "nan"],
)
def test_bad_quality_callable_is_logged_and_skipped(
    inst: Instrumentation,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    quality: Any,
) -> None:
    @inst.monitored_analysis("m", "t", quality=quality)
    def analyze() -> str:
        return "result"

    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert analyze() == "result"
    assert analyses(registry, "success") == 1
    assert (
        registry.get_sample_value("codomyrmex_code_quality_score", {"project": "m", "module": "m"})
        is None
    )
    assert "quality callable of m/t failed" in caplog.text


def test_failing_metric_update_never_reaches_the_call(
    inst: Instrumentation, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = inst.monitored_analysis("m", "t")

    @monitor
    def analyze() -> int:
        return 7

    def explode(*_: Any) -> None:
        raise RuntimeError("metric backend down")

    assert analyze() == 7  # binds the label children
    assert monitor._binding is not None
    monitor._binding.end = monitor._binding.end_usual = explode
    with caplog.at_level(logging.ERROR, logger="instrument"):
        assert analyze() == 7
    assert "recording a result failed" in caplog.text


# -- the default instrumentation -------------------------------------------------------------------


@pytest.fixture
def restore_default() -> Iterator[None]:
    from instrument import defaults

    saved = defaults._default
    yield
    defaults._default = saved


@pytest.mark.usefixtures("restore_default")
def test_module_level_decorator_follows_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_NAMESPACE", "envns")

    @monitored_analysis("m", "t")
    def analyze() -> int:
        return 1

    first = configure(registry=CollectorRegistry())
    assert first.namespace == "envns"  # the environment fills what is not given
    analyze()
    second = configure(registry=CollectorRegistry(), namespace="explicit")
    analyze()
    analyze()
    labels = {"module": "m", "analysis_type": "t", "status": "success"}
    assert first.registry.get_sample_value("envns_analyses_total", labels) == 1
    assert second.registry.get_sample_value("explicit_analyses_total", labels) == 2
    instrument.record_quality_score("p", "m", 5)
    assert (
        second.registry.get_sample_value(
            "explicit_code_quality_score", {"project": "p", "module": "m"}
        )
        == 5
    )


@pytest.mark.usefixtures("restore_default")
def test_disabled_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_DISABLED", "1")
    inst = configure(registry=CollectorRegistry())
    assert not inst.enabled

    @monitored_analysis("m", "t")
    def analyze(x: int) -> int:
        return x + 1

    with monitored_analysis("m", "t") as job:
        job.record_quality(3)
    assert analyze(1) == 2
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
        )
        is None
    )


def test_two_instrumentations_share_a_registry_without_duplicates() -> None:
    shared = CollectorRegistry()
    a = Instrumentation(registry=shared)
    b = Instrumentation(registry=shared)
    a.record_analysis("m", "t", 0.2)
    b.record_analysis("m", "t", 0.3)
    assert analyses(shared, "success") == 2
    other = Instrumentation(registry=shared, namespace="other")
    other.record_analysis("m", "t", 0.1)
    assert (
        shared.get_sample_value(
            "other_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
        )
        == 1
    )
    with pytest.raises(ValueError, match="already registered on this registry with buckets"):
        Instrumentation(registry=shared, buckets=[1, 2, 3])


def test_global_registry_works_twice() -> None:
    first = Instrumentation(registry=REGISTRY, namespace="globaltest")
    second = Instrumentation(registry=REGISTRY, namespace="globaltest")
    first.record_quality_score("p", "m", 1)
    second.record_quality_score("p", "m", 2)
    assert (
        REGISTRY.get_sample_value("globaltest_code_quality_score", {"project": "p", "module": "m"})
        == 2
    )


def test_custom_namespace_and_buckets(registry: CollectorRegistry) -> None:
    inst = Instrumentation(registry=registry, namespace="acme", buckets=[0.5, 2])
    inst.record_analysis("m", "t", 1.0)
    labels = {"module": "m", "analysis_type": "t"}
    assert (
        registry.get_sample_value("acme_analysis_duration_seconds_bucket", {**labels, "le": "0.5"})
        == 0
    )
    assert (
        registry.get_sample_value("acme_analysis_duration_seconds_bucket", {**labels, "le": "2.0"})
        == 1
    )


# -- the original class's methods ---------------------------------------------------------------------


def test_original_methods(inst: Instrumentation, registry: CollectorRegistry) -> None:
    inst.record_analysis("m", "t", 2.0, success=False)
    inst.record_ai_api_call("openai", "gpt-4o", input_tokens=10, output_tokens=5)
    inst.record_ai_api_call("openai", "gpt-4o", success=False)
    with pytest.warns(RuntimeWarning, match="sets the gauge outright"):
        inst.update_active_jobs("static_analysis", 1)
    inst.update_active_jobs("static_analysis", 0)  # warned once only
    assert analyses(registry, "error") == 1
    assert analysis_duration(registry, "sum") == 2.0
    calls = "codomyrmex_ai_api_calls_total"
    assert (
        registry.get_sample_value(
            calls, {"provider": "openai", "model": "gpt-4o", "status": "success"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            calls, {"provider": "openai", "model": "gpt-4o", "status": "error"}
        )
        == 1
    )
    tokens = "codomyrmex_ai_tokens_used_total"
    assert (
        registry.get_sample_value(
            tokens, {"provider": "openai", "model": "gpt-4o", "token_type": "input"}
        )
        == 10
    )
    assert active(registry, "static_analysis") == 0


def test_prometheus_integration_shim() -> None:
    from instrument import PrometheusIntegration

    monitoring = PrometheusIntegration("http://pushgateway:9091")
    monitoring.record_analysis("static_analysis", "codebase", 1.5, success=True)
    monitoring.record_quality_score("proj", "overall", 77)
    monitoring.record_ai_api_call("anthropic", "claude", True, 3, 4)
    assert (
        monitoring.analysis_counter.labels("static_analysis", "codebase", "success")._value.get()
        == 1
    )
    assert (
        monitoring.registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "proj", "module": "overall"}
        )
        == 77
    )
    assert monitoring.pushgateway_url == "http://pushgateway:9091"
    assert monitoring.push_mode == "off"  # pushes only when asked, as the original did


# -- pickling --------------------------------------------------------------------------------------------


def test_decorated_module_level_function_pickles_and_runs_in_a_pool() -> None:
    restored = pickle.loads(pickle.dumps(module_level_analysis))
    assert restored is module_level_analysis
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(module_level_analysis, [1, 2, 3])) == [2, 4, 6]


# -- bad input -------------------------------------------------------------------------------------------


def test_bare_decorator_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"use @monitored_analysis\(module, analysis_type\)"):

        @monitored_analysis  # type: ignore[arg-type]
        def analyze() -> None: ...


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("", "t"), {}, "module must be a non-empty string"),
        ((1, "t"), {}, "module must be a non-empty string"),
        (("m", None), {}, "analysis_type must be a non-empty string"),
        (("m", "t"), {"job_type": ""}, "job_type must be a non-empty string"),
        (("m", "t"), {"project": 3}, "project must be a string or a callable"),
        (("m", "t"), {"quality": 0.5}, "quality must be a callable"),
        (("m", "t"), {"colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_decorator_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        monitored_analysis(*args, **kwargs)
    with pytest.raises(TypeError, match=message):
        Instrumentation().monitored_analysis(*args, **kwargs)


def test_decorating_a_non_function_is_rejected(inst: Instrumentation) -> None:
    with pytest.raises(TypeError, match="decorates a function"):
        inst.monitored_analysis("m", "t")(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"namespace": "9bad"}, ValueError, "not a valid Prometheus metric prefix"),
        (
            {"pushgateway": "ftp://gw"},
            ValueError,
            "URL; use one such as http://127.0.0.1:9091",
        ),
        ({"push_mode": "sometimes"}, ValueError, "push_mode must be one of"),
        ({"push_mode": "each"}, ValueError, "needs a target"),
        ({"buckets": {"active_jobs": [1]}}, ValueError, "is not a histogram"),
        ({"buckets": [3, 1]}, ValueError, "increasing"),
        ({"registry": "global"}, TypeError, "must be a CollectorRegistry"),
    ],
)
def test_bad_instrumentation_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Instrumentation(**kwargs)


def test_positional_arguments_to_instrumentation_are_rejected() -> None:
    with pytest.raises(TypeError, match="keyword arguments only"):
        Instrumentation(CollectorRegistry())


def test_bad_scores_are_rejected(inst: Instrumentation) -> None:
    with pytest.raises(TypeError, match="score must be a number"):
        inst.record_quality_score("p", "m", "high")  # type: ignore[arg-type]
    with inst.monitored_analysis("m", "t") as job, pytest.raises(ValueError, match="NaN"):
        job.record_quality(float("nan"))


def test_bad_environment_says_which_variable(
    monkeypatch: pytest.MonkeyPatch, restore_default: None
) -> None:
    monkeypatch.setenv("INSTRUMENT_PUSH_INTERVAL", "soon")
    with pytest.raises(ValueError, match="INSTRUMENT_PUSH_INTERVAL='soon' is not valid"):
        configure()


def test_quality_callable_applies_to_decorated_results_not_with_blocks(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = inst.monitored_analysis("m", "t", project="static", quality=lambda r: r["score"])

    @monitor
    def analyze() -> dict[str, float]:
        return {"score": 64.0}

    assert analyze() == {"score": 64.0}
    with caplog.at_level(logging.WARNING, logger="instrument"), monitor as job:
        job.record_quality(12.5)
    assert not caplog.records  # the with-block has no result to score
    assert analyses(registry, "success") == 2
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "static", "module": "m"}
        )
        == 12.5
    )


@given(
    module=st.text(min_size=1, max_size=30),
    analysis_type=st.text(min_size=1, max_size=30),
    project=st.text(min_size=1, max_size=30),
)
@settings(max_examples=60, deadline=None)
def test_any_label_value_round_trips_through_the_exposition(
    module: str, analysis_type: str, project: str
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)

    @inst.monitored_analysis(module, analysis_type, project=project, quality=lambda r: r)
    def analyze() -> float:
        return 3.5

    analyze()
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    counts = [
        s for s in families["codomyrmex_analyses"].samples if s.name == "codomyrmex_analyses_total"
    ]
    success = [s for s in counts if s.labels["status"] == "success"]
    assert [(s.labels["module"], s.labels["analysis_type"], s.value) for s in success] == [
        (module, analysis_type, 1.0)
    ]
    scores = families["codomyrmex_code_quality_score"].samples
    assert [(s.labels["project"], s.labels["module"], s.value) for s in scores] == [
        (project, module, 3.5)
    ]


def test_one_monitor_decorating_two_functions_binds_each_signature(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    monitor = inst.monitored_analysis(
        "m", "t", project=lambda a: a["path"].strip("/"), quality=lambda r: r
    )

    @monitor
    def first(path: str) -> float:
        return 10.0

    @monitor
    def second(other: int, path: str) -> float:
        return 20.0

    first("/alpha")
    second(1, "/beta")
    for project, score in (("alpha", 10.0), ("beta", 20.0)):
        assert (
            registry.get_sample_value(
                "codomyrmex_code_quality_score", {"project": project, "module": "m"}
            )
            == score
        )


def test_first_with_block_entries_racing_from_threads_stay_exact(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make threads interleave as much as possible
    try:
        for _ in range(20):
            shared = inst.monitored_analysis("m", "t")  # a fresh object: first entries race
            barrier = threading.Barrier(8)

            def work(shared: Any = shared, barrier: threading.Barrier = barrier) -> None:
                barrier.wait(10)
                with shared:
                    pass

            in_threads(work, 8)
    finally:
        sys.setswitchinterval(switch)
    assert analyses(registry, "success") == 160
    assert active(registry) == 0


@pytest.mark.usefixtures("restore_default")
def test_module_level_original_methods_act_on_the_default() -> None:
    inst = configure(registry=CollectorRegistry())
    instrument.record_analysis("m", "t", 0.5, success=False)
    instrument.record_ai_api_call("openai", "gpt-4o", input_tokens=7)
    with pytest.warns(RuntimeWarning):
        instrument.update_active_jobs("batch", 2)
    assert instrument.flush() is True  # nothing to deliver to
    assert analyses(inst.registry, "error") == 1
    assert active(inst.registry, "batch") == 2
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_ai_tokens_used_total",
            {"provider": "openai", "model": "gpt-4o", "token_type": "input"},
        )
        == 7
    )


def test_a_shared_registry_gets_one_scrape_hook() -> None:
    from instrument.delivery import BeforeCollect

    shared = CollectorRegistry()
    for _ in range(3):
        Instrumentation(registry=shared).close()
    hooks = [c for c in shared._collector_to_names if isinstance(c, BeforeCollect)]
    assert len(hooks) == 1
