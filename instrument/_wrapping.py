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

    def deliver(self) -> None:
        """After the job ended, in sync code: hand the new state to delivery."""

    def deliver_async(self) -> Awaitable[None] | None:
        """After the job ended, in async code: an awaitable to await, or None."""
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
        probe.deliver()
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


class _InstrumentedFunction(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """The proxy a decorator returns. Unlike wrapt's default, it pickles by reference,
    so a decorated module-level function can go to a process pool."""

    def __reduce_ex__(self, protocol: Any) -> str:
        qualname: str = self.__wrapped__.__qualname__
        return qualname


class Instrumenter(Generic[P]):
    """Base of every decorator: used as ``@it`` on a function, or as a (async) with-block.

    Subclasses implement :meth:`start`. A with-block keeps its probe in a context
    variable, so one object used from many threads and tasks at once stays exact.
    """

    _entered: contextvars.ContextVar[tuple[P, Any] | None]
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

    # -- decorator ---------------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        if not callable(func) and not isinstance(func, classmethod | staticmethod):
            raise TypeError(
                f"{type(self).__name__} decorates a function; got {type(func).__name__}. "
                "Call it with its arguments first: @decorator(...), then apply it."
            )
        target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
        self.prepare(target)
        if inspect.isasyncgenfunction(target):
            wrapper = self._async_generator_wrapper()
        elif inspect.isgeneratorfunction(target):
            wrapper = self._generator_wrapper()
        elif inspect.iscoroutinefunction(target):
            wrapper = self._async_wrapper()
        else:
            wrapper = self._sync_wrapper()
        proxy: F = _InstrumentedFunction(func, wrapper)  # type: ignore[assignment]
        return proxy

    def _sync_wrapper(self) -> Callable[..., Any]:
        start = self.start

        def call_sync(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            try:
                probe = start(wrapped, args, kwargs)
            except Exception:
                _guard("starting a job")
                return wrapped(*args, **kwargs)
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                _probe_end(probe, exc)
                _deliver(probe)
                raise
            result = _probe_success(probe, result)
            _deliver(probe)
            return result

        return call_sync

    def _async_wrapper(self) -> Callable[..., Any]:
        start = self.start

        async def call_async(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
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

    def _generator_wrapper(self) -> Callable[..., Any]:
        start = self.start
        observed = self.observes_items

        def run(
            wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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
                _probe_end(probe, exc)
                _deliver(probe)
                raise
            _probe_success(probe, value)
            _deliver(probe)
            return value

        def call_generator(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Generator[Any, Any, Any]:
            return run(wrapped, args, kwargs)

        return call_generator

    def _async_generator_wrapper(self) -> Callable[..., Any]:
        start = self.start
        observed = self.observes_items

        async def run(
            wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> AsyncGenerator[Any, Any]:
            agen = wrapped(*args, **kwargs)
            try:
                probe: P | None = start(wrapped, args, kwargs)
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

        def call_async_generator(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> AsyncGenerator[Any, Any]:
            return run(wrapped, args, kwargs)

        return call_async_generator

    # -- with-block --------------------------------------------------------------------------

    def _push(self) -> P:
        try:
            entered = self._entered
        except AttributeError:
            entered = self._entered = contextvars.ContextVar(f"instrument-{id(self)}", default=None)
        try:
            probe = self.start(None, (), {})
        except Exception:
            _guard("starting a job")
            probe = self.null_probe()
        entered.set((probe, entered.get()))
        return probe

    def _pop(self) -> P:
        node = self._entered.get()
        if node is None:
            raise RuntimeError("with-block exited without a matching enter in this context")
        probe, rest = node
        self._entered.set(rest)
        return probe

    def _exit(self, exc: BaseException | None) -> P:
        probe = self._pop()
        if exc is None:
            _probe_success(probe, None)
        else:
            _probe_end(probe, exc)
        return probe

    def __enter__(self) -> P:
        return self._push()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _deliver(self._exit(exc))

    async def __aenter__(self) -> P:
        return self._push()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _adeliver(self._exit(exc))


def wraps_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature used to bind a call's arguments, or None where it cannot be read."""
    try:
        return inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
