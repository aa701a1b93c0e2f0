"""Spans for decorated calls (OpenTelemetry, optional) and what a latency observation
carries as its exemplar.

Nothing here imports opentelemetry. A tracer provider can only have been set once the
application imported ``opentelemetry.trace``, so each call looks for that module in
``sys.modules`` (a dictionary lookup) and, when it is there, at the provider it holds:
the API's default (nothing set) or a no-op provider means no span, and a real one gets a
tracer, made once per provider. ``opentelemetry.trace.get_tracer_provider()`` is not
called per call: it reads the environment each time (about a microsecond).

A policy starts its job's span with :func:`start_span` (name, kind, attributes are the
policy's) and ends it with :func:`end_span`; the engine makes it the current span inside
the wrapped code (:func:`enter` / :func:`leave`, around each step of a coroutine or
generator), so what the code starts (an AI call inside an analysis) is its child.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from functools import cache
from typing import Any

from ._jobs import report_failure

__all__ = [
    "MODULES",
    "PROVIDER",
    "QUIET",
    "TRACE_MODULE",
    "current_tracer",
    "end_span",
    "enter",
    "exemplar_labels",
    "leave",
    "leave_block",
    "leave_span_block",
    "run_exemplar",
    "run_id",
    "start_span",
]

#: A policy starts a span only when ``TRACE_MODULE in MODULES`` (checked inline, before
#: calling :func:`start_span`: without opentelemetry, a call then costs what it did), and
#: not while that module is still the quiet one (:data:`QUIET`).
TRACE_MODULE = _TRACE = "opentelemetry.trace"
MODULES = _modules = sys.modules
#: The name of the API's global tracer provider (None until one is set).
PROVIDER = "_TRACER_PROVIDER"


class _Quiet:
    """The ``opentelemetry.trace`` module last seen with no tracer provider set (and none
    named by the environment), and its globals. While ``MODULES[TRACE_MODULE] is
    QUIET.module`` and ``QUIET.globals[PROVIDER]`` is still None, nothing has changed: a
    job has no tracer, and its policy, checking this inline, skips :func:`start_span` (the
    application that imported the API but set no provider pays two dictionary reads, not
    a call). Any other module, or a provider set since, is asked about in start_span."""

    __slots__ = ("globals", "module")

    def __init__(self) -> None:
        self.module: Any = None
        self.globals: dict[str, Any] = {PROVIDER: None}


QUIET = _Quiet()
#: What a module attribute read gives when opentelemetry renamed its global provider.
_MISSING: Any = object()
#: (provider, its tracer or None): swapped as one tuple, so a reader never sees a mix. At
#: first no provider at all, not even None: a first call finding none set looks at the
#: environment, which may name one.
_cache: tuple[Any, Any] = (object(), None)
#: The longest run id an exemplar can carry: OpenMetrics bounds an exemplar's label set to
#: 128 characters, names included ("run_id" is 6).
MAX_RUN_ID = 122
#: What the OpenMetrics exposition escapes in a label value (and line breaks besides), and
#: NUL, which Prometheus refuses in an exemplar's label: the whole scrape then fails.
_ESCAPED = frozenset('"\\\n\r\x00')

#: The exemplar labels of the current run (``{"run_id": ...}``), or None: what
#: ``instrument.run_id(...)`` sets. Shared by every observation in the run; never changed.
_run_labels: ContextVar[dict[str, str] | None] = ContextVar("instrument_run_id", default=None)

#: ``run_exemplar()``: the current run's exemplar labels, or None. The context variable's own
#: ``get`` (C, no Python frame): what a job with no span of its own and no tracer reads.
run_exemplar: Callable[[], dict[str, str] | None] = _run_labels.get


def current_tracer() -> Any:
    """The tracer spans are started with, or None: opentelemetry not imported, or no real
    tracer provider set."""
    trace = _modules.get(_TRACE)
    if trace is None:
        return None
    try:
        provider = trace._TRACER_PROVIDER
    except AttributeError:
        provider = _MISSING
    cache = _cache
    if provider is cache[0]:
        return cache[1]
    return _tracer_of(trace, provider)


def _tracer_of(trace: Any, provider: Any) -> Any:
    global _cache
    if provider is _MISSING:  # an API that keeps it elsewhere: its public getter, slower
        try:
            found = trace.get_tracer_provider()
        except Exception:
            return None
        return _tracer_for(trace, found)
    if provider is None:
        import os

        # The provider named by OTEL_PYTHON_TRACER_PROVIDER is loaded by the getter.
        if "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ:
            _cache = (None, None)
            QUIET.globals = vars(trace)
            QUIET.module = trace
            return None
        try:
            provider = trace.get_tracer_provider()
        except Exception:
            return None
    tracer = _tracer_for(trace, provider)
    _cache = (provider, tracer)
    return tracer


def _tracer_for(trace: Any, provider: Any) -> Any:
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("instrument", _version())


@cache
def _version() -> str | None:
    """The instrumentation scope's version: this distribution's (found once: it scans
    sys.path)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codomyrmex-instrument")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return None


def start_span(name: str, client: bool, attributes: Mapping[str, Any]) -> Any:
    """A started span (kind CLIENT or INTERNAL) under the current one, or None when there
    is no tracer. Its caller ends it with :func:`end_span`."""
    # current_tracer(), inlined: this runs once per decorated call.
    trace = _modules.get(_TRACE)
    if trace is None:
        return None
    try:
        provider = trace._TRACER_PROVIDER
    except AttributeError:
        provider = _MISSING
    cache = _cache
    tracer = cache[1] if provider is cache[0] else _tracer_of(trace, provider)
    if tracer is None:
        return None
    # Guarded here, not by the engine's guard on a job's start: a failing tracer (or span
    # processor) costs the span, never the job's numbers.
    try:
        trace = _modules[_TRACE]
        kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
        return tracer.start_span(name, kind=kind, attributes=attributes)
    except Exception:
        report_failure("starting a span")
        return None


def end_span(
    span: Any,
    exc: BaseException | None = None,
    *,
    cancelled: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """End ``span``: failed with ``exc`` (status ERROR, ``error.type``, an exception
    event), ``cancelled`` (status left UNSET, ``instrument.cancelled``), else a success.
    Never raises."""
    try:
        _end(span, exc, cancelled, attributes)
    except Exception:
        report_failure("ending a span")


def _end(
    span: Any, exc: BaseException | None, cancelled: bool, attributes: Mapping[str, Any] | None
) -> None:
    # The span ends whatever setting its attributes, event or status did (a failing
    # processor, an exception whose ``str()`` raises): an unended span is never exported.
    try:
        if attributes:
            span.set_attributes(attributes)
        if cancelled:
            span.set_attribute("instrument.cancelled", True)
        elif exc is not None:
            _failed(span, exc)
    finally:
        span.end()


def _failed(span: Any, exc: BaseException) -> None:
    """Status ERROR, ``error.type`` and an exception event: with the exception's type only,
    never its message or traceback (``record_exception`` records both): what an exception
    says may hold anything, a prompt, a completion, a key."""
    trace = _modules[_TRACE]
    cls = type(exc)
    name = cls.__name__
    span.set_attribute("error.type", name)
    qualified = name if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    span.add_event("exception", {"exception.type": qualified})
    span.set_status(trace.Status(trace.StatusCode.ERROR, name))


def enter(span: Any) -> Token[Any] | None:
    """Make ``span`` the current span; :func:`leave` with the token undoes it. None (and
    the failure logged) when the context cannot take it: the job goes on without."""
    try:
        trace = _modules[_TRACE]
        context = _modules["opentelemetry.context"]
        token: Token[Any] = context.attach(trace.set_span_in_context(span))
    except Exception:
        report_failure("making a span current")
        return None
    return token


def leave(token: Token[Any]) -> None:
    """Undo :func:`enter` in the context that entered (a call, one step of a coroutine or
    generator): see :func:`leave_block` for a with-block."""
    token.var.reset(token)


def leave_block(token: Token[Any], value: Any, unset: Callable[[], Any]) -> None:
    """Undo a with-block's ``token`` that set ``value``. The block may be left in another
    context than the one that entered it (a generator's block, resumed by another task):
    then, if that context is a copy made inside the block (it still holds ``value``), it
    gets back what it held before (``unset()`` if nothing: the variable's default). The
    entering context cannot be reached from another one; it keeps ``value``."""
    try:
        token.var.reset(token)
    except (ValueError, RuntimeError):
        var = token.var
        if var.get(None) is value:
            before = token.old_value
            var.set(unset() if before is Token.MISSING else before)


def leave_span_block(token: Token[Any], entered: Any) -> None:
    """:func:`leave_block` for the token of :func:`enter` (``entered``: the context it set;
    unset, OpenTelemetry's current context is an empty one)."""
    leave_block(token, entered, _modules["opentelemetry.context"].Context)


def exemplar_labels(span: Any) -> dict[str, str] | None:
    """What an observation links to: the ids of ``span`` (a job's own) or else of the
    current recording span (the caller's), else the run id set with
    :func:`run_id`. (A job that tried to start its own span and got none had no tracer, so
    no caller's span to find either: it reads :data:`run_exemplar` instead.)"""
    if span is None and current_tracer() is not None:
        span = _modules[_TRACE].get_current_span()
    if span is not None and span.is_recording():
        ids = span.get_span_context()
        return {"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x")}
    return _run_labels.get()


def _none() -> None:
    return None


@contextmanager
def run_id(value: str) -> Iterator[str]:
    """Within this block, observations without a span carry ``{run_id: value}`` as their
    exemplar, so a slow bucket links to a batch run's logs.

    >>> with instrument.run_id("nightly-2026-12-01"):
    ...     analyze(repo)
    """
    if not isinstance(value, str) or not value:
        raise TypeError(f"run_id takes a non-empty string, got {value!r}")
    if len(value) > MAX_RUN_ID:
        raise ValueError(
            f"run_id is {len(value)} characters; an exemplar holds at most {MAX_RUN_ID} "
            "(OpenMetrics' 128 for its labels): use a shorter id, or a hash of this one"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("run_id must be valid UTF-8 (it holds a lone surrogate)") from None
    if any(char in value for char in _ESCAPED):
        # Measured: Prometheus 2.42 keeps the exposition's escapes (\" \\ \n) in a scraped
        # exemplar's label, so the id it stores would not be the one in the logs.
        raise ValueError(
            f"run_id {value!r} holds a quote, backslash, line break or NUL, which a scrape "
            "delivers escaped (or Prometheus refuses); use letters, digits and punctuation "
            "such as - _ . : /"
        )
    labels = {"run_id": value}
    token = _run_labels.set(labels)
    try:
        yield value
    finally:
        leave_block(token, labels, _none)
