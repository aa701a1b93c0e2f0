"""The one wrapping engine: sync, async, generator and async-generator functions, and with-blocks.

A decorator is an :class:`Instrumenter` subclass that only says what to record: its
``start()`` returns a :class:`Probe` for one job, and the engine calls the probe's
``success`` / ``error`` / ``cancel`` exactly once, then ``deliver``. The engine guards every
probe call, so a failure in recording is logged and never reaches the wrapped function.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

import wrapt

__all__ = ["Instrumenter", "Probe", "bind_arguments"]

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
    _deliver(probe)


def _probe_end(probe: Probe, exc: BaseException | None) -> None:
    """Record an exception end: ``error`` for an Exception, ``cancel`` for the rest."""
    try:
        if exc is None or isinstance(exc, CANCELLING) or not isinstance(exc, Exception):
            probe.cancel()
        else:
            probe.error(exc)
    except Exception:
        _guard("recording an exception")


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


# One wrapper per kind of function, in wrapt's (wrapped, instance, args, kwargs) form.
# ``instance`` is never used: wrapt hands over a bound method for method access, and
# ``bind_arguments`` reads ``self`` from it.


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
            _end_and_deliver(probe, exc)
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


def _async_wrapper(start: Start) -> Wrapper:
    async def call_async(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            probe = start(wrapped, args, kwargs)
        except Exception:
            _guard("starting a job")
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            _probe_end(probe, exc)
            await _adeliver(probe)
            raise
        result = _probe_success(probe, result)
        await _adeliver(probe)
        return result

    return call_async


def _generator_wrapper(start: Start, observed: bool) -> Wrapper:

    def call_generator(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[Any, Any, Any]:
        # The body runs at the first next(): a generator never started records nothing.
        gen = wrapped(*args, **kwargs)
        try:
            probe = start(wrapped, args, kwargs)
        except Exception:
            _guard("starting a job")
            return (yield from gen)
        try:
            value = yield from (_observe(gen, probe) if observed else gen)
        except BaseException as exc:
            _end_and_deliver(probe, exc)
            raise
        _probe_success(probe, value)
        _deliver(probe)
        return value

    return call_generator


def _async_generator_wrapper(start: Start, observed: bool) -> Wrapper:

    async def call_async_generator(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, Any]:
        agen = wrapped(*args, **kwargs)
        try:
            probe: Probe | None = start(wrapped, args, kwargs)
        except Exception:
            _guard("starting a job")
            probe = None
        try:
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    if thrown is not None:
                        item = await agen.athrow(thrown)
                    else:
                        item = await agen.asend(sent)
                except StopAsyncIteration:
                    break
                thrown = None
                if observed and probe is not None:
                    _probe_item(probe, item)
                try:
                    sent = yield item
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    thrown = exc
        except BaseException as exc:
            if probe is not None:
                _probe_end(probe, exc)
                await _adeliver(probe)
            raise
        if probe is not None:
            _probe_success(probe, None)
            await _adeliver(probe)

    return call_async_generator


def _reduce_by_reference(self: Any, protocol: Any) -> str:
    # wrapt's proxies refuse pickling; by reference, pickle resolves the module-level name.
    qualname: str = self.__wrapped__.__qualname__
    return qualname


# wrapt's FunctionWrapper gives the transparent proxy (name, signature, inspect flags,
# attributes) and descriptor binding for methods. Two changes, invisible to the wrapped
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

_UNBOUND = object()
_wrapper_base_init: Callable[..., None] = wrapt.FunctionWrapper.__base__.__init__  # type: ignore[misc]


class _BoundInstrumentedFunction(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        wrapper: Wrapper = self._self_wrapper  # type: ignore[assignment]
        return wrapper(self.__wrapped__, None, args, kwargs)

    __reduce_ex__ = _reduce_by_reference


class _InstrumentedFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    __bound_function_wrapper__ = _BoundInstrumentedFunction
    __reduce_ex__ = _reduce_by_reference

    def __init__(self, wrapped: Callable[..., Any], wrapper: Wrapper) -> None:
        super().__init__(wrapped, wrapper)
        if self._self_binding == "function" and not hasattr(wrapped, "__self__"):
            try:
                _wrapper_base_init(self, wrapped, _UNBOUND, wrapper, None, "function")
            except TypeError:
                logger.debug("instrument: wrapt's wrapper base changed; using its __call__")


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
    return id(sys._getframe(2))


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
        start = self.starter(target)
        if inspect.isasyncgenfunction(target):
            wrapper = _async_generator_wrapper(start, self.observes_items)
        elif inspect.isgeneratorfunction(target):
            wrapper = _generator_wrapper(start, self.observes_items)
        elif inspect.iscoroutinefunction(target):
            wrapper = _async_wrapper(start)
        else:
            wrapper = _sync_wrapper(start)
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
