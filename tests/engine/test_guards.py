"""The engine's promise: a failure in recording or delivery never changes what the call does.

Failures are injected into a small scripted policy (every hook of the engine) and into the
shipping ``monitored_analysis`` (its binding), for sync, async, generator and async-generator
functions and for with-blocks. Each failure must be logged under the ``instrument`` logger.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._engine import Instrumenter, Probe, bind_arguments, wraps_signature
from instrument.analysis import AnalysisMonitor
from instrument.instrumentation import Policy

from ..support import Boom, explode, sample

#: What the engine's log line says for a failure in each hook.
GUARD_TEXT = {
    "start": "starting a job failed",
    "success": "recording a result failed",
    "error": "recording an exception failed",
    "cancel": "recording an exception failed",
    "item": "recording an item failed",
    "deliver": "delivery failed",
}


class ScriptedProbe(Probe):
    """Logs every hook the engine calls into ``events``; raises from those in ``failing``."""

    def __init__(self, events: list[tuple[Any, ...]], failing: frozenset[str]) -> None:
        self.events = events
        self.failing = failing
        # An attribute, as the engine expects; the inherited after_job_async calls it.
        self.after_job = self._deliver

    def _hook(self, name: str, *detail: Any) -> None:
        self.events.append((name, *detail))
        if name in self.failing:
            raise Boom(name)

    def success(self, result: Any) -> Any:
        self._hook("success", result)
        return super().success(result)

    def error(self, exc: BaseException) -> None:
        self._hook("error", exc)

    def cancel(self) -> None:
        self._hook("cancel")

    def item(self, value: Any) -> None:
        self._hook("item", value)

    def _deliver(self) -> None:
        self._hook("deliver")


class ScriptedPolicy(Instrumenter[Probe]):
    """A policy whose hooks named in ``failing`` raise :class:`Boom`."""

    def __init__(self, *failing: str, observes_items: bool = True) -> None:
        super().__init__()
        self.failing = frozenset(failing)
        self.events: list[tuple[Any, ...]] = []
        self.observes_items = observes_items

    def start(
        self, wrapped: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Probe:
        self.events.append(("start",))
        if "start" in self.failing:
            raise Boom("start")
        return ScriptedProbe(self.events, self.failing)

    def null_probe(self) -> Probe:
        return Probe()

    def names(self) -> list[str]:
        return [event[0] for event in self.events]


def guard_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "instrument" and r.levelno >= logging.ERROR]


def assert_logged(caplog: pytest.LogCaptureFixture, hook: str, times: int = 1) -> None:
    """The failing hook was logged ``times`` times (once per failure), with its traceback."""
    records = guard_records(caplog)
    assert len(records) == times, [r.getMessage() for r in records]
    for record in records:
        assert GUARD_TEXT[hook] in record.getMessage()
        assert "the instrumented call is unaffected" in record.getMessage()
        assert record.exc_info is not None and record.exc_info[0] is Boom


# -- one job of each kind, run to completion: what did the caller see? -------------------------


ITEMS = ("a", "b")


def make_job(
    kind: str, result: Any, error: BaseException | None, items: Sequence[Any] = ITEMS
) -> Callable[..., Any]:
    """A plain function of ``kind`` that yields ``items`` (generators), then returns or
    raises."""
    if kind == "sync":

        def sync_job() -> Any:
            if error is not None:
                raise error
            return result

        return sync_job
    if kind == "async":

        async def async_job() -> Any:
            await asyncio.sleep(0)
            if error is not None:
                raise error
            return result

        return async_job
    if kind == "generator":

        def generator_job() -> Generator[Any, None, Any]:
            yield from items
            if error is not None:
                raise error
            return result

        return generator_job

    async def async_generator_job() -> AsyncIterator[Any]:
        for item in items:
            await asyncio.sleep(0)
            yield item
        if error is not None:
            raise error

    return async_generator_job


async def outcome(kind: str, func: Callable[..., Any]) -> tuple[str, Any, list[Any]]:
    """("returned", value, items) or ("raised", exception, items), as the caller saw it."""
    items: list[Any] = []
    try:
        if kind == "sync":
            value = func()
        elif kind == "async":
            value = await func()
        elif kind == "generator":
            gen = func()
            while True:
                try:
                    items.append(next(gen))
                except StopIteration as stop:
                    value = stop.value
                    break
        else:
            async for item in func():
                items.append(item)
            value = None
    except Exception as exc:
        return ("raised", exc, items)
    return ("returned", value, items)


KINDS = ["sync", "async", "generator", "async_generator"]


def hook_cases(end_hook: str) -> list[Any]:
    cases = []
    for kind in KINDS:
        for hook in ("start", end_hook, "item", "deliver"):
            if hook == "item" and kind in ("sync", "async"):
                continue  # only generators yield items
            cases.append(pytest.param(kind, hook, id=f"{kind}-{hook}"))
    return cases


@pytest.mark.parametrize(("kind", "hook"), hook_cases("success"))
async def test_failing_hook_never_changes_a_returning_call(
    kind: str, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = object() if kind != "async_generator" else None
    job = make_job(kind, result, None)
    policy = ScriptedPolicy(hook)
    with caplog.at_level(logging.ERROR, logger="instrument"):
        seen = await outcome(kind, policy(job))
    assert seen == await outcome(kind, job)
    assert seen[1] is result
    assert_logged(caplog, hook, times=policy.names().count(hook))
    if hook == "start":
        assert policy.events == [("start",)]  # no probe, so nothing else is recorded
    else:
        # The job still ends exactly once, and delivery still runs after a failed record.
        assert policy.names().count("success") == 1
        assert policy.names()[-2:] == ["success", "deliver"]
        assert policy.events[-2] == ("success", result)


@pytest.mark.parametrize(("kind", "hook"), hook_cases("error"))
async def test_failing_hook_never_changes_a_raising_call(
    kind: str, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = LookupError("the job's own failure")
    job = make_job(kind, None, error)
    policy = ScriptedPolicy(hook)
    with caplog.at_level(logging.ERROR, logger="instrument"):
        seen = await outcome(kind, policy(job))
    items = list(ITEMS) if kind in ("generator", "async_generator") else []
    assert seen == ("raised", error, items) == await outcome(kind, job)
    assert seen[1] is error  # the very exception, not a wrapper of it
    assert_logged(caplog, hook, times=policy.names().count(hook))
    if hook == "start":
        assert policy.events == [("start",)]
    else:
        assert policy.names().count("error") == 1
        assert policy.names()[-2:] == ["error", "deliver"]
        assert policy.events[-2] == ("error", error)


def test_items_are_reported_only_when_the_policy_asks(caplog: pytest.LogCaptureFixture) -> None:
    job = make_job("generator", "done", None)
    watching = ScriptedPolicy()
    quiet = ScriptedPolicy(observes_items=False)
    assert list(watching(job)()) == list(quiet(job)()) == list(ITEMS)
    assert watching.names() == ["start", "item", "item", "success", "deliver"]
    assert [e[1] for e in watching.events if e[0] == "item"] == list(ITEMS)
    assert quiet.names() == ["start", "success", "deliver"]
    assert not guard_records(caplog)


# -- cancellation: the cancel hook failing -------------------------------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_failing_cancel_hook_lets_an_interrupt_through(
    interrupt: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    raised = interrupt()
    policy = ScriptedPolicy("cancel")

    @policy
    def job() -> None:
        raise raised

    with caplog.at_level(logging.ERROR, logger="instrument"), pytest.raises(interrupt) as info:
        job()
    assert info.value is raised
    assert policy.names() == ["start", "cancel", "deliver"]
    assert_logged(caplog, "cancel")


def test_failing_cancel_hook_on_a_generator_closed_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ScriptedPolicy("cancel")
    closed = []

    @policy
    def numbers() -> Generator[int, None, None]:
        try:
            yield from range(10)
        finally:
            closed.append(True)

    gen = numbers()
    with caplog.at_level(logging.ERROR, logger="instrument"):
        assert next(gen) == 0
        assert next(gen) == 1
        gen.close()  # must not raise
    assert closed == [True]  # the wrapped generator was closed too
    assert policy.names() == ["start", "item", "item", "cancel", "deliver"]
    assert_logged(caplog, "cancel")


async def test_failing_cancel_hook_on_a_cancelled_task_and_async_generator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ScriptedPolicy("cancel")
    started = asyncio.Event()

    @policy
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    @policy
    async def stream() -> AsyncGenerator[int, None]:
        for i in range(10):
            yield i

    with caplog.at_level(logging.ERROR, logger="instrument"):
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        agen = stream()
        assert await agen.__anext__() == 0
        await agen.aclose()
    assert policy.names() == ["start", "cancel", "deliver", "start", "item", "cancel", "deliver"]
    records = guard_records(caplog)
    assert len(records) == 2
    assert all(GUARD_TEXT["cancel"] in r.getMessage() for r in records)


# -- send / throw through an observed generator ---------------------------------------------------


def test_throw_and_send_pass_through_an_observed_generator() -> None:
    policy = ScriptedPolicy()

    @policy
    def echo() -> Generator[Any, Any, str]:
        received = None
        while True:
            try:
                received = yield received
            except ValueError as exc:
                received = f"caught {exc}"
            if received == "stop":
                return "stopped"

    gen = echo()
    assert next(gen) is None
    assert gen.send("hello") == "hello"
    assert gen.throw(ValueError("bad")) == "caught bad"
    with pytest.raises(StopIteration) as stop:
        gen.send("stop")
    assert stop.value.value == "stopped"
    assert [e[1] for e in policy.events if e[0] == "item"] == [None, "hello", "caught bad"]
    assert policy.names()[-2:] == ["success", "deliver"]
    assert policy.events[-2] == ("success", "stopped")

    # An exception thrown in and not handled ends the job as an error, unchanged.
    gen = echo()
    next(gen)
    thrown = KeyError("unhandled")
    with pytest.raises(KeyError) as info:
        gen.throw(thrown)
    assert info.value is thrown
    assert policy.events[-2] == ("error", thrown)  # type: ignore[comparison-overlap]


# -- with-blocks ---------------------------------------------------------------------------------


class BlockFailed(Exception):
    """Raised by the body of a with-block."""


@pytest.mark.parametrize("hook", ["start", "success", "error", "deliver"])
@pytest.mark.parametrize("body_raises", [False, True], ids=["body-ok", "body-raises"])
async def test_with_blocks_keep_their_outcome_when_a_hook_fails(
    hook: str, body_raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    policy = ScriptedPolicy(hook)
    error = BlockFailed("body")
    ran = []
    for use_async in (False, True):
        with caplog.at_level(logging.ERROR, logger="instrument"):
            raised = None
            try:
                if use_async:
                    async with policy as handle:
                        ran.append(handle)
                        if body_raises:
                            raise error
                else:
                    with policy as handle:
                        ran.append(handle)
                        if body_raises:
                            raise error
            except BlockFailed as exc:
                raised = exc
        assert raised is (error if body_raises else None)
    assert len(ran) == 2
    end = "error" if body_raises else "success"
    if hook == "start":
        # The body still runs, with a handle that records nothing.
        assert all(type(handle) is Probe for handle in ran)
        assert policy.events == [("start",), ("start",)]
    else:
        assert all(isinstance(handle, ScriptedProbe) for handle in ran)
        assert policy.names() == ["start", end, "deliver"] * 2
    failures = guard_records(caplog)
    expected = 2 if hook in ("start", "deliver", end) else 0
    assert len(failures) == expected
    assert all(GUARD_TEXT[hook] in r.getMessage() for r in failures)


def test_with_block_whose_start_fails_hands_out_a_handle_that_records_nothing(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = inst.monitored_analysis("m", "t", project="p")
    monitor.start = explode  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger="instrument"), monitor as job:
        job.record_quality(90.0)  # accepted, and recorded nowhere
        with pytest.raises(TypeError, match="score must be a number"):
            job.record_quality("high")  # type: ignore[arg-type]
    assert job is monitor.null_probe()
    assert_logged(caplog, "start")
    assert (
        registry.get_sample_value("codomyrmex_code_quality_score", {"project": "p", "module": "m"})
        is None
    )
    for status in ("success", "error", "cancelled"):
        assert (
            registry.get_sample_value(
                "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": status}
            )
            is None
        )
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "m"}) is None


def test_exiting_a_with_block_in_another_context_ends_the_job_entered_there(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # (This test used to expect a RuntimeError from the other thread's exit and the job
    # left open: the engine's state must not depend on where the exit runs.)
    monitor = inst.monitored_analysis("m", "t")
    monitor.__enter__()
    failures: list[BaseException] = []

    def exit_elsewhere() -> None:
        monitor.__exit__(None, None, None)  # pairs with the one open entry
        try:
            asyncio.run(monitor.__aexit__(None, None, None))
        except RuntimeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=exit_elsewhere)
    thread.start()
    thread.join()
    # The first exit ended the job; the second found no open entry anywhere, and its
    # context never entered: that is the clear error.
    assert len(failures) == 1
    assert "without a matching enter" in str(failures[0])
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "m"}) == 0
    # The exit here finds its job already ended elsewhere: nothing to do, nothing raised.
    monitor.__exit__(None, None, None)
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "m"}) == 0
    assert (
        registry.get_sample_value(
            "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
        )
        == 1
    )


# -- the shipping policy: failures injected into its binding ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "broken", ["end", "end_usual", "count_error", "after_job", "after_job_async"]
)
async def test_monitored_analysis_survives_a_broken_binding(
    kind: str, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    monitor = inst.monitored_analysis("m", "t")
    error = LookupError("job failed")
    returning = monitor(make_job(kind, "value" if kind != "async_generator" else None, None))
    raising = monitor(make_job(kind, None, error))
    await outcome(kind, returning)  # the label children are bound now
    assert monitor._binding is not None
    # A job reads these from the binding when it starts: the next calls get the broken one.
    setattr(monitor._binding, broken, explode)
    with caplog.at_level(logging.ERROR, logger="instrument"):
        ok = await outcome(kind, returning)
        failed = await outcome(kind, raising)
    items = list(ITEMS) if kind in ("generator", "async_generator") else []
    assert ok == ("returned", "value" if kind != "async_generator" else None, items)
    assert failed == ("raised", error, items)
    expected = {
        "end": 1,  # the error
        "end_usual": 1,  # the success (no exemplar: the usual end)
        "count_error": 1,
        "after_job": 2 if kind in ("sync", "generator") else 0,
        "after_job_async": 2 if kind in ("async", "async_generator") else 0,
    }[broken]
    assert len(guard_records(caplog)) == expected
    if broken in ("after_job", "after_job_async"):
        # Recording was complete before delivery failed.
        labels = {"module": "m", "analysis_type": "t"}
        assert inst.registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "m"}) == 0
        assert sample(inst.registry, "analyses_total", status="success", **labels) == 2
        assert sample(inst.registry, "analyses_total", status="error", **labels) == 1
    inst.close()


# -- binding a call's arguments --------------------------------------------------------------------


def test_bind_arguments_without_a_signature_or_with_a_mismatch() -> None:
    def analyze(path: str, *, depth: int = 1) -> None: ...

    signature = wraps_signature(analyze)
    assert signature == inspect.signature(analyze)
    assert bind_arguments(signature, analyze, ("src",), {"depth": 2}) == {"path": "src", "depth": 2}
    # Arguments the function would reject bind to nothing rather than raising.
    assert bind_arguments(signature, analyze, ("a", "b", "c"), {}) == {}
    assert wraps_signature(min) is None  # a builtin without a signature
    assert wraps_signature(42) is None  # type: ignore[arg-type]
    assert bind_arguments(None, min, (3, 1), {}) == {}


def test_bind_arguments_puts_self_back_for_bound_methods() -> None:
    class Repo:
        def scan(self, path: str) -> None: ...

    repo = Repo()
    signature = inspect.signature(Repo.scan)
    assert bind_arguments(signature, repo.scan, ("src",), {}) == {"self": repo, "path": "src"}


def test_signature_less_callable_gets_empty_arguments_for_its_project(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    seen: list[dict[str, Any]] = []

    def project(arguments: dict[str, Any]) -> str:
        seen.append(arguments)
        return "builtin"

    smallest = inst.monitored_analysis("m", "t", project=project, quality=lambda r: r)(min)
    assert smallest(7, 3, 5) == 3
    assert seen == [{}]
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "builtin", "module": "m"}
        )
        == 3
    )


# -- the wrapper itself --------------------------------------------------------------------------


def test_a_decorated_call_reaches_the_engine_without_wrapts_self_lookup(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # wrapt's own __call__ looks up ``__self__`` on the wrapped object at every call, most
    # of its per-call cost; the proxy's call goes to the engine without it. A call that
    # falls back to wrapt's path makes this lookup and fails here.
    lookups: list[str] = []

    class Counted:
        def __call__(self, x: int) -> int:
            return 2 * x

        def __getattr__(self, name: str) -> Any:
            lookups.append(name)
            raise AttributeError(name)

    double = inst.monitored_analysis("m", "t")(Counted())
    at_decoration = lookups.count("__self__")
    assert [double(x) for x in range(5)] == [0, 2, 4, 6, 8]
    assert lookups.count("__self__") == at_decoration
    assert (
        registry.get_sample_value(
            "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
        )
        == 5
    )


def test_a_call_passing_a_keyword_named_like_the_engines_parameters_is_unchanged(
    inst: Instrumentation,
) -> None:
    def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    decorated = inst.monitored_analysis("m", "t")(echo)
    for kwargs in ({"wrapped": 1}, {"instance": 2, "args": 3, "kwargs": 4}, {"self": 5}):
        assert decorated("a", **kwargs) == (("a",), kwargs)


def test_a_policy_missing_start_still_runs_the_function(caplog: pytest.LogCaptureFixture) -> None:
    class Unfinished(Instrumenter[Probe]):
        pass

    @Unfinished()
    def answer() -> int:
        return 42

    with caplog.at_level(logging.ERROR, logger="instrument"):
        assert answer() == 42
    records = guard_records(caplog)
    assert len(records) == 1 and GUARD_TEXT["start"] in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is NotImplementedError
    with pytest.raises(NotImplementedError):
        Unfinished().null_probe()


def test_policy_base_requires_an_instrumentation_and_a_bind(inst: Instrumentation) -> None:
    with pytest.raises(TypeError, match="expected an Instrumentation, got str"):
        AnalysisMonitor("not an instrumentation", "m", "t")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        Policy(inst).bind(inst)


async def test_exit_without_enter_says_so_clearly() -> None:
    monitor = Instrumentation().monitored_analysis("m", "t")
    with pytest.raises(RuntimeError, match="without a matching enter"):
        monitor.__exit__(None, None, None)
    with pytest.raises(RuntimeError, match="without a matching enter"):
        await monitor.__aexit__(None, None, None)


def test_with_blocks_leave_nothing_behind_in_the_context() -> None:
    import contextvars

    inst = Instrumentation()
    before = len(contextvars.copy_context())
    for _ in range(200):  # a fresh monitor per block, as ad-hoc code does
        with inst.monitored_analysis("m", "t"):
            pass
    assert len(contextvars.copy_context()) == before
    inst.close()
