"""The one wrapping engine: sync, async, generator and async-generator functions, and with-blocks.

A decorator is an :class:`Instrumenter` subclass that only says what to record: its
``start()`` returns a :class:`Probe` for one job, and the engine calls the probe's
``success`` / ``error`` / ``cancel`` exactly once, then ``deliver``. The engine guards every
probe call, so a failure in recording is logged and never reaches the wrapped function.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import inspect
import logging
import pickle
import queue
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import AsyncGeneratorType, CoroutineType, GeneratorType, TracebackType
from typing import Any, Generic, TypeVar

import wrapt

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
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


# -- what calling a function produces ------------------------------------------------------------

_SYNC, _COROUTINE, _GENERATOR, _ASYNC_GENERATOR, _BY_RESULT = range(5)

#: How many forwarding layers (methods, partials, ``__call__``, ``__wrapped__``) are followed:
#: enough for any real stack of decorators, and a stop for a ``__wrapped__`` that loops.
_MAX_LAYERS = 64


def _kind(func: Any, depth: int = 0) -> int:
    """What calling ``func`` produces, seen through the layers that only forward the call.

    Python's own answer comes first (it sees through bound methods and partials of plain
    functions). Python does not look into a callable instance's ``__call__``, a partial of
    one, or a sync function that ``functools.wraps`` an async one: a sync layer over a
    coroutine or generator function is ``_BY_RESULT``, decided at each call by what it
    returns, because it may hand the coroutine on or may run it to the end itself.
    """
    if depth > _MAX_LAYERS:
        return _SYNC
    try:
        if inspect.isasyncgenfunction(func):
            return _ASYNC_GENERATOR
        if inspect.iscoroutinefunction(func):
            return _COROUTINE
        if inspect.isgeneratorfunction(func):
            return _GENERATOR
        if isinstance(func, type):
            return _SYNC  # calling a class builds an instance, whatever its __call__ does
        if inspect.ismethod(func):
            kind = _kind(func.__func__, depth + 1)
        elif isinstance(func, functools.partial):
            kind = _kind(func.func, depth + 1)
        elif not inspect.isroutine(func):  # an instance: the call runs its type's __call__
            kind = _kind(type(func).__call__, depth + 1)
        else:
            kind = _SYNC
        if kind != _SYNC:
            return kind
        inner = getattr(func, "__wrapped__", None)
        if inner is not None and inner is not func and _kind(inner, depth + 1) != _SYNC:
            return _BY_RESULT
    except Exception:  # an object whose attributes raise: called as what it claims to be
        logger.debug(
            "instrument: could not tell what a %s returns; wrapped as sync", type(func).__name__
        )
    return _SYNC


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
    """For a sync callable over async or generator work (``_BY_RESULT``).

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
    kind = _kind(func)
    if kind == _COROUTINE:
        return _async_wrapper(start)
    if kind == _GENERATOR:
        return _generator_wrapper(start, _generator_job, observed)
    if kind == _ASYNC_GENERATOR:
        return _generator_wrapper(start, _async_generator_job, observed)
    if kind == _BY_RESULT:
        return _by_result_wrapper(start, observed)
    return _sync_wrapper(start)


# wrapt's FunctionWrapper gives the transparent proxy (name, signature, inspect flags,
# attributes) and descriptor binding for methods. Changes, invisible to the wrapped
# function and to code that inspects it:
#
# - wrapt's __call__ on an unbound wrapper looks up ``__self__`` on the wrapped object at
#   every call, to support wrapping an already bound method. On a plain function that
#   lookup raises and swallows an AttributeError: most of wrapt's per-call cost. A plain
#   function has no ``__self__``, so the wrapper is given a marker instance at decoration
#   time and wrapt's C __call__ goes straight to the engine. (This uses the base class's
#   constructor, which takes the instance; if a wrapt release changes it, the wrapper
#   keeps wrapt's default behaviour, only slower.)
# - Method access binds through a bound wrapper whose __call__ calls the bound method
#   wrapt prepared (``__wrapped__``), so ``Class.method(obj, ...)`` and ``obj.method(...)``
#   reach the engine the same way.
# - wrapt's proxies refuse pickling and copying; these pickle and copy as what they wrap
#   does, so a decorated function can go to a process pool or sit in a deep-copied object.

_UNBOUND = object()
_wrapper_base_init: Callable[..., None] = wrapt.FunctionWrapper.__base__.__init__  # type: ignore[misc]


class _BoundInstrumentedFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        wrapper: Wrapper = self._self_wrapper  # type: ignore[assignment]
        return wrapper(self.__wrapped__, None, args, kwargs)

    # ``__wrapped__`` is what Python's attribute access gives for the undecorated method:
    # a bound method (of the instance, or of the class for a classmethod), or a plain
    # function (a staticmethod, or a method looked up on its class).

    def _lookup(self) -> tuple[Any, str]:
        """Where this method is found again: its owner and its name."""
        bound = self.__wrapped__
        name: str = bound.__name__
        if inspect.ismethod(bound):
            return bound.__self__, name
        return self._self_owner, name

    def __reduce_ex__(self, protocol: Any) -> Any:
        # As a bound method pickles: the instance (or class) and the name, looked up again
        # when unpickled; a function reached through its class pickles by its class too.
        return getattr, self._lookup()

    def __copy__(self) -> Any:
        if not inspect.ismethod(self.__wrapped__):
            return self  # a function: copies are the function itself
        return getattr(*self._lookup())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        if not inspect.ismethod(self.__wrapped__):
            return self
        owner, name = self._lookup()
        return getattr(copy.deepcopy(owner, memo), name)


class _InstrumentedFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    __bound_function_wrapper__ = _BoundInstrumentedFunction

    def __init__(self, wrapped: Callable[..., Any], wrapper: Wrapper) -> None:
        super().__init__(wrapped, wrapper)
        if self._self_binding == "function" and not hasattr(wrapped, "__self__"):
            try:
                _wrapper_base_init(self, wrapped, _UNBOUND, wrapper, None, "function")
            except TypeError:
                logger.debug("instrument: wrapt's wrapper base changed; using its __call__")

    def __reduce_ex__(self, protocol: Any) -> Any:
        # By reference, as a function pickles: pickle resolves the module-level name (and
        # checks that it is this very wrapper), so the unpickling process imports the
        # module, whose decorator records there.
        qualname = getattr(self.__wrapped__, "__qualname__", None)
        if not isinstance(qualname, str):
            raise pickle.PicklingError(
                f"cannot pickle a decorated {type(self.__wrapped__).__name__}: a decorated "
                "callable pickles by its module-level name, and this one has none; decorate "
                "a module-level function or method instead"
            )
        return qualname

    def _rewrapped(self, copied: Any) -> Any:
        # A function copies as itself; a callable instance or partial as a new wrapper of
        # its copy, recording as this one does.
        if copied is self.__wrapped__:
            return self
        wrapper: Wrapper = self._self_wrapper  # type: ignore[assignment]
        return type(self)(copied, wrapper)

    def __copy__(self) -> Any:
        return self._rewrapped(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._rewrapped(copy.deepcopy(self.__wrapped__, memo))


class _Entry(Generic[P]):
    """One with-block entry: its probe, the frame that entered, and how to undo it in the
    context that entered."""

    __slots__ = ("frame", "previous", "probe", "token")

    def __init__(self, probe: P, previous: _Entry[P] | None, frame: int) -> None:
        self.probe = probe
        self.previous = previous
        self.frame = frame
        self.token: contextvars.Token[_Entry[P] | None]


def _caller_frame() -> int:
    """The identity of the frame running the with-statement (the caller's caller)."""
    try:
        return id(sys._getframe(2))
    except ValueError:  # called straight from C (a thread's target, atexit): no frame
        return 0


class Instrumenter(Generic[P]):
    """Base of every decorator: used as ``@it`` on a function, or as a (async) with-block.

    Subclasses implement :meth:`start`. One with-block object may be used from many
    threads and tasks at once, nested, and exited in another context than the enter's (a
    generator resumed by another thread or task): each exit ends exactly one open entry.
    """

    def __init__(self) -> None:
        # Created here, not on first use: two threads entering first at once must share it.
        # The context's innermost entry of this object: a hint for pairing, not the state.
        self._entered: contextvars.ContextVar[_Entry[P] | None] = contextvars.ContextVar(
            f"instrument-{type(self).__name__}", default=None
        )
        # Every open entry, in enter order, whichever context entered it. An exit claims one
        # with dict.pop, atomic under the GIL: each entry ends exactly once.
        self._open: dict[_Entry[P], bool] = {}

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
        proxy: F = _InstrumentedFunction(func, wrapper)  # type: ignore[assignment]
        return proxy

    # -- with-block --------------------------------------------------------------------------
    #
    # How an exit finds its enter. The enter records its probe, the frame running the
    # with-statement, and the context. The exit ends, in this order of preference:
    #   1. the context's innermost entry, if the same frame entered it (the usual case);
    #   2. the latest open entry this frame made, in whatever context: a generator's frame is
    #      the same object whichever thread or task resumes it, so a generator that enters in
    #      one task and exits in another still pairs exactly;
    #   3. the context's innermost open entry (entered through a helper such as ExitStack,
    #      whose enter and exit run in different frames);
    #   4. the oldest open entry of this object (an exit in a context with no entry at all,
    #      e.g. a manual __exit__ in another thread): the one most likely left by a context
    #      that will not exit it. Counts and active_jobs stay exact whatever is paired; only
    #      which duration goes with which exit can then be off (their sum stays exact).
    # An exit finding no open entry anywhere is a no-op when its context did enter (that job
    # was already ended by an exit elsewhere), else a clear error.

    def _push(self, frame: int) -> P:
        try:
            probe = self.start(None, (), {})
        except Exception:
            _guard("starting a job")
            probe = self.null_probe()
        entry = _Entry(probe, self._entered.get(), frame)
        self._open[entry] = True
        entry.token = self._entered.set(entry)
        return probe

    def _pop(self, frame: int) -> P | None:
        top = self._entered.get()
        opened = self._open
        if top is not None and top.frame == frame and opened.pop(top, False):
            entry: _Entry[P] | None = top
        else:
            entry = self._claim_elsewhere(top, frame)
        if top is not None:
            self._settle(top)
        if entry is None:
            if top is None:
                raise RuntimeError(
                    "with-block exited without a matching enter: this object has no open "
                    "entry (each __exit__/__aexit__ must follow one __enter__/__aenter__)"
                )
            return None
        return entry.probe

    def _claim_elsewhere(self, top: _Entry[P] | None, frame: int) -> _Entry[P] | None:
        opened = self._open
        for entry in reversed(list(opened)):
            if entry.frame == frame and opened.pop(entry, False):
                return entry
        inner = top
        while inner is not None:
            if opened.pop(inner, False):
                return inner
            inner = inner.previous
        for entry in list(opened):
            if opened.pop(entry, False):
                return entry
        return None

    def _settle(self, top: _Entry[P]) -> None:
        """Drop the context's ended entries, innermost first: back to "unset" when none is
        left open, so the context keeps nothing of this object (set() alone would)."""
        entry: _Entry[P] | None = top
        opened = self._open
        try:
            while entry is not None and entry not in opened:
                self._entered.reset(entry.token)
                entry = entry.previous
        except (ValueError, RuntimeError):  # set in a context this one was copied from
            while entry is not None and entry not in opened:
                entry = entry.previous
            self._entered.set(entry)

    def _exit(self, exc: BaseException | None, frame: int) -> P | None:
        probe = self._pop(frame)
        if probe is None:
            return None
        if exc is None:
            _probe_success(probe, None)
        else:
            _probe_end(probe, exc)
        return probe

    def __enter__(self) -> P:
        return self._push(_caller_frame())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        probe = self._exit(exc, _caller_frame())
        if probe is not None:
            _deliver(probe)

    async def __aenter__(self) -> P:
        return self._push(_caller_frame())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        probe = self._exit(exc, _caller_frame())
        if probe is not None:
            await _adeliver(probe)


def wraps_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature used to bind a call's arguments, or None where it cannot be read."""
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None
