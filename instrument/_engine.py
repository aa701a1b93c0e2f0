"""The one wrapping engine: sync, async, generator and async-generator functions, and with-blocks.

A decorator is an :class:`Instrumenter` subclass that only says what to record: its
``start()`` returns a :class:`Probe` for one job, and the engine calls the probe's
``success`` / ``error`` / ``cancel`` exactly once, then its post-job step (``after_job``).
The engine guards every probe call, so a failure in recording is logged and never reaches
the wrapped function.

A policy imports from here only. Its hooks for code that runs outside the engine:
:func:`end_job` / :func:`aend_job` end a job after the wrapper returned (a stream it
handed out, a manager entered later), :func:`end_outside` one from a finalizer,
:func:`defer` / :func:`run_deferred` move work to a safe point, and
:func:`report_failure` logs a failure the way the engine's guards do.

The engine's parts: ``_jobs`` (a job's end, the guards, deferred work), ``_dispatch`` (one
wrapper per kind of function), ``_proxy`` (the wrapt proxy a decorated function becomes)
and ``_with_blocks`` (which open entry a with-block exit ends).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextvars import Token
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._dispatch import Start, wrapper_for
from ._jobs import (
    CANCELLING,
    Probe,
    aend_job,
    collector_closing,
    defer,
    deferred_work,
    end_job,
    end_outside,
    record_success,
    report_failure,
    run_deferred,
)
from ._proxy import InstrumentedFunction
from ._tracing import enter, leave_span_block
from ._with_blocks import OpenEntries, caller_frame

__all__ = [
    "CANCELLING",
    "Instrumenter",
    "Probe",
    "aend_job",
    "bind_arguments",
    "defer",
    "deferred_work",
    "end_job",
    "end_outside",
    "report_failure",
    "run_deferred",
    "wraps_signature",
]

P = TypeVar("P", bound=Probe)
F = TypeVar("F", bound=Callable[..., Any])


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


class Instrumenter(Generic[P]):
    """Base of every decorator: used as ``@it`` on a function, or as a (async) with-block.

    Subclasses implement :meth:`start`. One with-block object may be used from many
    threads and tasks at once, nested, and exited in another context than the enter's:
    each exit ends exactly one open entry (see ``_with_blocks``).
    """

    def __init__(self) -> None:
        # Each entry's probe, and the token that made its span current with the context it
        # set (None: no span).
        self._entries: OpenEntries[tuple[P, Token[Any] | None, Any]] = OpenEntries(
            f"instrument-{type(self).__name__}"
        )

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
        wrapper = wrapper_for(target, self.starter(target), self.observes_items)
        proxy: F = InstrumentedFunction(func, wrapper)  # type: ignore[assignment]
        return proxy

    # -- with-block --------------------------------------------------------------------------

    def _push(self, frame: int) -> P:
        try:
            probe = self.start(None, (), {})
        except Exception:
            report_failure("starting a job")
            probe = self.null_probe()
        span = probe.span
        token = None if span is None else enter(span)
        self._entries.push((probe, token, None if token is None else token.var.get()), frame)
        return probe

    def _exit(self, exc: BaseException | None, frame: int) -> P | None:
        """The probe this exit ends (None: already ended elsewhere), its success recorded."""
        entry = self._entries.pop(frame)
        if entry is None:
            return None
        probe, token, entered = entry
        if token is not None:
            leave_span_block(token, entered)
        if exc is None:
            record_success(probe, None)
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
            if exc is not None and collector_closing(exc):  # freed by the garbage collector
                end_outside(probe, exc)
            else:
                end_job(probe, exc)

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
            if exc is not None and collector_closing(exc):
                end_outside(probe, exc)
            else:
                await aend_job(probe, exc)


def wraps_signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """The signature used to bind a call's arguments, or None where it cannot be read.

    A decorated bound method is called as itself, so :func:`bind_arguments` puts its
    ``self`` back: its signature is the one of the function it binds, which has ``self``.
    """
    try:
        return inspect.signature(func.__func__ if inspect.ismethod(func) else func)
    except (TypeError, ValueError):
        return None
