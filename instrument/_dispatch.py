"""What a decorated call does: one wrapper per kind of function (sync, coroutine,
generator, async generator, and a sync layer over one of those), and the jobs that outlive
the call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from functools import partial
from inspect import CO_ITERABLE_COROUTINE
from types import AsyncGeneratorType, CoroutineType, GeneratorType, coroutine
from typing import Any

from ._jobs import (
    Probe,
    aend_job,
    collector_closing,
    defer,
    end_job,
    end_outside,
    post_job_async,
    record_end,
    record_success,
    report_failure,
)
from ._proxy import ASYNC_GENERATOR, BY_RESULT, COROUTINE, GENERATOR, Wrapper, kind_of
from ._tracing import enter, leave

__all__ = ["Start", "wrapper_for"]

Start = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Probe]


def _probe_item(probe: Probe, value: Any) -> None:
    try:
        probe.item(value)
    except Exception:
        report_failure("recording an item")


def _observe(
    gen: Generator[Any, Any, Any], probe: Probe, observed: bool
) -> Generator[Any, Any, Any]:
    """Delegate to ``gen`` like ``yield from``, telling the probe about each item
    (``observed``), with the job's span current while ``gen`` runs (not between its steps:
    then the caller's code runs)."""
    send: Any = None
    thrown: BaseException | None = None
    span = probe.span
    while True:
        token = None if span is None else enter(span)
        try:
            item = gen.throw(thrown) if thrown is not None else gen.send(send)
        except StopIteration as stop:
            return stop.value
        finally:
            if token is not None:
                leave(token)
        thrown = None
        if observed:
            _probe_item(probe, item)
        try:
            send = yield item
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            thrown = exc


# -- one wrapper per kind of function: called with the undecorated callable, then the call's ----
# arguments. For method access that callable is the bound method, and ``bind_arguments``
# reads ``self`` from it.
#
# A job starts at the first await or next(): a coroutine or generator never started records
# nothing. A generator function is called when the wrapper is, as Python does (a TypeError
# for its arguments is raised at the call); a coroutine function only at the first await,
# inside the wrapper's coroutine: one made at the call would warn "never awaited" when the
# caller closes the wrapper's coroutine unstarted (a task cancelled before it ran).

#: ``work`` for a job that calls its function itself, at its first step.
_CALL_AT_START: Any = object()


def _start_guarded(
    start: Start, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Probe | None:
    try:
        return start(wrapped, args, kwargs)
    except Exception:
        report_failure("starting a job")
        return None


class _Handover:
    """A job that a sync call started, handed to the coroutine or generator carrying it on,
    as that one's ``start``. If the carrier is collected before its first step (never
    awaited or iterated), the job ends as cancelled and the work it carries is closed, so
    it does not warn "never awaited" on the caller's behalf."""

    __slots__ = ("probe", "work")

    def __init__(self, probe: Probe, work: Any) -> None:
        self.probe: Probe | None = probe
        self.work = work

    def __call__(self, wrapped: Any, args: Any, kwargs: Any) -> Probe:
        probe = self.probe
        assert probe is not None  # a carrier takes its job once, at its first step
        self.probe = self.work = None
        return probe

    def __del__(self) -> None:
        probe, work = self.probe, self.work
        if probe is None:
            return
        self.probe = self.work = None
        # From the garbage collector: recorded at the next safe point, not here.
        end_outside(probe, GeneratorExit())
        if isinstance(work, CoroutineType | GeneratorType):
            work.close()


def _sync_wrapper(start: Start) -> Wrapper:
    def call_sync(wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        # The hot path: the guards are inlined rather than helpers.
        try:
            probe = start(wrapped, args, kwargs)
        except Exception:
            report_failure("starting a job")
            return wrapped(*args, **kwargs)
        span = probe.span
        token = None if span is None else enter(span)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                leave(token)
            try:
                end_job(probe, exc)
            except RecursionError:  # no stack even to begin recording: see _jobs
                defer(partial(record_end, probe, exc))
            raise
        if token is not None:
            leave(token)
        # A plain def may hand on a coroutine (``return client.create(...)``): the job is
        # the awaited work. One exact type check keeps the hot path as it was.
        if type(result) is CoroutineType:
            return _awaited_job(result, _Handover(probe, result), wrapped, *args, **kwargs)
        try:
            result = probe.success(result)
        except Exception:
            report_failure("recording a result")
        try:
            after = probe.after_job
            if after is not None:
                after()
        except Exception:
            report_failure("delivery")
        return result

    return call_sync


# The jobs that outlive the call: each takes ``work`` (what the call made, or
# _CALL_AT_START) and what starts its probe; a generator's job also whether to report items.


async def _awaited_job(
    work: Any, start: Start, wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """The job of a coroutine: its own wrapper is a partial of this (``_async_wrapper``),
    so a decorated object's ``__call__`` is seen as a coroutine function, as the
    undecorated one's is (frameworks check ``inspect.iscoroutinefunction(obj.__call__)``).
    """
    # The hot path of coroutines: the guards inlined, as in call_sync.
    try:
        probe = start(wrapped, args, kwargs)
    except Exception:
        report_failure("starting a job")
        return await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    span = probe.span
    token = None if span is None else enter(span)
    try:
        result = await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    except BaseException as exc:
        if token is not None:
            leave(token)
        if collector_closing(exc):
            end_outside(probe, exc)
            raise
        try:
            await aend_job(probe, exc)
        except RecursionError:  # nothing recorded: see _jobs
            defer(partial(record_end, probe, exc))
        raise
    if token is not None:
        leave(token)
    try:
        result = probe.success(result)
    except Exception:
        report_failure("recording a result")
    # Not ``await aend_job(probe)``: that is a second coroutine per call, to await nothing.
    waiter = post_job_async(probe)
    if waiter is not None:
        await waiter
    return result


def _generator_job(
    work: Generator[Any, Any, Any],
    observed: bool,
    start: Start,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    probe = _start_guarded(start, wrapped, args, kwargs)
    if probe is None:
        return (yield from work)
    try:
        value = yield from (_observe(work, probe, observed) if observed or probe.span else work)
    except BaseException as exc:
        if collector_closing(exc):
            end_outside(probe, exc)
            raise
        try:
            end_job(probe, exc)
        except RecursionError:  # see _jobs
            defer(partial(record_end, probe, exc))
        raise
    record_success(probe, value)
    end_job(probe)
    return value


@coroutine
def _iterable_coroutine_job(
    work: Generator[Any, Any, Any],
    observed: bool,
    start: Start,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    """A generator-based coroutine's job (``@types.coroutine``): awaitable as the work it
    carries is, and timed over the await. What the work yields goes to the event loop: no
    items to report."""
    return (yield from _generator_job(work, False, start, wrapped, args, kwargs))


def _any_generator_job(
    work: Any,
    observed: bool,
    start: Start,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The job for a generator: one that is a generator-based coroutine stays awaitable."""
    if isinstance(work, GeneratorType) and work.gi_code.co_flags & CO_ITERABLE_COROUTINE:
        return _iterable_coroutine_job(work, observed, start, wrapped, args, kwargs)
    return _generator_job(work, observed, start, wrapped, args, kwargs)


async def _async_generator_job(
    work: AsyncGenerator[Any, Any],
    observed: bool,
    start: Start,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Any, Any]:
    probe = _start_guarded(start, wrapped, args, kwargs)
    try:
        sent: Any = None
        thrown: BaseException | None = None
        span = None if probe is None else probe.span
        while True:
            # The span is current while the generator runs, not between its steps.
            token = None if span is None else enter(span)
            try:
                if thrown is not None:
                    item = await work.athrow(thrown)
                else:
                    item = await work.asend(sent)
            except StopAsyncIteration:
                break
            finally:
                if token is not None:
                    leave(token)
            thrown = None
            if observed and probe is not None:
                _probe_item(probe, item)
            try:
                sent = yield item
            except GeneratorExit:
                await work.aclose()
                raise
            except BaseException as exc:
                thrown = exc
    except BaseException as exc:
        if probe is not None and collector_closing(exc):
            end_outside(probe, exc)
        elif probe is not None:
            try:
                await aend_job(probe, exc)
            except RecursionError:  # nothing recorded: see _jobs
                defer(partial(record_end, probe, exc))
        raise
    if probe is not None:
        record_success(probe, None)
        await aend_job(probe)


Job = Callable[[Any, bool, Start, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def _async_wrapper(start: Start) -> Wrapper:
    # A partial, not a closure: partials of partials flatten, so the proxy's ``__call__``
    # (``partial(wrapper, wrapped)``) is a partial of the coroutine function itself.
    return partial(_awaited_job, _CALL_AT_START, start)


def _generator_wrapper(start: Start, job: Job, observed: bool) -> Wrapper:
    """For a (async) generator function: called now, its job runs as it is iterated."""

    def call_generator(wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            work = wrapped(*args, **kwargs)
        except BaseException as exc:  # not even a generator: a job that failed at once
            probe = _start_guarded(start, wrapped, args, kwargs)
            if probe is not None:
                end_job(probe, exc)
            raise
        return job(work, observed, start, wrapped, args, kwargs)

    return call_generator


def _by_result_wrapper(start: Start, observed: bool) -> Wrapper:
    """For a sync callable over async or generator work (``BY_RESULT``).

    The job starts before the call, as for any sync function: the call may do the whole
    work itself (a sync runner of a coroutine function). If it returns a coroutine or a
    (async) generator instead, the job goes on until that one ends, and the caller gets a
    carrier of the same kind. Other results (a Future, a custom awaitable) are returned as
    they are, as a sync job's result: replacing them would change what the caller holds.
    """

    def call_by_result(wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        probe = _start_guarded(start, wrapped, args, kwargs)
        if probe is None:
            return wrapped(*args, **kwargs)
        span = probe.span
        token = None if span is None else enter(span)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            if token is not None:
                leave(token)
            try:
                end_job(probe, exc)
            except RecursionError:  # see _jobs
                defer(partial(record_end, probe, exc))
            raise
        if token is not None:
            leave(token)
        if isinstance(result, CoroutineType):
            return _awaited_job(result, _Handover(probe, result), wrapped, *args, **kwargs)
        job: Job | None = None
        if isinstance(result, GeneratorType):
            job = _any_generator_job
        elif isinstance(result, AsyncGeneratorType):
            job = _async_generator_job
        if job is not None:
            return job(result, observed, _Handover(probe, result), wrapped, args, kwargs)
        result = record_success(probe, result)
        end_job(probe)
        return result

    return call_by_result


def wrapper_for(func: Any, start: Start, observed: bool) -> Wrapper:
    """The wrapper a decorated ``func`` calls: the one for what calling it produces."""
    kind = kind_of(func)
    if kind == COROUTINE:
        return _async_wrapper(start)
    if kind == GENERATOR:
        return _generator_wrapper(start, _any_generator_job, observed)
    if kind == ASYNC_GENERATOR:
        return _generator_wrapper(start, _async_generator_job, observed)
    if kind == BY_RESULT:
        return _by_result_wrapper(start, observed)
    return _sync_wrapper(start)
