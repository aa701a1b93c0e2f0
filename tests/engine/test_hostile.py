"""Hostile tests of the engine's promise: a decorated call is never changed or broken, no
count is lost, and a with-block is never left open.

Each test tries to break the promise the way a user's code would: contexts that change
between enter and exit, async callables that do not look async, methods sent to a process
pool, generators driven by hand, policies whose callables misbehave, and many threads and
tasks at once. Every check reads back what a user would: the registry's samples.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import functools
import gc
import inspect
import logging
import multiprocessing
import pickle
import sys
import threading
import time
import types
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation, get_instrumentation, monitored_analysis
from instrument import analysis as analysis_module

from ..support import FakeClock, active, analyses, analysis_duration, analysis_errors, counted
from .test_guards import GUARD_TEXT, ScriptedPolicy, guard_records, make_job, outcome

# -- reading the registry --------------------------------------------------------------------


def bucket(reg: CollectorRegistry, le: str, module: str = "m") -> float | None:
    return reg.get_sample_value(
        "codomyrmex_analysis_duration_seconds_bucket",
        {"module": module, "analysis_type": "t", "le": le},
    )


def outcomes(reg: CollectorRegistry, module: str = "m") -> tuple[float, float, float]:
    """(success, error, cancelled), a status never counted as 0."""
    return tuple(  # type: ignore[return-value]
        counted(reg, "analyses_total", module=module, analysis_type="t", status=status)
        for status in ("success", "error", "cancelled")
    )


@pytest.fixture(scope="module")
def frozen_heap() -> Iterator[None]:
    """What the run left on the heap so far, moved out of the collector's sight: a
    ``gc.collect()`` per hypothesis example then scans what the example made, not the whole
    run's heap (in a full run, seconds per test instead of a quarter of a minute)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch as often as the interpreter allows: races show up, if there are any."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def fresh() -> Instrumentation:
    """For hypothesis examples, which cannot share a function-scoped fixture."""
    return Instrumentation(registry=CollectorRegistry())


# == 1. A with-block exited in another context than its enter ====================================


async def test_async_generator_whose_steps_run_in_different_tasks_ends_its_block_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # The reproduction: enter in the first task, exit in the third.
    blk = inst.monitored_analysis("m", "t")
    seen: list[Any] = []

    async def agen() -> AsyncIterator[int]:
        async with blk:
            seen.append(active(registry))
            yield 1
            yield 2

    g = agen()
    steps: list[Any] = []
    for _ in range(3):
        try:
            steps.append(await asyncio.create_task(g.__anext__()))  # type: ignore[arg-type]
        except StopAsyncIteration:
            steps.append("end")
    assert steps == [1, 2, "end"]
    assert seen == [1.0]
    assert outcomes(registry) == (1, 0, 0)
    assert active(registry) == 0
    assert analysis_duration(registry, "count") == 1


async def test_async_generator_body_error_in_another_task_propagates_untouched(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")
    failure = KeyError("the body's own")

    async def agen() -> AsyncIterator[int]:
        async with blk:
            yield 1
            raise failure

    g = agen()
    assert await asyncio.create_task(g.__anext__()) == 1  # type: ignore[arg-type]
    with pytest.raises(KeyError) as info:
        await asyncio.create_task(g.__anext__())  # type: ignore[arg-type]
    assert info.value is failure
    assert info.value.__context__ is None  # nothing of the toolkit's chained onto it
    assert outcomes(registry) == (0, 1, 0)
    assert analysis_errors(registry, "KeyError") == 1
    assert active(registry) == 0


async def test_an_ai_call_block_in_an_async_generator_stepped_by_other_tasks(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    tracker = inst.track_ai_call("openai", "gpt-4o")

    async def answer() -> AsyncIterator[str]:
        async with tracker as call:
            call.add_usage(input_tokens=3, output_tokens=4)
            yield "partial"
            yield "rest"

    g = answer()
    assert await asyncio.create_task(g.__anext__()) == "partial"  # type: ignore[arg-type]
    assert await asyncio.create_task(g.__anext__()) == "rest"  # type: ignore[arg-type]
    with pytest.raises(StopAsyncIteration):
        await asyncio.create_task(g.__anext__())  # type: ignore[arg-type]
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert (
        registry.get_sample_value("codomyrmex_ai_api_calls_total", {**labels, "status": "success"})
        == 1
    )
    for token_type, expected in (("input", 3), ("output", 4)):
        assert (
            registry.get_sample_value(
                "codomyrmex_ai_tokens_used_total", {**labels, "token_type": token_type}
            )
            == expected
        )
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0


def test_sync_generator_consumed_by_two_threads_keeps_the_body_exception(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")
    failure = KeyError("k")

    def gen() -> Iterator[int]:
        with blk:
            yield 1
            raise failure

    g = gen()
    assert next(g) == 1  # entered in this thread
    caught: list[BaseException] = []

    def finish() -> None:
        try:
            next(g)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=finish)
    worker.start()
    worker.join()
    assert caught == [failure] and caught[0] is failure
    assert failure.__context__ is None
    assert outcomes(registry) == (0, 1, 0)
    assert analysis_errors(registry, "KeyError") == 1
    assert active(registry) == 0


@pytest.mark.parametrize(
    "where", ["enter-in-copy", "exit-in-copy", "each-in-its-own-copy", "async-exit-in-copy"]
)
def test_copy_context_run_at_enter_or_exit(
    where: str, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")

    def enter() -> None:
        blk.__enter__()

    def exit_() -> None:
        blk.__exit__(None, None, None)

    if where == "enter-in-copy":
        contextvars.copy_context().run(enter)
        exit_()
    elif where == "exit-in-copy":
        enter()
        contextvars.copy_context().run(exit_)
    elif where == "each-in-its-own-copy":
        contextvars.copy_context().run(enter)
        contextvars.copy_context().run(exit_)
    else:
        enter()
        contextvars.copy_context().run(asyncio.run, blk.__aexit__(None, None, None))
    assert outcomes(registry) == (1, 0, 0)
    assert active(registry) == 0
    # The object is free again: a normal block after it pairs normally.
    with blk:
        assert active(registry) == 1
    assert outcomes(registry) == (2, 0, 0)
    assert active(registry) == 0


async def test_many_generators_sharing_one_block_pair_each_exit_with_its_own_enter(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    """Enters and exits interleaved across tasks: each generator's duration is its own."""
    blk = inst.monitored_analysis("m", "t")
    holds = [0.05, 0.3, 3.0, 20.0, 100.0]  # one per bucket: (0.1], (0.5], (5], (30], (300]

    async def agen() -> AsyncIterator[None]:
        async with blk:
            yield None

    gens = [agen() for _ in holds]
    # All enter at t=0, each in its own task, then exit in reverse order, each in yet
    # another task, at its own time.
    for g in gens:
        await asyncio.create_task(g.__anext__())  # type: ignore[arg-type]
    assert active(registry) == len(holds)
    start = clock.now
    for g, hold in sorted(zip(gens, holds, strict=True), key=lambda pair: -pair[1]):
        clock.now = start + hold
        with pytest.raises(StopAsyncIteration):
            await asyncio.create_task(g.__anext__())  # type: ignore[arg-type]
    assert active(registry) == 0
    assert outcomes(registry) == (5, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(sum(holds))
    cumulative = {"0.1": 1, "0.5": 2, "1.0": 2, "5.0": 3, "10.0": 3, "30.0": 4, "300.0": 5}
    for le, expected in cumulative.items():
        assert bucket(registry, le) == expected, le


def test_sync_generators_sharing_one_block_finished_by_other_threads(
    inst: Instrumentation, registry: CollectorRegistry, fast_switching: None
) -> None:
    blk = inst.monitored_analysis("m", "t")

    def gen(i: int) -> Iterator[int]:
        with blk:
            yield i
            if i % 3 == 0:
                raise ValueError(i)

    gens = [gen(i) for i in range(60)]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(next, gens)) == list(range(60))
        assert active(registry) == 60

        def finish(g: Iterator[int]) -> str:
            try:
                next(g)
            except StopIteration:
                return "done"
            except ValueError:
                return "raised"
            return "yielded"

        finished = list(pool.map(finish, reversed(gens)))
    assert finished.count("raised") == 20 and finished.count("done") == 40
    assert outcomes(registry) == (40, 20, 0)
    assert active(registry) == 0


async def test_abandoned_async_generator_closed_by_the_loop_ends_its_block(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # asyncio closes a dropped async generator in a task of its own: another context.
    blk = inst.monitored_analysis("m", "t")
    closed = asyncio.Event()

    async def agen() -> AsyncIterator[int]:
        try:
            async with blk:
                yield 1
                yield 2
        finally:
            closed.set()

    g = agen()
    assert await asyncio.create_task(g.__anext__()) == 1  # type: ignore[arg-type]
    assert active(registry) == 1
    del g
    gc.collect()
    await asyncio.wait_for(closed.wait(), 5)
    await asyncio.sleep(0)
    assert outcomes(registry) == (0, 0, 1)
    assert active(registry) == 0


def test_garbage_collected_generator_mid_block_ends_cancelled(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")
    finalized = []

    def gen() -> Iterator[int]:
        try:
            with blk:
                yield 1
                yield 2
        finally:
            finalized.append(True)

    g = gen()
    next(g)
    assert active(registry) == 1
    del g
    gc.collect()
    assert finalized == [True]
    assert outcomes(registry) == (0, 0, 1)
    assert active(registry) == 0


def test_nested_and_reentrant_use_of_one_block_object(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    blk = inst.monitored_analysis("m", "t")
    inner_failure = ValueError("inner")
    with blk as outer:
        clock.now += 100.0
        with pytest.raises(ValueError), blk as inner:
            assert inner is not outer
            assert active(registry) == 2
            clock.now += 0.05
            raise inner_failure
        assert active(registry) == 1
    # The outer block lasted 100.05 s, the inner 0.05 s: pairing stayed LIFO.
    assert outcomes(registry) == (1, 1, 0)
    assert bucket(registry, "0.1") == 1 and bucket(registry, "300.0") == 2
    assert active(registry) == 0

    def recurse(depth: int) -> int:
        with blk:
            return depth if depth == 0 else 1 + recurse(depth - 1)

    assert recurse(25) == 25
    assert outcomes(registry) == (27, 1, 0)
    assert active(registry) == 0

    # Entered twice by hand in one frame, exited twice: both end, in LIFO order.
    first, second = blk.__enter__(), blk.__enter__()
    assert first is not second and active(registry) == 2
    blk.__exit__(None, None, None)
    blk.__exit__(None, None, None)
    assert active(registry) == 0 and outcomes(registry) == (29, 1, 0)


def test_exit_stack_enter_and_exit_in_helper_frames(
    inst: Instrumentation, registry: CollectorRegistry, fast_switching: None
) -> None:
    # ExitStack enters and exits in its own frames: the context pairs them.
    blk = inst.monitored_analysis("m", "t")

    def work(i: int) -> int:
        with contextlib.ExitStack() as stack:
            stack.enter_context(blk)
            if i % 4 == 0:
                with contextlib.ExitStack() as inner:
                    inner.enter_context(blk)
        return i

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(400))) == sum(range(400))
    assert outcomes(registry) == (500, 0, 0)
    assert active(registry) == 0


def test_enter_and_exit_called_straight_from_c_with_no_python_caller(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # A thread whose target is the bound __enter__ itself has no Python frame above it.
    blk = inst.monitored_analysis("m", "t")
    _thread.start_new_thread(blk.__enter__, ())
    deadline = time.monotonic() + 10
    while active(registry) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert active(registry) == 1
    blk.__exit__(None, None, None)
    assert outcomes(registry) == (1, 0, 0)
    assert active(registry) == 0


def test_an_exit_with_no_enter_anywhere_is_a_clear_error_and_records_nothing(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")
    with blk:
        pass
    with pytest.raises(RuntimeError, match="without a matching enter"):
        blk.__exit__(None, None, None)  # the one entry is already ended
    assert outcomes(registry) == (1, 0, 0)
    assert active(registry) == 0


def test_a_block_object_used_by_many_threads_and_tasks_at_once_stays_exact(
    inst: Instrumentation, registry: CollectorRegistry, fast_switching: None
) -> None:
    blk = inst.monitored_analysis("m", "t")
    barrier = threading.Barrier(8)

    def in_thread(n: int) -> None:
        barrier.wait()
        for i in range(300):
            try:
                with blk:
                    if (n + i) % 5 == 0:
                        raise LookupError
            except LookupError:
                pass

    async def in_tasks() -> None:
        async def one(i: int) -> None:
            async with blk:
                await asyncio.sleep(0)
                if i % 5 == 0:
                    raise LookupError

        results = await asyncio.gather(*(one(i) for i in range(300)), return_exceptions=True)
        assert sum(isinstance(r, LookupError) for r in results) == 60

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in range(7)]
    threads.append(threading.Thread(target=lambda: (barrier.wait(), asyncio.run(in_tasks()))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes(registry) == (7 * 240 + 240, 7 * 60 + 60, 0)
    assert active(registry) == 0


async def test_a_task_cancelled_mid_block(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    blk = inst.monitored_analysis("m", "t")
    inside = asyncio.Event()

    async def body() -> None:
        async with blk:
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await inside.wait()
    assert active(registry) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcomes(registry) == (0, 0, 1)
    assert active(registry) == 0

    # A timeout around the block: the caller sees TimeoutError, the job is cancelled.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01), blk:
            await asyncio.Event().wait()
    assert outcomes(registry) == (0, 0, 2)
    assert active(registry) == 0


# == 2. Async work behind callables that do not look async =======================================


async def _failing_work(x: int) -> int:
    await asyncio.sleep(0)
    analysis_module.perf_counter.now += 10.0  # type: ignore[attr-defined]
    if x < 0:
        raise ValueError(x)
    return x * 2


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return await _failing_work(x)


class UpdateWrapperDecorator:
    """A class-based decorator: its sync __call__ hands on the coroutine it makes."""

    def __init__(self, func: Callable[..., Any]) -> None:
        functools.update_wrapper(self, func)
        self.func = func

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)


def _passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def sync_layer(*args: Any) -> Any:
        return func(*args)

    return sync_layer


def _bound_partial() -> Callable[..., Any]:
    class Holder:
        async def run(self, x: int) -> int:
            return await _failing_work(x)

    return functools.partial(Holder().run)


ASYNC_SHAPES: dict[str, Callable[[], Callable[..., Any]]] = {
    "callable-instance": AsyncCallable,
    "partial": lambda: functools.partial(_failing_work),
    "partial-of-callable-instance": lambda: functools.partial(AsyncCallable()),
    "partial-of-partial-of-instance": lambda: functools.partial(functools.partial(AsyncCallable())),
    "partial-of-bound-method": _bound_partial,
    "wraps-over-async": lambda: _passthrough(_failing_work),
    "wraps-over-partial": lambda: _passthrough(functools.partial(_failing_work)),
    "wraps-over-callable-instance": lambda: _passthrough(AsyncCallable()),
    "wraps-over-wraps": lambda: _passthrough(_passthrough(_failing_work)),
    "partial-of-wraps": lambda: functools.partial(_passthrough(_failing_work)),
    "update-wrapper-class": lambda: UpdateWrapperDecorator(_failing_work),
}


@pytest.mark.parametrize("shape", list(ASYNC_SHAPES))
async def test_async_callables_are_timed_and_counted_when_awaited(
    shape: str, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    original = ASYNC_SHAPES[shape]()
    wrapped = inst.monitored_analysis("m", "t")(original)
    # It still looks like what it wraps; a callable instance like the coroutine function
    # its calls run, which the instance itself cannot say on 3.11 (tests/test_ai_fixes.py).
    expected = inspect.iscoroutinefunction(original) or shape == "callable-instance"
    assert inspect.iscoroutinefunction(wrapped) == expected
    pending = wrapped(21)
    assert inspect.iscoroutine(pending)
    assert outcomes(registry) == (0, 0, 0)  # making the coroutine is not the job
    assert await pending == 42
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(10.0)  # the awaited work
    with pytest.raises(ValueError) as info:
        await wrapped(-1)
    assert info.value.args == (-1,)
    assert outcomes(registry) == (1, 1, 0)
    assert analysis_errors(registry, "ValueError") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(20.0)
    assert active(registry) == 0


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        analysis_module.perf_counter.now += 1.0  # type: ignore[attr-defined]
        yield i


class AsyncGenCallable:
    async def __call__(self, n: int) -> AsyncIterator[int]:
        async for i in _numbers(n):
            yield i


ASYNC_GEN_SHAPES: dict[str, Callable[[], Callable[..., Any]]] = {
    "callable-instance": AsyncGenCallable,
    "partial": lambda: functools.partial(_numbers),
    "partial-of-callable-instance": lambda: functools.partial(AsyncGenCallable()),
    "wraps-over-async-generator": lambda: _passthrough(_numbers),
    "wraps-over-partial": lambda: _passthrough(functools.partial(_numbers)),
}


@pytest.mark.parametrize("shape", list(ASYNC_GEN_SHAPES))
async def test_async_generator_callables_span_their_iteration(
    shape: str, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    original = ASYNC_GEN_SHAPES[shape]()
    wrapped = inst.monitored_analysis("m", "t")(original)
    # A callable instance looks like the async generator function its calls run.
    expected = inspect.isasyncgenfunction(original) or shape == "callable-instance"
    assert inspect.isasyncgenfunction(wrapped) == expected
    stream = wrapped(3)
    assert inspect.isasyncgen(stream)
    assert await stream.__anext__() == 0
    assert active(registry) == 1 and outcomes(registry) == (0, 0, 0)
    assert [i async for i in stream] == [1, 2]
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(3.0)
    assert active(registry) == 0


def test_sync_generator_behind_a_wraps_layer_spans_its_iteration(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    def items(n: int) -> Iterator[int]:
        for i in range(n):
            clock.now += 1.0
            yield i
        return None

    wrapped = inst.monitored_analysis("m", "t")(_passthrough(items))
    gen = wrapped(4)
    assert inspect.isgenerator(gen)
    assert list(gen) == [0, 1, 2, 3]
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(4.0)


class SyncRunner:
    """Like asgiref's async_to_sync: sync __call__, ``__wrapped__`` set to a coroutine
    function, and it runs the coroutine to the end itself."""

    def __init__(self, func: Callable[..., Any]) -> None:
        functools.update_wrapper(self, func)
        self.func = func

    def __call__(self, *args: Any) -> Any:
        return asyncio.run(self.func(*args))


def test_a_sync_runner_over_a_coroutine_function_stays_a_sync_call(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    wrapped = inst.monitored_analysis("m", "t")(SyncRunner(_failing_work))
    assert wrapped(4) == 8  # a value, not a coroutine
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(10.0)  # the job spans the run
    with pytest.raises(ValueError):
        wrapped(-4)
    assert outcomes(registry) == (1, 1, 0)
    assert active(registry) == 0


async def test_an_awaitable_that_is_no_coroutine_is_returned_as_it_is(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    loop = asyncio.get_running_loop()

    async def base() -> int:
        return 1

    @functools.wraps(base)
    def schedules() -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        future.set_result(7)
        return future

    wrapped = inst.monitored_analysis("m", "t")(schedules)
    result = wrapped()
    assert isinstance(result, asyncio.Future)  # the caller still holds its Future
    assert await result == 7
    assert outcomes(registry) == (1, 0, 0)


def test_a_coroutine_handed_on_but_never_awaited_ends_cancelled(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    wrapped = inst.monitored_analysis("m", "t")(_passthrough(_failing_work))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... never awaited"
        pending = wrapped(1)
        assert active(registry) == 1  # a sync call: its job started with the call
        del pending
        gc.collect()
    assert active(registry) == 0
    assert outcomes(registry) == (0, 0, 1)


def test_generator_function_called_with_bad_arguments_raises_at_the_call(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    def needs_one(x: int) -> Iterator[int]:
        yield x

    wrapped = inst.monitored_analysis("m", "t")(needs_one)
    with pytest.raises(TypeError) as decorated:
        wrapped(1, 2)  # type: ignore[call-arg]  # raised at the call, as Python does
    with pytest.raises(TypeError) as plain:
        needs_one(1, 2)  # type: ignore[call-arg]
    assert str(decorated.value) == str(plain.value)
    assert outcomes(registry) == (0, 1, 0)
    assert analysis_errors(registry, "TypeError") == 1
    assert active(registry) == 0


@pytest.mark.parametrize("shape", ["coroutine-function", "wraps-over-async"])
async def test_a_task_cancelled_before_it_ran_warns_nothing_and_leaves_nothing_open(
    shape: str, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 1

    wrapped = inst.monitored_analysis("m", "t")(
        work if shape == "coroutine-function" else _passthrough(work)
    )
    gc.collect()  # other tests' garbage warns before, not inside, the block below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = asyncio.create_task(wrapped())
        task.cancel()  # before its first step: its coroutine is closed unstarted
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the loop lets go of the finished task
        closed = wrapped()
        closed.close()
        del task, closed
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert active(registry) == 0
    # A sync layer's job began with its call: each ended as cancelled. A coroutine
    # function's job never began.
    expected = 0 if shape == "coroutine-function" else 2
    assert outcomes(registry) == (0, 0, expected)


def test_wrapped_callables_look_like_what_they_wrap(inst: Instrumentation) -> None:
    async def coro() -> None: ...

    async def agen() -> AsyncIterator[None]:
        yield None

    def gen() -> Iterator[None]:
        yield None

    candidates: list[Any] = [
        coro,
        agen,
        gen,
        functools.partial(coro),
        functools.partial(agen),
        functools.partial(gen),
        AsyncCallable(),
        _passthrough(coro),
        len,
        int,
    ]
    for original in candidates:
        wrapped = inst.monitored_analysis("m", "t")(original)
        for check in (
            inspect.iscoroutinefunction,
            inspect.isasyncgenfunction,
            inspect.isgeneratorfunction,
            inspect.isfunction,
            callable,
        ):
            expected = check(original)
            if isinstance(original, AsyncCallable) and check is inspect.iscoroutinefunction:
                expected = True  # what its calls make (tests/test_ai_fixes.py)
            assert check(wrapped) == expected, (original, check)


# == 3. Pickling and copying ======================================================================


@dataclasses.dataclass
class Tally:
    """Decorated methods of each kind, on the default instrumentation (as in user code)."""

    base: int

    @monitored_analysis("pickled_methods", "method")
    def add(self, x: int) -> int:
        return self.base + x

    @monitored_analysis("pickled_methods", "static")
    @staticmethod
    def double(x: int) -> int:
        return 2 * x

    @monitored_analysis("pickled_methods", "class")
    @classmethod
    def label(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @staticmethod
    @monitored_analysis("pickled_methods", "static_outer")
    def triple(x: int) -> int:
        return 3 * x

    @classmethod
    @monitored_analysis("pickled_methods", "class_outer")
    def tag(cls, x: int) -> str:
        return f"{cls.__name__}#{x}"


@dataclasses.dataclass
class PlainTally:
    """Tally undecorated: what each decorated method must pickle and copy like."""

    base: int

    def add(self, x: int) -> int:
        return self.base + x

    @staticmethod
    def double(x: int) -> int:
        return 2 * x

    @classmethod
    def label(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @staticmethod
    def triple(x: int) -> int:
        return 3 * x

    @classmethod
    def tag(cls, x: int) -> str:
        return f"{cls.__name__}#{x}"


@monitored_analysis("pickled_functions", "module")
def quadruple(x: int) -> int:
    return 4 * x


def counted_here(module: str, analysis_type: str) -> float:
    """In whichever process runs it: the default instrumentation's success count."""
    return analyses(get_instrumentation().registry, "success", module, analysis_type)


def call_unpickled(data: bytes, arg: int) -> tuple[Any, float]:
    func = pickle.loads(data)
    return func(arg), counted_here("pickled_functions", "module")


ACCESSORS: dict[str, Callable[[Any], Any]] = {
    "bound-method": lambda obj: obj.add,
    "method-via-class": lambda obj: type(obj).add,
    "staticmethod-via-instance": lambda obj: obj.double,
    "staticmethod-via-class": lambda obj: type(obj).double,
    "classmethod-via-instance": lambda obj: obj.label,
    "classmethod-via-class": lambda obj: type(obj).label,
    "staticmethod-outside": lambda obj: obj.triple,
    "classmethod-outside": lambda obj: obj.tag,
}


def _call(accessor: str, func: Callable[..., Any], obj: Any) -> Any:
    if accessor == "method-via-class":
        return func(obj, 5)
    return func(5)


def _shape(value: Any, obj: Any) -> Any:
    """What a result says, with the class names of the twin classes made equal."""
    return value.replace(type(obj).__name__, "C") if isinstance(value, str) else value


@pytest.mark.parametrize("accessor", list(ACCESSORS))
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_decorated_methods_pickle_as_the_undecorated_do(accessor: str, protocol: int) -> None:
    get = ACCESSORS[accessor]
    decorated, plain = Tally(10), PlainTally(10)
    restored = pickle.loads(pickle.dumps(get(decorated), protocol))
    restored_plain = pickle.loads(pickle.dumps(get(plain), protocol))
    assert _shape(_call(accessor, restored, decorated), decorated) == _shape(
        _call(accessor, restored_plain, plain), plain
    )
    # A bound method pickles its instance: the restored one is bound to an equal copy.
    plain_self = getattr(restored_plain, "__self__", None)
    if plain_self is not None:
        assert restored.__self__ == get(decorated).__self__
        assert (restored.__self__ is decorated) == (plain_self is plain)
    else:
        assert not hasattr(restored, "__self__") or restored.__self__ is None


@pytest.mark.parametrize("accessor", list(ACCESSORS))
def test_decorated_methods_copy_and_deepcopy_as_the_undecorated_do(accessor: str) -> None:
    get = ACCESSORS[accessor]
    decorated, plain = Tally(10), PlainTally(10)
    for operation in (copy.copy, copy.deepcopy):
        original, original_plain = get(decorated), get(plain)
        copied, copied_plain = operation(original), operation(original_plain)
        assert _shape(_call(accessor, copied, decorated), decorated) == _shape(
            _call(accessor, copied_plain, plain), plain
        )
        # Identity as Python keeps it: a function copies as itself, a bound method is made
        # again (on the same instance, or on a deep copy of it).
        assert (copied is original) == (copied_plain is original_plain)
        plain_self = getattr(copied_plain, "__self__", None)
        if plain_self is not None:
            assert (copied.__self__ is original.__self__) == (plain_self is original_plain.__self__)
            assert copied.__self__ == original.__self__


def test_a_decorated_function_inside_deep_copied_objects_is_kept_as_it_is(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.monitored_analysis("m", "t")
    def analyze(x: int) -> int:
        return x + 1

    @dataclasses.dataclass
    class Step:
        run: Callable[[int], int]
        options: dict[str, Any]

    step = Step(analyze, {"nested": [analyze, {"again": analyze}]})
    for copied in (copy.deepcopy(step), dataclasses.replace(copy.deepcopy(step)), copy.copy(step)):
        assert copied.run is analyze
        assert copied.run(1) == 2
    twin = copy.deepcopy(step)
    assert twin.options["nested"][0] is analyze and twin.options["nested"][1]["again"] is analyze
    assert twin.options is not step.options
    assert analyses(registry, "success") == 3


def test_a_copied_callable_instance_is_a_decorated_copy(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class Scorer:
        def __init__(self) -> None:
            self.weights = [1, 2]

        def __call__(self, x: int) -> int:
            return x * sum(self.weights)

    original = Scorer()
    wrapped = inst.monitored_analysis("m", "t")(original)
    shallow, deep = copy.copy(wrapped), copy.deepcopy(wrapped)
    for copied in (shallow, deep):
        assert copied is not wrapped
        assert copied.__wrapped__ is not original  # type: ignore[attr-defined]
        assert copied(2) == 6
    assert shallow.weights is original.weights  # as copy.copy(original) shares them
    assert deep.weights == original.weights and deep.weights is not original.weights
    assert analyses(registry, "success") == 2  # the copies still record


def test_a_decorated_object_without_a_module_level_name_says_why_it_cannot_pickle(
    inst: Instrumentation,
) -> None:
    def local() -> None: ...

    with pytest.raises(AttributeError) as plain:
        pickle.dumps(local)
    with pytest.raises(AttributeError) as decorated:
        pickle.dumps(inst.monitored_analysis("m", "t")(local))
    assert str(plain.value) == str(decorated.value)
    with pytest.raises(pickle.PicklingError, match="pickles by its module-level name"):
        pickle.dumps(inst.monitored_analysis("m", "t")(functools.partial(quadruple, 1)))


@pytest.mark.parametrize("name", ["tracked_bound", "alias"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_decorated_callable_whose_name_finds_another_object_says_why_it_cannot_pickle(
    name: str, protocol: int
) -> None:
    # rev-ai 15: its qualified name resolves to the undecorated method or function, so
    # pickle's own "not the same object" would blame the wrong thing.
    from .. import pickled

    decorated = getattr(pickled, name)
    with pytest.raises(pickle.PicklingError, match="pickles by its module-level name") as info:
        pickle.dumps(decorated, protocol)
    assert "not the same object" not in str(info.value)


@pytest.fixture(scope="module")
def spawned_pool() -> Iterator[ProcessPoolExecutor]:
    """One worker started fresh (spawn): it imports this module and counts from zero."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def test_process_pool_runs_decorated_methods_and_they_record_there(
    spawned_pool: ProcessPoolExecutor,
) -> None:
    tally = Tally(100)
    assert spawned_pool.submit(tally.add, 1).result(timeout=120) == 101
    assert spawned_pool.submit(tally.add, 2).result(timeout=60) == 102
    assert spawned_pool.submit(Tally.double, 4).result(timeout=60) == 8
    assert spawned_pool.submit(tally.label, 3).result(timeout=60) == "Tally:3"
    assert spawned_pool.submit(Tally.add, tally, 5).result(timeout=60) == 105
    assert spawned_pool.submit(counted_here, "pickled_methods", "method").result(timeout=60) == 3
    assert spawned_pool.submit(counted_here, "pickled_methods", "static").result(timeout=60) == 1
    assert spawned_pool.submit(counted_here, "pickled_methods", "class").result(timeout=60) == 1


def test_a_pickled_function_unpickled_in_another_process_records_there(
    spawned_pool: ProcessPoolExecutor,
) -> None:
    data = pickle.dumps(quadruple)
    assert pickle.loads(data) is quadruple
    first = spawned_pool.submit(call_unpickled, data, 2).result(timeout=120)
    second = spawned_pool.submit(call_unpickled, data, 3).result(timeout=60)
    assert first[0] == 8 and second[0] == 12
    assert second[1] - first[1] == 1 and first[1] >= 1


# == The promise, attacked: a decorated call is never changed =====================================

KINDS = ("sync", "async", "generator", "async_generator")


class Custom(BaseException):
    """A BaseException the toolkit knows nothing of."""


class Loud(Exception):
    """An exception whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


RAISABLE: list[type[BaseException]] = [
    ValueError,
    KeyError,
    Loud,
    StopIteration,
    StopAsyncIteration,
    GeneratorExit,
    KeyboardInterrupt,
    SystemExit,
    asyncio.CancelledError,
    Custom,
    RecursionError,
    MemoryError,
]

results = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(),
    st.binary(),
    st.lists(st.integers(), max_size=3),
    st.builds(object),
)


def _observe(kind: str, func: Callable[..., Any]) -> tuple[str, Any, list[Any]]:
    """What the caller sees: ("returned", value, items) or ("raised", exception, items)."""
    seen: list[Any] = []

    async def drive_async() -> Any:
        if kind == "async":
            return await func()
        async for item in func():
            seen.append(item)
        return None

    try:
        if kind == "sync":
            value = func()
        elif kind == "generator":
            gen = func()
            while True:
                try:
                    seen.append(next(gen))
                except StopIteration as stop:
                    value = stop.value
                    break
        else:
            value = asyncio.run(drive_async())
    except BaseException as exc:
        return ("raised", exc, seen)
    return ("returned", value, seen)


def _same(left: tuple[str, Any, list[Any]], right: tuple[str, Any, list[Any]]) -> bool:
    if left[0] != right[0] or left[2] != right[2]:
        return False
    if left[0] == "returned":
        return left[1] is right[1] or left[1] == right[1]
    # Python may turn StopIteration into RuntimeError (PEP 479): same type, same cause.
    return type(left[1]) is type(right[1]) and (
        left[1] is right[1] or type(left[1].__cause__) is type(right[1].__cause__)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    result=results,
    raised=st.none() | st.sampled_from(RAISABLE),
    items=st.lists(st.integers() | st.text(max_size=3), max_size=3),
)
def test_results_and_exceptions_are_identical_and_counted(
    kind: str, result: Any, raised: type[BaseException] | None, items: list[Any]
) -> None:
    if kind == "async_generator":
        result = None  # an async generator returns nothing
    # asyncio itself formats an exception that ends asyncio.run, and after Loud's failure
    # every later asyncio.run in the thread fails: CPython's, not the toolkit's.
    assume(not (raised is Loud and kind in ("async", "async_generator")))
    exception = raised() if raised is not None else None
    inst = fresh()
    try:
        original = make_job(kind, result, exception, items)
        plain = _observe(kind, original)
        seen = _observe(kind, inst.monitored_analysis("m", "t")(original))
        assert _same(seen, plain), (seen, plain)
        if seen[0] == "returned":
            assert seen[1] is plain[1]  # the very object, not a copy
        reg = inst.registry
        assert active(reg) == 0
        if exception is None:
            assert outcomes(reg) == (1, 0, 0)
        else:
            # What reached the caller decides: an Exception is an error, the rest cancelled.
            final = seen[1]
            as_error = isinstance(final, Exception) and not isinstance(
                final, asyncio.CancelledError | GeneratorExit
            )
            assert outcomes(reg) == ((0, 1, 0) if as_error else (0, 0, 1))
            if as_error:
                assert analysis_errors(reg, type(final).__name__) == 1
        assert analysis_duration(reg, "count") == 1
    finally:
        inst.close()


class Echo:
    """A generator that answers what it is sent, handles ValueError, and returns a value."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    def run(self) -> Generator[Any, Any, str]:
        received: Any = None
        try:
            while True:
                try:
                    received = yield ("got", received)
                except ValueError as exc:
                    received = ("caught", exc.args)
                self.log.append(received)
                if received == "stop":
                    return "stopped"
                if received == "explode":
                    raise KeyError("exploded")
        finally:
            self.log.append("finally")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("next")),
        st.tuples(st.just("send"), st.sampled_from(["a", 1, None, "stop", "explode"])),
        st.tuples(st.just("throw"), st.sampled_from([ValueError, KeyError, StopIteration])),
        st.tuples(st.just("close")),
    ),
    max_size=8,
)


def _script(gen: Any, script: list[tuple[Any, ...]]) -> list[Any]:
    trace: list[Any] = []
    for step in script:
        try:
            if step[0] == "next":
                trace.append(("value", next(gen)))
            elif step[0] == "send":
                trace.append(("value", gen.send(step[1])))
            elif step[0] == "throw":
                trace.append(("value", gen.throw(step[1]("thrown"))))
            else:
                trace.append(("closed", gen.close()))
        except StopIteration as stop:
            trace.append(("stop", stop.value))
        except BaseException as exc:
            trace.append(("raised", type(exc), exc.args))
    return trace


@pytest.mark.usefixtures("frozen_heap")
@settings(max_examples=80, deadline=None)
@given(script=operations)
def test_send_throw_and_close_through_the_wrapper_behave_as_without_it(
    script: list[tuple[Any, ...]],
) -> None:
    inst = fresh()
    try:
        plain, decorated = Echo(), Echo()
        wrapped = inst.monitored_analysis("m", "t")(decorated.run)
        assert _script(wrapped(), script) == _script(plain.run(), script)
        assert decorated.log == plain.log
        gc.collect()
        reg = inst.registry
        # The job started with the first step that ran the body, and ended by now.
        trace = _script(Echo().run(), script)
        started = any(entry[0] == "value" for entry in trace)
        assert active(reg) == 0
        assert sum(outcomes(reg)) == (1 if started else 0)
    finally:
        inst.close()


@pytest.mark.usefixtures("frozen_heap")
@settings(max_examples=80, deadline=None)
@given(script=operations)
def test_the_same_script_through_an_item_observing_policy(script: list[tuple[Any, ...]]) -> None:
    inst = fresh()
    try:
        plain, decorated = Echo(), Echo()
        wrapped = inst.track_ai_call("openai", "gpt-4o")(decorated.run)
        trace = _script(wrapped(), script)
        assert trace == _script(plain.run(), script)
        assert decorated.log == plain.log
        gc.collect()
        reg = inst.registry
        assert reg.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0
        calls = sum(
            reg.get_sample_value(
                "codomyrmex_ai_api_calls_total",
                {"provider": "openai", "model": "gpt-4o", "status": status},
            )
            or 0.0
            for status in ("success", "error", "cancelled")
        )
        assert calls == (1 if any(entry[0] == "value" for entry in trace) else 0)
    finally:
        inst.close()


async def test_async_generator_asend_athrow_aclose_pass_through(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    log: list[Any] = []

    async def echo() -> AsyncGenerator[Any, Any]:
        received: Any = None
        try:
            while True:
                try:
                    received = yield ("got", received)
                except ValueError as exc:
                    received = ("caught", exc.args)
                log.append(received)
        finally:
            log.append("finally")

    wrapped = inst.monitored_analysis("m", "t")(echo)
    gen = wrapped()
    assert await gen.asend(None) == ("got", None)
    assert await gen.asend("x") == ("got", "x")
    assert await gen.athrow(ValueError("v")) == ("got", ("caught", ("v",)))
    await gen.aclose()
    assert log == ["x", ("caught", ("v",)), "finally"]
    assert outcomes(registry) == (0, 0, 1)
    unhandled = KeyError("k")
    gen = wrapped()
    await gen.__anext__()
    with pytest.raises(KeyError) as info:
        await gen.athrow(unhandled)
    assert info.value is unhandled
    assert outcomes(registry) == (0, 1, 1)
    assert active(registry) == 0


def test_stop_iteration_inside_a_decorated_generator_is_python_s_runtime_error(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    stop = StopIteration("inner")

    def leaky() -> Iterator[int]:
        yield 1
        raise stop

    wrapped = inst.monitored_analysis("m", "t")(leaky)
    gen = wrapped()
    assert next(gen) == 1
    with pytest.raises(RuntimeError, match="generator raised StopIteration") as info:
        next(gen)
    assert info.value.__cause__ is stop
    assert outcomes(registry) == (0, 1, 0)
    assert analysis_errors(registry, "RuntimeError") == 1


@settings(max_examples=60, deadline=None)
@given(
    module=st.text(min_size=1, max_size=30),
    analysis_type=st.text(min_size=1, max_size=30),
    project=st.text(min_size=1, max_size=30),
)
def test_any_label_text_records_and_exposes(module: str, analysis_type: str, project: str) -> None:
    inst = fresh()
    try:

        @inst.monitored_analysis(module, analysis_type, project=project, quality=lambda r: r)
        def score(x: float) -> float:
            return x

        assert score(7.5) == 7.5
        with inst.monitored_analysis(module, analysis_type) as job:
            job.record_quality(3.0, project=project)
        reg = inst.registry
        assert analyses(reg, "success", module, analysis_type) == 2
        assert active(reg, module) == 0
        assert (
            reg.get_sample_value(
                "codomyrmex_code_quality_score", {"project": project, "module": module}
            )
            == 3.0
        )
        generate_latest(reg)  # the text exposition can be written
    finally:
        inst.close()


# -- recursion to the limit: the deepest levels have no stack left to record on ---------------


@pytest.mark.parametrize("kind", ["sync", "async", "generator"])
def test_recursion_to_the_limit_through_a_decorated_function_loses_no_count(
    kind: str, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    levels: list[int] = []
    monitor = inst.monitored_analysis("m", "t")

    @monitor
    def down(n: int) -> int:
        levels.append(n)
        return down(n + 1)

    @monitor
    async def adown(n: int) -> int:
        levels.append(n)
        return await adown(n + 1)

    @monitor
    def gdown(n: int) -> Iterator[int]:
        levels.append(n)
        yield from gdown(n + 1)

    with pytest.raises(RecursionError):
        if kind == "sync":
            down(0)
        elif kind == "async":
            asyncio.run(adown(0))
        else:
            list(gdown(0))
    assert len(levels) > 50
    assert active(registry) == 0
    failed = analyses(registry, "error")
    # Every level that ran is one error; the call that could not enter its function may be
    # one more.
    assert failed in (len(levels), len(levels) + 1)
    assert analysis_errors(registry, "RecursionError") == failed
    assert analysis_duration(registry, "count") == failed
    assert outcomes(registry) == (0, failed, 0)


def test_an_end_left_for_later_is_in_the_next_snapshot(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # What the engine queues when it has no stack to record on (see the test above): a
    # read of the registry, a scrape or a push records it first.
    from instrument._jobs import defer, record_end

    monitor = inst.monitored_analysis("m", "t")
    probe = monitor.start(None, (), {})
    assert active(registry) == 1
    defer(functools.partial(record_end, probe, RecursionError("too deep")))
    assert active(registry) == 0
    assert outcomes(registry) == (0, 1, 0)
    assert analysis_errors(registry, "RecursionError") == 1
    assert b"codomyrmex_analyses_total" in generate_latest(registry)


# -- fault injection: policy callables that raise or return garbage ------------------------------


class Unfloatable(float):
    def __float__(self) -> float:
        raise ArithmeticError("no float")


GARBAGE = [
    None,
    "high",
    b"90",
    float("nan"),
    True,
    10**400,
    object(),
    [90],
    Unfloatable(1.0),
]


def _raiser(exc: BaseException) -> Callable[..., Any]:
    def raising(*_: Any) -> Any:
        raise exc

    return raising


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"project": _raiser(LookupError("p"))}, id="project-raises"),
        pytest.param({"project": _raiser(Loud())}, id="project-raises-unprintable"),
        pytest.param({"project": lambda a: 42}, id="project-returns-int"),
        pytest.param({"project": lambda a: ""}, id="project-returns-empty"),
        pytest.param({"project": lambda a: None}, id="project-returns-none"),
        pytest.param({"quality": _raiser(ZeroDivisionError())}, id="quality-raises"),
        pytest.param({"quality": _raiser(Loud())}, id="quality-raises-unprintable"),
        *(
            pytest.param({"quality": lambda r, g=g: g}, id=f"quality-returns-{i}")
            for i, g in enumerate(GARBAGE)
        ),
    ],
)
def test_misbehaving_policy_callables_never_change_the_call(
    kind: str, bad: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    inst = fresh()
    try:
        options: dict[str, Any] = {"project": "p", "quality": lambda r: 50.0, **bad}
        result = object() if kind != "async_generator" else None
        failure = OSError("the job's own")
        ok = inst.monitored_analysis("m", "t", **options)(make_job(kind, result, None, [1]))
        failing = inst.monitored_analysis("m", "t", **options)(make_job(kind, None, failure, [1]))
        items = [1] if kind in ("generator", "async_generator") else []
        with caplog.at_level(logging.WARNING, logger="instrument"):
            assert _observe(kind, ok) == ("returned", result, items)
            assert _observe(kind, failing) == ("raised", failure, items)
        reg = inst.registry
        assert outcomes(reg) == (1, 1, 0)
        assert active(reg) == 0
        assert analysis_errors(reg, "OSError") == 1
        # Each case breaks the project or the score: no score is recorded, and nothing else.
        score = reg.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "p", "module": "m"}
        )
        assert score is None
    finally:
        inst.close()


# -- fault injection into every hook, on the paths that read what a call returns ---------------

#: (kind of what the caller drives, a factory of the layer over that work)
LAYERED = {
    "wraps-over-async": ("async", _passthrough),
    "wraps-over-generator": ("generator", _passthrough),
    "wraps-over-async-generator": ("async_generator", _passthrough),
    "callable-instance-over-async": (
        "async",
        lambda job: type("Call", (), {"__call__": staticmethod(job)})(),
    ),
    "partial-of-generator": ("generator", functools.partial),
}


@pytest.mark.parametrize("layer", list(LAYERED))
@pytest.mark.parametrize("hook", ["start", "success", "error", "item", "deliver"])
@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
async def test_failing_hooks_never_change_a_layered_call(
    layer: str, hook: str, raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    kind, make_layer = LAYERED[layer]
    result = object() if kind != "async_generator" else None
    failure = LookupError("the job's own") if raises else None
    job = make_job(kind, None if raises else result, failure)
    policy = ScriptedPolicy(hook)
    with caplog.at_level(logging.ERROR, logger="instrument"):
        seen = await outcome(kind, policy(make_layer(job)))
    assert seen == await outcome(kind, job)
    assert seen[1] is (failure if raises else result)
    failures = guard_records(caplog)
    assert len(failures) == policy.names().count(hook)
    assert all(GUARD_TEXT[hook] in r.getMessage() for r in failures)
    if hook == "start":
        assert policy.events == [("start",)]
    else:
        end = "error" if raises else "success"
        assert policy.names().count(end) == 1
        assert policy.names()[-2:] == [end, "deliver"]


# -- the same decorated function from many threads and tasks ------------------------------------


def test_one_decorated_function_from_many_threads_counts_exactly(
    inst: Instrumentation, registry: CollectorRegistry, fast_switching: None
) -> None:
    @inst.monitored_analysis("m", "t")
    def work(i: int) -> int:
        if i % 7 == 0:
            raise ArithmeticError(i)
        return i

    def run(i: int) -> int:
        try:
            return work(i)
        except ArithmeticError:
            return -1

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(run, range(4000)))
    assert got == [(-1 if i % 7 == 0 else i) for i in range(4000)]
    failures = len(range(0, 4000, 7))
    assert outcomes(registry) == (4000 - failures, failures, 0)
    assert analysis_duration(registry, "count") == 4000
    assert active(registry) == 0


def test_one_decorated_async_function_and_generator_from_tasks_in_many_threads(
    inst: Instrumentation, registry: CollectorRegistry, fast_switching: None
) -> None:
    monitor = inst.monitored_analysis("m", "t")

    @monitor
    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        if i % 5 == 0:
            raise ConnectionError(i)
        return i

    @monitor
    def chunks(n: int) -> Iterator[int]:
        yield from range(n)

    async def many() -> int:
        done = await asyncio.gather(*(fetch(i) for i in range(200)), return_exceptions=True)
        return sum(1 for d in done if isinstance(d, ConnectionError))

    def in_thread(_: int) -> int:
        assert list(chunks(3)) == [0, 1, 2]
        return asyncio.run(many())

    with ThreadPoolExecutor(6) as pool:
        failed = sum(pool.map(in_thread, range(12)))
    assert failed == 12 * 40
    assert outcomes(registry) == (12 * 160 + 12, 12 * 40, 0)
    assert active(registry) == 0


def test_a_generator_closed_early_or_collected_mid_iteration(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    finalized: list[int] = []

    @inst.monitored_analysis("m", "t")
    def numbers(tag: int) -> Generator[int, None, None]:
        try:
            yield from range(100)
        finally:
            finalized.append(tag)

    closed = numbers(1)
    assert next(closed) == 0
    closed.close()
    dropped = numbers(2)
    assert next(dropped) == 0 and next(dropped) == 1
    del dropped
    gc.collect()
    never_started = numbers(3)
    del never_started
    gc.collect()
    assert finalized == [1, 2]
    assert outcomes(registry) == (0, 0, 2)
    assert active(registry) == 0


def test_a_coroutine_closed_before_its_first_await_records_nothing(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # A coroutine made and closed without being awaited: no job ran, none is open.
    @inst.monitored_analysis("m", "t")
    async def job() -> int:
        return 1

    pending: Coroutine[Any, Any, int] = job()
    pending.close()
    assert outcomes(registry) == (0, 0, 0)
    assert active(registry) in (None, 0)


# == Wave 3: the reviewers' confirmed defects =====================================================


async def test_a_plain_function_returning_a_coroutine_spans_the_awaited_work(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    # A plain def handing on a coroutine (``return client.create(...)``): the job is the
    # awaited work, its error and its time, not the coroutine's creation.
    @inst.monitored_analysis("m", "t")
    def hands_on(x: int) -> Coroutine[Any, Any, int]:
        return _failing_work(x)

    pending = hands_on(4)
    assert inspect.iscoroutine(pending)
    assert outcomes(registry) == (0, 0, 0) and active(registry) == 1
    assert await pending == 8
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(10.0)
    with pytest.raises(ValueError) as info:
        await hands_on(-1)
    assert info.value.args == (-1,)
    assert outcomes(registry) == (1, 1, 0)
    assert analysis_errors(registry, "ValueError") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(20.0)
    assert active(registry) == 0


def test_a_returned_coroutine_never_awaited_ends_cancelled(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.monitored_analysis("m", "t")
    def hands_on(x: int) -> Coroutine[Any, Any, int]:
        return _failing_work(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the carrier was never awaited
        pending = hands_on(1)
        assert active(registry) == 1
        del pending
        gc.collect()
    assert outcomes(registry) == (0, 0, 1)
    assert active(registry) == 0


class _Client:
    def ask(self, model: str, prompt: str) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    def run(self, path: str) -> str:
        return path


def _models_called(reg: CollectorRegistry) -> set[str]:
    return {
        sample.labels["model"]
        for family in reg.collect()
        for sample in family.samples
        if sample.name == "codomyrmex_ai_api_calls_total"
    }


def test_a_decorated_bound_method_binds_arguments_by_its_own_signature(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # The signature of a bound method has no ``self``: the call's arguments line up with
    # it as they are, whether the model comes by position or by keyword.
    ask = inst.track_ai_call("openai", None)(_Client().ask)
    ask("gpt-4o", "hi")
    ask(model="gpt-4o-mini", prompt="hi")
    assert _models_called(registry) == {"gpt-4o", "gpt-4o-mini"}

    scored = inst.monitored_analysis(
        "m", "t", project=lambda arguments: arguments.get("path", "NONE"), quality=lambda r: 1.0
    )
    assert scored(_Client().run)("src") == "src"
    assert scored(_Client.run)(_Client(), "lib") == "lib"  # a function: self is an argument
    for project in ("src", "lib"):
        value = registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": project, "module": "m"}
        )
        assert value == 1.0
    assert (
        registry.get_sample_value(
            "codomyrmex_code_quality_score", {"project": "NONE", "module": "m"}
        )
        is None
    )


@types.coroutine
def _legacy_work(x: int) -> Generator[Any, None, int]:
    """A generator-based coroutine: awaitable, and a generator to whoever iterates it."""
    yield from _failing_work(0)  # type: ignore[misc]  # suspends on the event loop
    analysis_module.perf_counter.now += 5.0  # type: ignore[attr-defined]
    if x < 0:
        raise ValueError(x)
    return x * 3


@pytest.mark.parametrize(
    "shape", ["function", "partial", "wraps"], ids=["function", "partial", "wraps"]
)
async def test_a_generator_based_coroutine_stays_awaitable_and_is_timed_over_the_await(
    shape: str, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    # rev-ai 14: a @types.coroutine generator function, decorated, gave a plain generator
    # that cannot be awaited.
    original: Callable[..., Any] = {
        "function": lambda: _legacy_work,
        "partial": lambda: functools.partial(_legacy_work),
        "wraps": lambda: _passthrough(_legacy_work),
    }[shape]()
    wrapped = inst.monitored_analysis("m", "t")(original)
    pending = wrapped(4)
    assert inspect.isawaitable(pending) and inspect.isgenerator(pending)  # as undecorated
    assert outcomes(registry) == (0, 0, 0)  # making it is not the job
    assert await asyncio.ensure_future(pending) == 12  # a task takes it too
    assert outcomes(registry) == (1, 0, 0)
    assert analysis_duration(registry, "sum") == pytest.approx(15.0)  # the awaited work
    with pytest.raises(ValueError) as info:
        await wrapped(-1)
    assert info.value.args == (-1,)
    assert outcomes(registry) == (1, 1, 0)
    assert analysis_errors(registry, "ValueError") == 1
    assert analysis_duration(registry, "sum") == pytest.approx(30.0)
    assert active(registry) == 0


def _is_async_callable(obj: Any) -> bool:
    """Starlette's ``is_async_callable`` (starlette._utils), how ASGI frameworks decide."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(obj.__call__)
    )


@pytest.mark.parametrize("shape", [*ASYNC_SHAPES, "async-def"])
async def test_a_coroutine_kind_proxy_looks_async_to_frameworks(
    shape: str, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    # rev-ai 10: a decorated callable instance answered False where the undecorated one
    # answers True, so a framework ran it as sync and got a coroutine back.
    original = _failing_work if shape == "async-def" else ASYNC_SHAPES[shape]()
    wrapped = inst.monitored_analysis("m", "t")(original)
    assert _is_async_callable(wrapped) == _is_async_callable(original)
    if inspect.iscoroutinefunction(type(original).__call__):  # a callable instance
        assert inspect.iscoroutinefunction(wrapped.__call__)
        assert asyncio.iscoroutinefunction(wrapped.__call__)
    assert await wrapped(3) == 6
    assert outcomes(registry) == (1, 0, 0)
