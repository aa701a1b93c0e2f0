"""Prometheus recording and alerting rules, generated from the metric definitions.

:func:`build_rules` returns the rule groups as plain data; :func:`rules_yaml` writes them
as the YAML file Prometheus loads (``rule_files:``) and ``promtool check rules`` accepts.
The YAML is written by :func:`to_yaml`, a small emitter for this subset (mappings, lists,
strings, numbers, booleans) that quotes every string that could read as something else,
so no YAML library is needed at runtime.

The rules are a table (:data:`_GROUPS`) of recording rules and alerts whose expressions
are PromQL trees from ``_promql``; :func:`_render` writes one rule for a namespace.
Recording rules keep the 5-minute rates the alerts share; the alerts read them, so both
live in one group per area and are evaluated in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._promql import (
    Context,
    Expr,
    Increase,
    Max,
    MaxOverTime,
    Op,
    Quantile,
    Rate,
    Ratio,
    Series,
    Source,
    Sum,
    buckets_of,
    duration_ms,
    namespace_of,
    number,
)
from ._slo import objective_group, objective_tests
from ._urls import split_url
from ._yaml import to_yaml
from .dashboard import check_uid
from .metrics import metric_names
from .objectives import Coverage, Objective, check_measurable

__all__ = ["build_rules", "check_link_base", "rules_tests_yaml", "rules_yaml", "to_yaml"]


def _duration(what: str, value: str) -> str:
    duration_ms(what, value)
    return value


def _positive(what: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{what} must be a positive, finite number, got {value!r}")
    return float(value)


def _percent(share: float) -> str:
    """``0.05`` as ``5%``, ``0.004`` as ``0.4%``: never rounded down to ``0%``."""
    return f"{share * 100:.3g}%"


def _ratio_threshold(what: str, value: float) -> float:
    if _positive(what, value) >= 1:
        raise ValueError(f"{what} is a share between 0 and 1 (0.05 is 5%), got {value!r}")
    return float(value)


def _camel(namespace: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in namespace.split("_") if part)


@dataclass(frozen=True)
class _Record:
    """A recording rule; ``key`` is how the rules after it name its series (``metric:op``:
    never a metric's own key, which has no colon)."""

    key: str
    labels: tuple[str, ...]
    #: The metric whose name is the middle of the rule's name.
    metric: str
    expr: Expr
    op: str = "rate"
    suffix: str = ""

    def name(self, names: Mapping[str, str], window: str) -> str:
        # level:metric:operations, the naming Prometheus' docs recommend; counters drop _total.
        # job is kept by every rule, so it is not part of the level (as those docs do).
        metric = (names[self.metric] + self.suffix).removesuffix("_total")
        level = "_".join(label for label in self.labels if label != "job")
        return f"{level}:{metric}:{self.op}{window}"


@dataclass(frozen=True)
class _Alert:
    """An alert: ``value > threshold``. ``threshold`` and ``for_`` name keywords of
    :func:`build_rules` (a number is the threshold itself; no ``for_`` fires at once). In
    ``summary`` and ``description``, ``%(name)s`` is a keyword's value as a reader wants it
    (a ratio as a percentage), ``window``, or a metric's name."""

    name: str
    value: Expr
    threshold: str | float
    for_: str | None
    summary: str
    description: str
    severity: str = "warning"


def _rate(key: str, labels: tuple[str, ...], metric: str, suffix: str = "") -> _Record:
    """The per-second rate of ``metric``, summed by ``labels``."""
    rated = Sum(Rate(Series(metric, suffix=suffix)), labels)
    return _Record(key, labels, metric, rated, suffix=suffix)


def _share(part: Series, whole: str, by: tuple[str, ...]) -> Ratio:
    """The share of a recorded rate that ``part`` selects, ``by`` these labels."""
    return Ratio(Sum(part, by), Sum(Series(whole), by), by)


# job stays in every recording, so an alert says which job is failing.
_BY_ANALYSIS = ("job", "module", "analysis_type")
_BY_MODEL = ("job", "provider", "model")


@dataclass(frozen=True)
class _AtLeast(Expr):
    """``of``, raised to ``minimum`` where below it (a divisor that may be 0)."""

    of: Expr
    minimum: float

    def promql(self, ctx: Context) -> str:
        return f"clamp_min({self.of.promql(ctx)}, {number(self.minimum)})"


_ERROR = ('status="error"',)

#: The rule groups, by area. Recording rules keep the rates the alerts after them share;
#: a group is evaluated in order.
_GROUPS: tuple[tuple[str, tuple[_Record | _Alert, ...]], ...] = (
    ("analyses", (
        _rate("analyses:rate", (*_BY_ANALYSIS, "status"), "analyses"),
        _Record("analyses:error_ratio", _BY_ANALYSIS, "analyses",
                _share(Series("analyses:rate", _ERROR), "analyses:rate", _BY_ANALYSIS),
                op="error_ratio_rate"),
        _rate("analysis_duration_bucket:rate", (*_BY_ANALYSIS, "le"), "analysis_duration",
              "_bucket"),
        _Alert("AnalysisErrorRatioHigh", Series("analyses:error_ratio"), "error_ratio",
               "error_ratio_for",
               summary="{{ $labels.module }}/{{ $labels.analysis_type }}: "
               "{{ $value | humanizePercentage }} of analyses fail",
               description="More than %(error_ratio)s of {{ $labels.module }}/"
               "{{ $labels.analysis_type }} analyses raised over the last %(window)s. "
               "Look at %(analysis_errors)s by error_type for the exception classes."),
        _Alert("AnalysisDurationHigh",
               Quantile(0.95, Series("analysis_duration_bucket:rate"), _BY_ANALYSIS),
               "duration_p95_seconds", "duration_for",
               summary="{{ $labels.module }}/{{ $labels.analysis_type }}: p95 duration "
               "{{ $value | humanizeDuration }}",
               description="The 95th percentile duration of {{ $labels.module }}/"
               "{{ $labels.analysis_type }} analyses is above %(duration_p95_seconds)s s over "
               "the last %(window)s. Check the input size and the hosts running them."),
        _Alert("JobActiveTooLong", Series("active_jobs"), 0, "job_active_for",
               summary="{{ $labels.job_type }}: {{ $value }} job(s) active for "
               "%(job_active_for)s without a break",
               description="{{ $labels.job_type }} jobs of {{ $labels.job }} have been in flight "
               "without a break for %(job_active_for)s: a hung job, or a process that died "
               "mid-job and left its gauge in the Pushgateway (delete that group)."),
    )),
    ("ai", (
        _rate("ai_api_calls:rate", (*_BY_MODEL, "status"), "ai_api_calls"),
        _rate("ai_api_errors:rate", (*_BY_MODEL, "http_status"), "ai_api_errors"),
        _rate("ai_tokens:rate", (*_BY_MODEL, "token_type"), "ai_tokens"),
        _Record("ai_api_calls:error_ratio", _BY_MODEL, "ai_api_calls",
                _share(Series("ai_api_calls:rate", _ERROR), "ai_api_calls:rate", _BY_MODEL),
                op="error_ratio_rate"),
        _Record("ai_api_calls:rate_limited_ratio", _BY_MODEL, "ai_api_calls",
                _share(Series("ai_api_errors:rate", ('http_status="429"',)), "ai_api_calls:rate",
                       _BY_MODEL),
                op="rate_limited_ratio_rate"),
        _Alert("AIErrorSpike", Series("ai_api_calls:error_ratio"), "ai_error_ratio", "ai_for",
               summary="{{ $labels.provider }}/{{ $labels.model }}: "
               "{{ $value | humanizePercentage }} of AI calls fail",
               description="More than %(ai_error_ratio)s of {{ $labels.provider }}/"
               "{{ $labels.model }} calls failed over the last %(window)s, rate limits (429) "
               "included. %(ai_api_errors)s by error_type and http_status tells which."),
        _Alert("AIRateLimited", Series("ai_api_calls:rate_limited_ratio"),
               "ai_rate_limited_ratio", "ai_for",
               summary="{{ $labels.provider }}/{{ $labels.model }}: "
               "{{ $value | humanizePercentage }} of AI calls rate limited (429)",
               description="More than %(ai_rate_limited_ratio)s of {{ $labels.provider }}/"
               "{{ $labels.model }} calls got HTTP 429 over the last %(window)s: slow down, "
               "back off on Retry-After, or raise the quota."),
        # The share of a rate limit used, against the most the provider said was left over
        # the last day (its headers report what remains, not the limit itself). A limit
        # at 0 all day is all used (0 / 0 would be no value, never firing). Only while
        # calls come: the gauge keeps what the last call saw, and once they stop, nobody
        # sees the window reset (a stale 2 left would fire for a day).
        _Alert("AIRateLimitHeadroomLow",
               Op(Op(1, "-", Op(Series("ai_rate_limit_remaining"), "/",
                                _AtLeast(MaxOverTime(Series("ai_rate_limit_remaining"), "1d"),
                                         1), True)),
                  "and on (job, instance, provider, model)",
                  Op(Rate(Series("ai_api_calls")), ">", 0, True), True),
               0.9, "ai_for",
               summary="{{ $labels.provider }}/{{ $labels.model }}: "
               "{{ $value | humanizePercentage }} of the {{ $labels.limit }} rate limit used",
               description="The {{ $labels.limit }} left in {{ $labels.provider }}/"
               "{{ $labels.model }}'s rate limit (%(ai_rate_limit_remaining)s) is under 10%% "
               "of the most seen over the last day, and calls keep coming: 429s come next. "
               "Slow down or raise the quota."),
        _Alert("AITokenBurnHigh", Op(Sum(Series("ai_tokens:rate"), _BY_MODEL), "*", 3600),
               "tokens_per_hour", "tokens_for",
               summary="{{ $labels.provider }}/{{ $labels.model }}: "
               "{{ $value | humanize }} tokens per hour",
               description="{{ $labels.provider }}/{{ $labels.model }} consumes tokens (input "
               "and output) faster than %(tokens_per_hour)s per hour, measured over the last "
               "%(window)s. Check for loops or retries resending large prompts."),
    )),
    ("delivery", (
        # A process's first push carries 0 (no success yet): not a silence. A group whose
        # last push says no job is in flight (every active_jobs gauge at 0: what a batch
        # process pushes as it finishes) is done, not silent; a deleted group has no series.
        _Alert("PushSilent",
               Op(Op("time()", "-", Op(Series("last_push_success"), ">", 0, True), True),
                  "unless", Op(Max(Series("active_jobs"), without=("job_type",)), "==", 0, True),
                  True),
               "push_silent_seconds", None,
               summary="{{ $labels.job }}: no successful push for "
               "{{ $value | humanizeDuration }}",
               description="The last successful Pushgateway push of job {{ $labels.job }} is "
               "more than %(push_silent_seconds)s s old: the process is stuck, idle, or cannot "
               "reach the gateway. A process that finished (no job in flight in its last push) "
               "or deleted its group (delete_on_exit=True) does not fire this."),
    )),
)  # fmt: skip

# build_rules' keywords by kind, each kind checked in this order.
_DURATIONS = (
    "window", "error_ratio_for", "duration_for", "job_active_for", "ai_for", "tokens_for",
    "slo_page_for", "slo_ticket_for", "spend_for",
)  # fmt: skip
_SHARES = ("error_ratio", "ai_error_ratio", "ai_rate_limited_ratio")
_AMOUNTS = ("duration_p95_seconds", "tokens_per_hour", "push_silent_seconds")
_DURATION_BUCKETS = "analysis_duration_seconds"
# How long a burn must last before the objectives' alerts fire.
_SLO_PAGE_FOR = "2m"
_SLO_TICKET_FOR = "15m"


def _render(
    rule: _Record | _Alert,
    ctx: Context,
    prefix: str,
    settings: Mapping[str, Any],
    texts: Mapping[str, str],
    links: _Links,
) -> dict[str, Any]:
    """One rule of the table as Prometheus reads it; ``texts`` fill its annotations,
    ``links`` add its runbook and dashboard."""
    if isinstance(rule, _Record):
        return {"record": ctx.names[rule.key], "expr": rule.expr.promql(ctx)}
    threshold = settings[rule.threshold] if isinstance(rule.threshold, str) else rule.threshold
    # The threshold comparison is always last, so the value expression stays queryable.
    out: dict[str, Any] = {
        "alert": prefix + rule.name,
        "expr": f"{rule.value.promql(ctx)} > {number(threshold)}",
    }
    if rule.for_ is not None:
        out["for"] = settings[rule.for_]
    out["labels"] = {"severity": rule.severity}
    out["annotations"] = {
        "summary": rule.summary % texts,
        "description": rule.description % texts,
        **links(out["alert"]),
    }
    return out


class _Links:
    """The annotations that link an alert: its runbook (``runbook_base_url`` + its name)
    and the generated dashboard (``grafana_url`` + ``/d/`` + its uid)."""

    def __init__(self, runbook_base_url: str | None, grafana_url: str | None, uid: str) -> None:
        self.runbook = (
            None
            if runbook_base_url is None
            else check_link_base("runbook_base_url", runbook_base_url)
        )
        grafana = "" if grafana_url is None else check_link_base("grafana_url", grafana_url)
        self.dashboard = f"{grafana}/d/{check_uid(uid)}"

    def __call__(self, alert: str) -> dict[str, str]:
        runbook = {} if self.runbook is None else {"runbook_url": f"{self.runbook}/{alert}"}
        return {**runbook, "dashboard_url": self.dashboard}


def check_link_base(what: str, url: str) -> str:
    """The base of a link annotation (no trailing slash), or a ValueError naming ``what``:
    an http(s) URL without credentials, which every receiver of the alert would show."""
    base, credentials = split_url(url, what=what, example="https://wiki.example.com/runbooks")
    if credentials is not None:
        # Annotations go to every receiver and UI that shows the alert.
        raise ValueError(
            f"{what} holds credentials; an annotation is shown wherever the alert goes, so "
            "give the URL without user:password@"
        )
    return base


def _slo_entries(
    source: Source, given: Sequence[tuple[Objective, Sequence[Coverage]]] | None
) -> list[tuple[Objective, tuple[Coverage, ...]]]:
    """The objectives to write rules for: ``given``, else what an Instrumentation's decorators
    declared; each checked against the histograms ``source`` records."""
    if given is None:
        coverage = getattr(source, "objective_coverage", None)
        given = coverage() if callable(coverage) else []
    entries: list[tuple[Objective, tuple[Coverage, ...]]] = []
    seen: dict[str, Objective] = {}
    for entry in given:
        objective, covered = entry
        if not isinstance(objective, Objective) or not all(
            isinstance(c, Coverage) for c in covered
        ):
            raise TypeError(
                "objectives= takes (Objective, coverage) pairs, as Instrumentation."
                "objective_coverage() returns them"
            )
        if seen.setdefault(objective.name, objective) != objective:
            raise ValueError(f"two different objectives are named {objective.name!r}; rename one")
        for c in covered:
            check_measurable(objective, c.histogram_suffix, buckets_of(source, c.histogram_suffix))
        if covered:
            entries.append((objective, tuple(covered)))
    return entries


def build_rules(
    inst_or_metrics: Source,
    *,
    window: str = "5m",
    error_ratio: float = 0.05,
    error_ratio_for: str = "10m",
    duration_p95_seconds: float = 300,
    duration_for: str = "15m",
    job_active_for: str = "1h",
    ai_error_ratio: float = 0.1,
    ai_rate_limited_ratio: float = 0.05,
    ai_for: str = "5m",
    tokens_per_hour: float = 1_000_000,
    tokens_for: str = "15m",
    push_silent_seconds: float = 900,
    objectives: Sequence[tuple[Objective, Sequence[Coverage]]] | None = None,
    slo_page_for: str = _SLO_PAGE_FOR,
    slo_ticket_for: str = _SLO_TICKET_FOR,
    monthly_budget_usd: float | None = None,
    spend_for: str = "1h",
    runbook_base_url: str | None = None,
    grafana_url: str | None = None,
    dashboard_uid: str = "codomyrmex-analytics",
) -> dict[str, Any]:
    """The rule groups (``{"groups": [...]}``) for the metrics of one namespace.

    >>> groups = build_rules("codomyrmex")["groups"]
    >>> [group["name"] for group in groups]
    ['codomyrmex.analyses', 'codomyrmex.ai', 'codomyrmex.delivery']

    Thresholds are keywords: ratios are shares (0.05 is 5%), durations Prometheus
    durations ('10m'), ``window`` the rate window every recording rule uses.

    For an Instrumentation, each objective its decorators declared (``objective=``) adds a
    group of burn-rate rules (``objectives=`` gives them for any source, as
    :meth:`Instrumentation.objective_coverage` lists them); ``monthly_budget_usd`` adds the
    AI spend alert. Every alert links ``runbook_base_url``/<alert name> and the dashboard
    (``grafana_url``/d/``dashboard_uid``).
    """
    given: dict[str, Any] = {
        "window": window,
        "error_ratio": error_ratio,
        "error_ratio_for": error_ratio_for,
        "duration_p95_seconds": duration_p95_seconds,
        "duration_for": duration_for,
        "job_active_for": job_active_for,
        "ai_error_ratio": ai_error_ratio,
        "ai_rate_limited_ratio": ai_rate_limited_ratio,
        "ai_for": ai_for,
        "tokens_per_hour": tokens_per_hour,
        "tokens_for": tokens_for,
        "push_silent_seconds": push_silent_seconds,
        "slo_page_for": slo_page_for,
        "slo_ticket_for": slo_ticket_for,
        "spend_for": spend_for,
    }
    settings: dict[str, Any] = {name: _duration(name, given[name]) for name in _DURATIONS}
    settings.update((name, _ratio_threshold(name, given[name])) for name in _SHARES)
    settings.update((name, _positive(name, given[name])) for name in _AMOUNTS)

    ns = namespace_of(inst_or_metrics)
    names = metric_names(ns)
    # histogram_quantile() answers at most the largest finite bucket bound (an observation
    # above it lands in +Inf), so a threshold at or above that bound never fires.
    finite = [b for b in buckets_of(inst_or_metrics, _DURATION_BUCKETS) if math.isfinite(b)]
    p95 = settings["duration_p95_seconds"]
    if finite and p95 >= max(finite):
        raise ValueError(
            f"duration_p95_seconds={number(p95)} can never fire: the p95 "
            f"estimated from the {names['analysis_duration']} buckets is at most their largest "
            f"finite bound, {number(max(finite))} s; use a lower threshold, or record with a "
            "larger bucket (buckets=)"
        )
    window = settings["window"]
    records = [r for _, rules in _GROUPS for r in rules if isinstance(r, _Record)]
    ctx = Context({**names, **{r.key: r.name(names, window) for r in records}}, window)
    texts = {
        **names,
        **{name: settings[name] for name in _DURATIONS},
        **{name: _percent(settings[name]) for name in _SHARES},
        **{name: number(settings[name]) for name in _AMOUNTS},
    }
    prefix = _camel(ns)
    links = _Links(runbook_base_url, grafana_url, dashboard_uid)
    groups: list[dict[str, Any]] = [
        {
            "name": f"{ns}.{area}",
            "rules": [_render(rule, ctx, prefix, settings, texts, links) for rule in rules],
        }
        for area, rules in _GROUPS
    ]
    if monthly_budget_usd is not None:
        settings["monthly_budget_usd"] = _positive("monthly_budget_usd", monthly_budget_usd)
        texts["monthly_budget_usd"] = number(settings["monthly_budget_usd"])
        spend = _render(_SPEND, replace(ctx, range_window="1d"), prefix, settings, texts, links)
        groups[1]["rules"].append(spend)
    for objective, covered in _slo_entries(inst_or_metrics, objectives):
        groups.append(
            objective_group(
                ns, prefix, names, objective, covered,
                page_for=settings["slo_page_for"],
                ticket_for=settings["slo_ticket_for"],
                links=links,
            )
        )  # fmt: skip
    return {"groups": groups}


# The spend projected over 30 days from the last day's: the budget is monthly.
_SPEND = _Alert(
    "AISpendOverBudget", Op(Sum(Increase(Series("ai_cost"))), "*", 30), "monthly_budget_usd",
    "spend_for",
    summary="AI spend projected at {{ $value | printf \"%%.2f\" }} USD over 30 days",
    description="At the last day's rate, AI calls would cost {{ $value | printf \"%%.2f\" }} "
    "USD over 30 days, above the monthly budget of %(monthly_budget_usd)s USD. "
    "%(ai_cost)s by provider and model tells which calls spend it.",
)  # fmt: skip


def rules_yaml(inst_or_metrics: Source, **thresholds: Any) -> str:
    """The rule file ``instrument rules`` writes: :func:`build_rules` as YAML."""
    namespace = namespace_of(inst_or_metrics)
    header = (
        f"# Prometheus rules for the {namespace}_* metrics, generated by `instrument rules`.\n"
        "# Regenerate instead of editing; check with `promtool check rules`.\n"
    )
    return header + to_yaml(build_rules(inst_or_metrics, **thresholds))


def rules_tests_yaml(inst_or_metrics: Source, rule_file: str, **thresholds: Any) -> str:
    """A promtool unit-test file (``promtool test rules FILE``) for the objectives' alerts
    of the rules :func:`build_rules` makes with ``thresholds``, read from ``rule_file``
    (relative to the test file); the cases are listed in ``_slo.objective_tests``."""
    rules = build_rules(inst_or_metrics, **thresholds)
    ns = namespace_of(inst_or_metrics)
    tests = objective_tests(
        rule_file,
        ns,
        metric_names(ns),
        rules["groups"],
        _slo_entries(inst_or_metrics, thresholds.get("objectives")),
        page_for=_duration("slo_page_for", thresholds.get("slo_page_for", _SLO_PAGE_FOR)),
        ticket_for=_duration("slo_ticket_for", thresholds.get("slo_ticket_for", _SLO_TICKET_FOR)),
    )
    header = "# promtool unit tests of the objectives' alerts, generated by `instrument rules`.\n"
    return header + to_yaml(tests)
