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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._promql import (
    Context,
    Expr,
    Op,
    Quantile,
    Rate,
    Ratio,
    Series,
    Source,
    Sum,
    buckets_of,
    namespace_of,
    number,
)
from .metrics import metric_names

__all__ = ["build_rules", "rules_yaml", "to_yaml"]

# Prometheus' own duration syntax (model.ParseDuration): each unit at most once, largest
# first. ASCII digits only, as Go's \d means.
_DURATION_RE = re.compile(
    r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$", re.ASCII
)
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


def _duration(what: str, value: str) -> str:
    match = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    total = 0
    if match:
        total = sum(int(match[2 * i + 2] or 0) * ms for i, ms in enumerate(_DURATION_UNITS_MS))
    # Prometheus keeps a duration in int64 nanoseconds and refuses 0 for a rate window.
    if not 0 < total * 1_000_000 < 2**63:
        raise ValueError(
            f"{what} must be a Prometheus duration above zero, its units largest first, such "
            f"as '5m', '1h30m' or '90s', got {value!r}"
        )
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
        metric = (names[self.metric] + self.suffix).removesuffix("_total")
        return f"{'_'.join(self.labels)}:{metric}:{self.op}{window}"


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


_BY_ANALYSIS = ("module", "analysis_type")
_BY_MODEL = ("provider", "model")
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
        _Alert("AITokenBurnHigh", Op(Sum(Series("ai_tokens:rate"), _BY_MODEL), "*", 3600),
               "tokens_per_hour", "tokens_for",
               summary="{{ $labels.provider }}/{{ $labels.model }}: "
               "{{ $value | humanize }} tokens per hour",
               description="{{ $labels.provider }}/{{ $labels.model }} consumes tokens (input "
               "and output) faster than %(tokens_per_hour)s per hour, measured over the last "
               "%(window)s. Check for loops or retries resending large prompts."),
    )),
    ("delivery", (
        # A process's first push carries 0 (no success yet): not a silence.
        _Alert("PushSilent", Op("time()", "-", Op(Series("last_push_success"), ">", 0, True)),
               "push_silent_seconds", None,
               summary="{{ $labels.job }}: no successful push for "
               "{{ $value | humanizeDuration }}",
               description="The last successful Pushgateway push of job {{ $labels.job }} is "
               "more than %(push_silent_seconds)s s old: the process is stuck, idle, or cannot "
               "reach the gateway. If it ended on purpose, delete its group from the "
               "Pushgateway (delete_on_exit=True)."),
    )),
)  # fmt: skip

# build_rules' keywords by kind, each kind checked in this order.
_DURATIONS = ("window", "error_ratio_for", "duration_for", "job_active_for", "ai_for", "tokens_for")
_SHARES = ("error_ratio", "ai_error_ratio", "ai_rate_limited_ratio")
_AMOUNTS = ("duration_p95_seconds", "tokens_per_hour", "push_silent_seconds")
_DURATION_BUCKETS = "analysis_duration_seconds"


def _render(
    rule: _Record | _Alert,
    ctx: Context,
    prefix: str,
    settings: Mapping[str, Any],
    texts: Mapping[str, str],
) -> dict[str, Any]:
    """One rule of the table as Prometheus reads it; ``texts`` fill its annotations."""
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
    out["annotations"] = {"summary": rule.summary % texts, "description": rule.description % texts}
    return out


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
) -> dict[str, Any]:
    """The rule groups (``{"groups": [...]}``) for the metrics of one namespace.

    >>> groups = build_rules("codomyrmex")["groups"]
    >>> [group["name"] for group in groups]
    ['codomyrmex.analyses', 'codomyrmex.ai', 'codomyrmex.delivery']

    Thresholds are keywords: ratios are shares (0.05 is 5%), durations Prometheus
    durations ('10m'), ``window`` the rate window every recording rule uses.
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
    return {
        "groups": [
            {
                "name": f"{ns}.{area}",
                "rules": [_render(rule, ctx, prefix, settings, texts) for rule in rules],
            }
            for area, rules in _GROUPS
        ]
    }


def rules_yaml(inst_or_metrics: Source, **thresholds: Any) -> str:
    """The rule file ``instrument rules`` writes: :func:`build_rules` as YAML."""
    namespace = namespace_of(inst_or_metrics)
    header = (
        f"# Prometheus rules for the {namespace}_* metrics, generated by `instrument rules`.\n"
        "# Regenerate instead of editing; check with `promtool check rules`.\n"
    )
    return header + to_yaml(build_rules(inst_or_metrics, **thresholds))


# -- a small YAML emitter ------------------------------------------------------------------

_PLAIN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*(:[A-Za-z0-9_./-]+)*$")
# Words that YAML 1.1 (Go's yaml.v2, PyYAML) or 1.2 read as booleans or null.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\0": "\\0",
}


def _string(value: str) -> str:
    # fullmatch: "$" alone would also match before a final newline, which plain YAML drops.
    plain = _PLAIN_RE.fullmatch(value) or (value and _DURATION_RE.fullmatch(value))
    if plain and value.lower() not in _RESERVED:
        return value
    if value.isprintable():
        # Single quotes take everything printable literally; only ' is doubled.
        return "'" + value.replace("'", "''") + "'"
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 needs a dot in a float ("1e-05" would read as a string).
        mantissa, e, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + (e + exponent if e else "")
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML: use dicts, lists, str, numbers")


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"YAML keys must be strings here, got {key!r}")
            head = f"{pad}{_string(key)}:"
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(head)
                _emit(item, indent + 2, lines)
            else:
                lines.append(f"{head} {_inline(item)}")
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, Mapping | list | tuple) and item:
                nested: list[str] = []
                _emit(item, indent + 2, nested)
                # The first line of the nested block goes after the dash.
                lines.append(f"{pad}- {nested[0][indent + 2 :]}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(value))


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def to_yaml(data: Mapping[str, Any] | list[Any] | tuple[Any, ...]) -> str:
    """``data`` (dicts with string keys, lists, str, int, float, bool, None) as block YAML."""
    if not isinstance(data, Mapping | list | tuple):
        raise TypeError("to_yaml writes a mapping or a list")
    lines: list[str] = []
    _emit(data, 0, lines)
    return "\n".join(lines) + "\n" if lines else ("{}\n" if isinstance(data, Mapping) else "[]\n")
