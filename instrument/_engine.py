"""The one wrapping engine: sync, async, generator and async-generator functions, and with-blocks.

A decorator is an :class:`Instrumenter` subclass that only says what to record: its
``start()`` returns a :class:`Probe` for one job, and the engine calls the probe's
``success`` / ``error`` / ``cancel`` exactly once, then ``deliver``. The engine guards every
probe call, so a failure in recording is logged and never reaches the wrapped function.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import AsyncGeneratorType, CoroutineType, GeneratorType, TracebackType
from typing import Any, Generic, TypeVar

from ._proxy import (
    ASYNC_GENERATOR,
    BY_RESULT,
    COROUTINE,
    GENERATOR,
    InstrumentedFunction,
    Wrapper,
    kind_of,
)
from ._with_blocks import OpenEntries, caller_frame

__all__ = ["Instrumenter", "Probe", "bind_arguments", "record_deferred_ends"]

logger = logging.getLogger("instrument")

P = TypeVar("P", bound="Probe")
F = TypeVar("F", bound=Callable[..., Any])

# Exceptions that end a job as "cancelled" rather than "error".
CANCELLING: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)


class Probe:
    """One job in flight. Subclasses record; the engine decides when each method runs."""

    __slots__ = ()

    def success(self, result: Any) -> Any:
        """The job returned ``result``; return what the caller should receive."""
        return result

    def error(self, exc: BaseException) -> None:
        """The job raised ``exc`` (an Exception); the engine re-raises it unchanged."""

    def cancel(self) -> None:
        """The job was cancelled, interrupted, or a generator was closed early."""

    def item(self, value: Any) -> None:
        """A generator job yielded ``value``; called only when the policy sets
        ``Instrumenter.observes_items`` (it costs a call per item)."""

    #: After the job ended, in sync code: a callable handing the new state to delivery,
    #: or None when there is nothing to deliver. (An attribute, not a method, so a probe
    #: can hold the delivery's bound method directly: one call less per job.)
    deliver: Callable[[], None] | None = None

    def deliver_async(self) -> Awaitable[None] | None:
        """After the job ended, in async code: an awaitable to await, or None."""
        if self.deliver is not None:
            self.deliver()
        return None


def _guard(what: str) -> None:
    logger.exception("instrument: %s failed; the instrumented call is unaffected", what)


def _probe_success(probe: Probe, result: Any) -> Any:
    try:
        return probe.success(result)
    except Exception:
        _guard("recording a result")
        return result


def _end_and_deliver(probe: Probe, exc: BaseException) -> None:
    _probe_end(probe, exc)
    try:  # noqa: SIM105 - no helper frames here: this may run at the recursion limit
        _deliver(probe)
    except RecursionError:  # no room left to deliver: the next delivery carries this end
        pass


def _probe_end(probe: Probe, exc: BaseException | None) -> None:
    """Record an exception end: ``error`` for an Exception, ``cancel`` for the rest.

    A RecursionError escaping from here means nothing was recorded: the caller queues the
    end in ``_too_deep`` (it ran out of stack before it could record anything).
    """
    if type(exc) is RecursionError and not _has_room():
        _too_deep.put((probe, exc))
        return
    _record_end(probe, exc)
    if not _too_deep.empty():
        record_deferred_ends()


def _record_end(probe: Probe, exc: BaseException | None) -> None:
    try:
        if exc is None or isinstance(exc, CANCELLING) or not isinstance(exc, Exception):
            probe.cancel()
        else:
            probe.error(exc)
    except Exception:
        _guard("recording an exception")


# -- ends recorded later: too close to the recursion limit to be recorded where they happened --
# A function that recursed until RecursionError is left by every decorated level of that
# recursion, the deepest ones with no stack to record on. Those ends wait here and are recorded
# by the next end with room (the shallower levels, as the error unwinds), and before every
# snapshot (a push, a scrape, a read of the registry): no count is lost, no job left open.

#: Frames that recording an end may need: the probe, prometheus_client, the guard's logging.
_HEADROOM = 60
_too_deep: queue.SimpleQueue[tuple[Probe, BaseException]] = queue.SimpleQueue()


def _room(depth: int) -> None:
    if depth:
        _room(depth - 1)


def _has_room() -> bool:
    try:
        _room(_HEADROOM)
    except RecursionError:
        return False
    return True


def record_deferred_ends() -> None:
    """Record the job ends that came too close to the recursion limit to be recorded where
    they happened (never raises)."""
    while not _too_deep.empty() and _has_room():
        try:
            probe, exc = _too_deep.get_nowait()
        except queue.Empty:
            return
        _record_end(probe, exc)


def _probe_item(probe: Probe, value: Any) -> None:
    try:
        probe.item(value)
    except Exception:
        _guard("recording an item")


def _observe(gen: Generator[Any, Any, Any], probe: Probe) -> Generator[Any, Any, Any]:
    """Delegate to ``gen`` like ``yield from``, telling the probe about each item."""
    send: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            item = gen.throw(thrown) if thrown is not None else gen.send(send)
        except StopIteration as stop:
            return stop.value
        thrown = None
        _probe_item(probe, item)
        try:
            send = yield item
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            thrown = exc


def _deliver(probe: Probe) -> None:
    try:
        deliver = probe.deliver
        if deliver is not None:
            deliver()
    except Exception:
        _guard("delivery")


async def _adeliver(probe: Probe) -> None:
    try:
        waiter = probe.deliver_async()
        if waiter is not None:
            await waiter
    except Exception:
        _guard("delivery")


def bind_arguments(
    signature: inspect.Signature | None,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The call's arguments by parameter name, as ``BoundArguments.arguments`` gives them.

    ``wrapped`` is a bound method when a decorated method is called through an instance
    or class; its ``self``/``cls`` is put back so names line up with the signature.
    """
    if signature is None:
        return {}
    if inspect.ismethod(wrapped):
        args = (wrapped.__self__, *args)
    try:
        return dict(signature.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return {}


Start = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Probe]


# -- one wrapper per kind of function, in wrapt's (wrapped, instance, args, kwargs) form ----------
# ``instance`` is never used: wrapt hands over a bound method for method access, and
# ``bind_arguments`` reads ``self`` from it.
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
        _guard("starting a job")
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
        _end_and_deliver(probe, GeneratorExit())  # first: closing runs the caller's code
        if isinstance(work, CoroutineType | GeneratorType):
            work.close()


def _sync_wrapper(start: Start) -> Wrapper:
    def call_sync(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # The hot path: the guards are inlined rather than helpers.
        try:
            probe = start(wrapped, args, kwargs)
        except Exception:
            _guard("starting a job")
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            try:
                _end_and_deliver(probe, exc)
            except RecursionError:  # no stack even to begin recording: see _too_deep
                _too_deep.put((probe, exc))
            raise
        try:
            result = probe.success(result)
        except Exception:
            _guard("recording a result")
        try:
            deliver = probe.deliver
            if deliver is not None:
                deliver()
        except Exception:
            _guard("delivery")
        return result

    return call_sync


# The jobs that outlive the call: each takes ``work`` (what the call made, or
# _CALL_AT_START), whether to report items, and what starts its probe.


async def _awaited_job(
    work: Any,
    observed: bool,
    start: Start,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    probe = _start_guarded(start, wrapped, args, kwargs)
    if probe is None:
        return await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    try:
        result = await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    except BaseException as exc:
        try:
            _probe_end(probe, exc)
        except RecursionError:  # nothing recorded: see _too_deep
            _too_deep.put((probe, exc))
        else:
            try:  # noqa: SIM105 - no helper frames: this may run at the recursion limit
                await _adeliver(probe)
            except RecursionError:  # the next delivery carries this end
                pass
        raise
    result = _probe_success(probe, result)
    await _adeliver(probe)
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
        value = yield from (_observe(work, probe) if observed else work)
    except BaseException as exc:
        try:
            _end_and_deliver(probe, exc)
        except RecursionError:  # see _too_deep
            _too_deep.put((probe, exc))
        raise
    _probe_success(probe, value)
    _deliver(probe)
    return value


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
        while True:
            try:
                if thrown is not None:
                    item = await work.athrow(thrown)
                else:
                    item = await work.asend(sent)
            except StopAsyncIteration:
                break
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
        if probe is not None:
            try:
                _probe_end(probe, exc)
            except RecursionError:  # nothing recorded: see _too_deep
                _too_deep.put((probe, exc))
            else:
                try:  # noqa: SIM105 - no helper frames: this may run at the recursion limit
                    await _adeliver(probe)
                except RecursionError:  # the next delivery carries this end
                    pass
        raise
    if probe is not None:
        _probe_success(probe, None)
        await _adeliver(probe)


Job = Callable[[Any, bool, Start, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def _async_wrapper(start: Start) -> Wrapper:
    def call_async(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return _awaited_job(_CALL_AT_START, False, start, wrapped, args, kwargs)

    return call_async


def _generator_wrapper(start: Start, job: Job, observed: bool) -> Wrapper:
    """For a (async) generator function: called now, its job runs as it is iterated."""

    def call_generator(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            work = wrapped(*args, **kwargs)
        except BaseException as exc:  # not even a generator: a job that failed at once
            probe = _start_guarded(start, wrapped, args, kwargs)
            if probe is not None:
                _end_and_deliver(probe, exc)
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

    def call_by_result(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        probe = _start_guarded(start, wrapped, args, kwargs)
        if probe is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            try:
                _end_and_deliver(probe, exc)
            except RecursionError:  # see _too_deep
                _too_deep.put((probe, exc))
            raise
        job: Job | None = None
        if isinstance(result, CoroutineType):
            job = _awaited_job
        elif isinstance(result, GeneratorType):
            job = _generator_job
        elif isinstance(result, AsyncGeneratorType):
            job = _async_generator_job
        if job is not None:
            return job(result, observed, _Handover(probe, result), wrapped, args, kwargs)
        result = _probe_success(probe, result)
        _deliver(probe)
        return result

    return call_by_result


def _wrapper_for(func: Any, start: Start, observed: bool) -> Wrapper:
    kind = kind_of(func)
    if kind == COROUTINE:
        return _async_wrapper(start)
    if kind == GENERATOR:
        return _generator_wrapper(start, _generator_job, observed)
    if kind == ASYNC_GENERATOR:
        return _generator_wrapper(start, _async_generator_job, observed)
    if kind == BY_RESULT:
        return _by_result_wrapper(start, observed)
    return _sync_wrapper(start)


class Instrumenter(Generic[P]):
    """Base of every decorator: used as ``@it`` on a function, or as a (async) with-block.

    Subclasses implement :meth:`start`. One with-block object may be used from many
    threads and tasks at once, nested, and exited in another context than the enter's:
    each exit ends exactly one open entry (see ``_with_blocks``).
    """

    def __init__(self) -> None:
        self._entries: OpenEntries[P] = OpenEntries(f"instrument-{type(self).__name__}")

    #: Call ``Probe.item`` for each value a wrapped generator yields.
    observes_items = False

    def null_probe(self) -> P:
        """A probe that records nothing: used when disabled or when start() failed."""
        raise NotImplementedError

    def start(
        self, wrapped: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> P:
        """Begin one job (``wrapped`` is None in a with-block) and return its probe."""
        raise NotImplementedError

    def prepare(self, func: Callable[..., Any]) -> None:
        """Called once at decoration time with the function being wrapped."""

    def starter(self, func: Callable[..., Any]) -> Start:
        """The ``start`` that decorated ``func`` calls: a policy can pick a leaner one, or
        one holding what it learnt about ``func``, at decoration time (after prepare)."""
        return self.start

    # -- decorator ---------------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        if not callable(func) and not isinstance(func, classmethod | staticmethod):
            raise TypeError(
                f"{type(self).__name__} decorates a function; got {type(func).__name__}. "
                "Call it with its arguments first: @decorator(...), then apply it."
            )
        target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
        self.prepare(target)
        wrapper = _wrapper_for(target, self.starter(target), self.observes_items)
        proxy: F = InstrumentedFunction(func, wrapper)  # type: ignore[assignment]
        return proxy

    # -- with-block --------------------------------------------------------------------------

    def _push(self, frame: int) -> P:
        try:
            probe = self.start(None, (), {})
        except Exception:
            _guard("starting a job")
            probe = self.null_probe()
        self._entries.push(probe, frame)
        return probe

    def _exit(self, exc: BaseException | None, frame: int) -> P | None:
        probe = self._entries.pop(frame)
        if probe is None:
            return None
        if exc is None:
            _probe_success(probe, None)
        else:
            _probe_end(probe, exc)
        return probe

    def __enter__(self) -> P:
        return self._push(caller_frame())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        probe = self._exit(exc, caller_frame())
        if probe is not None:
            _deliver(probe)

    async def __aenter__(self) -> P:
        return self._push(caller_frame())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        probe = self._exit(exc, caller_frame())
        if probe is not None:
            await _adeliver(probe)


def wraps_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature used to bind a call's arguments, or None where it cannot be read."""
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None
