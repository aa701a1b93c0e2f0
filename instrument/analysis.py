"""``monitored_analysis``: one analysis job per call or with-block.

Records ``analyses_total{module, analysis_type, status}``, one duration sample, the
active-jobs gauge (inc on entry, dec on exit), errors by class, and optional quality scores.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._cells import CellSeries
from ._engine import Probe, bind_arguments, wraps_signature
from ._tracing import (
    MODULES,
    PROVIDER,
    QUIET,
    TRACE_MODULE,
    end_span,
    exemplar_labels,
    run_exemplar,
    start_span,
)
from ._validation import check_label, check_number
from .policy import Binding, Policy

if TYPE_CHECKING:
    from .instrumentation import Instrumentation
    from .objectives import ObjectiveArg

__all__ = ["AnalysisJob", "AnalysisMonitor", "monitored_analysis"]

logger = logging.getLogger("instrument")

ProjectArg = str | Callable[[dict[str, Any]], str] | None

# Where a job's numbers go in its binding's cells (``_cells``): the active-jobs gauge, one
# counter per status, then the duration histogram's sum and buckets.
_STATUSES = ("success", "error", "cancelled")
_ACTIVE, _SUCCESS, _ERROR, _CANCELLED, _DURATION = range(5)
_STATUS_INDEXES = (_SUCCESS, _ERROR, _CANCELLED)


class _AnalysisBinding(Binding):
    """Label children of one analysis, bound once per Instrumentation."""

    def __init__(self, inst: Instrumentation, monitor: AnalysisMonitor) -> None:
        super().__init__(inst)
        self.monitor = monitor
        self.quality = monitor.quality
        if not self.enabled:
            return  # create no series at all
        m = inst.metrics
        module, analysis_type = monitor.module, monitor.analysis_type
        self.module = module
        active = m.active_jobs.labels(monitor.job_type)
        duration = m.analysis_duration.labels(module, analysis_type)
        statuses = [m.analyses.labels(module, analysis_type, s) for s in _STATUSES]
        #: ``begin()`` at a job's start, ``end(status, seconds, (), exemplar)`` at its end,
        #: ``end_usual(seconds)`` at a success with no exemplar (the usual end).
        self.begin: Callable[[], None]
        self.end: Callable[[int, float, Any, Any], None]
        self.end_usual: Callable[[float], None]
        #: A job's span: its name and first attributes (the OpenTelemetry conventions'
        #: namespace ``analysis.``).
        self.span_name = f"{module} {analysis_type}"
        self.span_attributes: dict[str, Any] = {
            "analysis.module": module,
            "analysis.type": analysis_type,
        }
        if isinstance(monitor.project, str):
            self.span_attributes["analysis.project"] = monitor.project
        if self.cells:
            series = CellSeries(
                self,
                counters=dict(zip(_STATUS_INDEXES, statuses, strict=True)),
                gauges={_ACTIVE: active},
                histograms={_DURATION: duration},
                gauge=_ACTIVE,
                histogram=_DURATION,
                usual=_SUCCESS,
            )
            self.series = series
            self.begin = series.begin
            self.end = series.end
            self.end_usual = series.end_usual
        else:
            self.begin = active.inc
            self._active_dec = active.dec
            self._observe = duration.observe
            self._status_inc = {i: c.inc for i, c in zip(_STATUS_INDEXES, statuses, strict=True)}
            self.end = self._end_direct
            self.end_usual = self._end_usual_direct
        self._errors = m.analysis_errors
        self._error_children: dict[str, Callable[[], None]] = {}
        self._analysis_type = analysis_type
        self._quality = m.code_quality_score

    def _end_direct(
        self, status: int, seconds: float, amounts: Any = (), exemplar: Any = None
    ) -> None:
        # No exemplar: prometheus_client's multiprocess mode keeps none.
        self._observe(seconds)
        self._status_inc[status]()
        self._active_dec()

    def _end_usual_direct(self, seconds: float) -> None:
        self._observe(seconds)
        self._status_inc[_SUCCESS]()
        self._active_dec()

    def count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        inc = self._error_children.get(name)
        if inc is None:
            child = self._errors.labels(self.module, self._analysis_type, name)
            inc = self._error_children[name] = child.inc
        inc()

    def set_quality(self, project: str, score: float) -> None:
        self._quality.labels(project, self.module).set(score)


class AnalysisJob(Probe):
    """One analysis in flight; in a with-block, the handle ``as job`` gives you."""

    # after_job holds the delivery's bound method: one call less per job than a method.
    __slots__ = ("_b", "_t0", "after_job", "span")

    _b: _AnalysisBinding
    _t0: float
    #: The call's bound arguments, kept only by jobs that record a quality score.
    _arguments: dict[str, Any] | None = None

    def after_job_async(self) -> Awaitable[None] | None:
        step = self._b.after_job_async
        if step is None:  # nothing is ever pushed (push_mode "off")
            return None
        waiter: Awaitable[None] | None = step()
        return waiter

    def note_change(self) -> None:
        self._b.note_change()

    def record_quality(self, score: float, *, project: str | None = None) -> None:
        """Record a code quality score for this job's project (or ``project``) and module."""
        value = check_number("score", score)
        if project is not None:
            check_label("project", project)
        b = self._b
        name = project if project is not None else b.monitor.project_for(self._arguments)
        if name is not None:
            b.set_quality(name, value)
            self._span_quality(name, value)

    def _span_quality(self, project: str, score: float) -> None:
        span = self.span
        if span is not None and span.is_recording():
            span.set_attributes({"analysis.project": project, "analysis.quality_score": score})

    def _ended(self, status: int) -> None:
        seconds = perf_counter() - self._t0
        b = self._b
        span = self.span
        # With tracing on and no span of its own, no tracer was there: no caller's span
        # either, only a run's id (one C call: this is every untraced call's end).
        b.end(
            status,
            seconds,
            (),
            run_exemplar() if span is None and b.tracing else exemplar_labels(span),
        )

    def success(self, result: Any) -> Any:
        # _ended, inlined: the usual end of every decorated call.
        seconds = perf_counter() - self._t0
        b = self._b
        span = self.span
        exemplar = run_exemplar() if span is None and b.tracing else exemplar_labels(span)
        if exemplar is None:
            b.end_usual(seconds)
        else:
            b.end(_SUCCESS, seconds, (), exemplar)
        if span is not None:
            end_span(span)
        return result

    def error(self, exc: BaseException) -> None:
        self._b.count_error(exc)
        self._ended(_ERROR)
        if self.span is not None:
            end_span(self.span, exc)

    def cancel(self) -> None:
        self._ended(_CANCELLED)
        if self.span is not None:
            end_span(self.span, cancelled=True)


class _ScoredJob(AnalysisJob):
    """A decorated call whose result the ``quality=`` callable scores."""

    __slots__ = ("_arguments",)

    def success(self, result: Any) -> Any:
        self._ended(_SUCCESS)
        try:
            self._score(result)
        finally:
            if self.span is not None:  # after the score, which it carries
                end_span(self.span)
        return result

    def _score(self, result: Any) -> None:
        b = self._b
        quality = b.quality
        assert quality is not None
        try:
            score = check_number("quality score", quality(result))
        except Exception as exc:
            logger.warning(
                "instrument: quality callable of %s/%s failed (%s: %s); no score recorded",
                b.monitor.module,
                b.monitor.analysis_type,
                type(exc).__name__,
                exc,
            )
            return
        project = b.monitor.project_for(self._arguments)
        if project is not None:
            b.set_quality(project, score)
            self._span_quality(project, score)


class _DisabledJob(AnalysisJob):
    """The handle when recording is off: validates what it is given, records nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        self.after_job = None
        self.span = None

    def after_job_async(self) -> None:
        return None

    def note_change(self) -> None:
        return None

    def record_quality(self, score: float, *, project: str | None = None) -> None:
        check_number("score", score)
        if project is not None:
            check_label("project", project)

    def success(self, result: Any) -> Any:
        return result

    def error(self, exc: BaseException) -> None:
        return None

    def cancel(self) -> None:
        return None


_new = object.__new__


class AnalysisMonitor(Policy[AnalysisJob, _AnalysisBinding]):
    """What ``monitored_analysis(...)`` returns: a decorator and a (async) with-block."""

    def __init__(
        self,
        inst: Instrumentation | None,
        module: str,
        analysis_type: str | None,
        *,
        job_type: str | None = None,
        project: ProjectArg = None,
        quality: Callable[[Any], float] | None = None,
        objective: ObjectiveArg = None,
    ) -> None:
        if callable(module) and not isinstance(module, str):
            raise TypeError(
                "monitored_analysis needs arguments: use @monitored_analysis(module, "
                "analysis_type), not @monitored_analysis"
            )
        check_label("module", module)
        check_label("analysis_type", analysis_type)
        check_label("job_type", job_type, optional=True)
        if project is not None and not (isinstance(project, str) or callable(project)):
            raise TypeError(
                "project must be a string or a callable taking the call's bound arguments "
                f"(a dict) and returning the project name; got {type(project).__name__}"
            )
        if isinstance(project, str) and not project:
            raise TypeError("project must be a non-empty string")
        if quality is not None and not callable(quality):
            raise TypeError(
                "quality must be a callable taking the function's result and returning a "
                f"number, e.g. lambda r: r.score; got {type(quality).__name__}"
            )
        super().__init__(inst)
        assert analysis_type is not None
        self.module = module
        self.analysis_type = analysis_type
        self.job_type = job_type or module
        self.project = project
        self.quality = quality
        self._null = _DisabledJob()
        if objective is not None:  # objectives are opt-in: their module loads on first use
            from .objectives import Coverage, declare

            coverage = (("module", module), ("analysis_type", analysis_type))
            declare(inst, objective, Coverage("analysis", coverage))

    def __repr__(self) -> str:
        return f"monitored_analysis({self.module!r}, {self.analysis_type!r})"

    def bind(self, inst: Instrumentation) -> _AnalysisBinding:
        return _AnalysisBinding(inst, self)

    def null_probe(self) -> AnalysisJob:
        return self._null

    def starter(self, func: Callable[..., Any]) -> Callable[..., Probe]:
        if self.quality is None:
            return self.start
        # A project callable needs the call's arguments, bound by this function's signature
        # (one monitor may decorate several functions).
        signature = wraps_signature(func) if callable(self.project) else None

        def start_scored(
            wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Probe:
            job = self.start(wrapped, args, kwargs, _ScoredJob)
            if isinstance(job, _ScoredJob):  # not the disabled handle
                job._arguments = (
                    None if signature is None else bind_arguments(signature, wrapped, args, kwargs)
                )
            return job

        return start_scored

    def start(
        self,
        wrapped: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: type[AnalysisJob] = AnalysisJob,
    ) -> AnalysisJob:
        b = self._binding
        if b is None or b.stale:
            b = self.binding()
            if not b.enabled:
                return self._null
        # Inlined (no __init__, no helper): this runs once per decorated call.
        job = _new(kind)
        job._b = b
        job.after_job = b.after_job
        job.span = None
        if b.tracing and TRACE_MODULE in MODULES:
            try:  # _tracing.QUIET: no provider set since the last look, so no span
                if MODULES[TRACE_MODULE] is not QUIET.module or QUIET.globals[PROVIDER] is not None:
                    job.span = start_span(b.span_name, False, b.span_attributes)
            except KeyError:  # unloaded meanwhile: no tracer
                pass
        job._t0 = t0 = perf_counter()
        if t0 > b.handover.overdue:  # before the gauge's step: an interrupt here leaves none
            b.handover.hand_over()
        b.begin()
        return job

    def project_for(self, arguments: dict[str, Any] | None) -> str | None:
        """The project label for a job: the given string, the callable's answer, or module."""
        project = self.project
        if project is None:
            return self.module
        if isinstance(project, str):
            return project
        try:
            name = project(arguments or {})
        except Exception as exc:
            logger.warning(
                "instrument: project callable of %s/%s failed (%s: %s); no score recorded",
                self.module,
                self.analysis_type,
                type(exc).__name__,
                exc,
            )
            return None
        if not isinstance(name, str) or not name:
            logger.warning(
                "instrument: project callable of %s/%s returned %r, not a non-empty string",
                self.module,
                self.analysis_type,
                name,
            )
            return None
        return name


def monitored_analysis(
    module: str,
    # None only so that a bare @monitored_analysis gets a clear error, not Python's.
    analysis_type: str = None,  # type: ignore[assignment]  # noqa: RUF013
    *,
    job_type: str | None = None,
    project: ProjectArg = None,
    quality: Callable[[Any], float] | None = None,
    objective: ObjectiveArg = None,
) -> AnalysisMonitor:
    """Monitor each call (or with-block) as one analysis, on the default instrumentation.

    >>> @monitored_analysis("static_analysis", "codebase", quality=lambda r: r.score)
    ... def analyze_codebase(path): ...

    ``objective=`` (an :class:`~instrument.Objective` or a list) makes these analyses count
    towards it in the rules ``build_rules`` generates.
    """
    return AnalysisMonitor(
        None,
        module,
        analysis_type,
        job_type=job_type,
        project=project,
        quality=quality,
        objective=objective,
    )
