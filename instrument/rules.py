"""Prometheus recording and alerting rules, generated from the metric definitions.

:func:`build_rules` returns the rule groups as plain data; :func:`rules_yaml` writes them
as the YAML file Prometheus loads (``rule_files:``) and ``promtool check rules`` accepts.
The YAML is written by :func:`to_yaml`, a small emitter for this subset (mappings, lists,
strings, numbers, booleans) that quotes every string that could read as something else,
so no YAML library is needed at runtime.

Recording rules keep the 5-minute rates the alerts share; the alerts read them, so both
live in one group per area and are evaluated in order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._promql import (
    Source,
    buckets_of,
    histogram_quantile,
    namespace_of,
    number,
    rate,
    ratio,
    series,
    sum_by,
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


def _alert(
    name: str,
    expr: str,
    threshold: float,
    *,
    for_: str | None,
    summary: str,
    description: str,
    severity: str = "warning",
) -> dict[str, Any]:
    # The threshold comparison is always last, so the value expression stays queryable.
    rule: dict[str, Any] = {"alert": name, "expr": f"{expr} > {number(threshold)}"}
    if for_ is not None:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def _record(name: str, expr: str) -> dict[str, Any]:
    return {"record": name, "expr": expr}


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
    window = _duration("window", window)
    for what, value in (
        ("error_ratio_for", error_ratio_for),
        ("duration_for", duration_for),
        ("job_active_for", job_active_for),
        ("ai_for", ai_for),
        ("tokens_for", tokens_for),
    ):
        _duration(what, value)
    error_ratio = _ratio_threshold("error_ratio", error_ratio)
    ai_error_ratio = _ratio_threshold("ai_error_ratio", ai_error_ratio)
    ai_rate_limited_ratio = _ratio_threshold("ai_rate_limited_ratio", ai_rate_limited_ratio)
    duration_p95_seconds = _positive("duration_p95_seconds", duration_p95_seconds)
    tokens_per_hour = _positive("tokens_per_hour", tokens_per_hour)
    push_silent_seconds = _positive("push_silent_seconds", push_silent_seconds)

    ns = namespace_of(inst_or_metrics)
    n = metric_names(ns)
    # histogram_quantile() answers at most the largest finite bucket bound (an observation
    # above it lands in +Inf), so a threshold at or above that bound never fires.
    buckets = buckets_of(inst_or_metrics, "analysis_duration_seconds")
    finite = [b for b in buckets if math.isfinite(b)]
    if finite and duration_p95_seconds >= max(finite):
        raise ValueError(
            f"duration_p95_seconds={number(duration_p95_seconds)} can never fire: the p95 "
            f"estimated from the {n['analysis_duration']} buckets is at most their largest "
            f"finite bound, {number(max(finite))} s; use a lower threshold, or record with a "
            "larger bucket (buckets=)"
        )
    prefix = _camel(ns)
    suffix = f"rate{window}"
    by_analysis = ("module", "analysis_type")
    by_model = ("provider", "model")

    def recorded(
        labels: Sequence[str], attr: str, metric: str | None = None, op: str = suffix
    ) -> str:
        # level:metric:operations, the naming Prometheus' docs recommend; counters drop _total.
        name = (metric or n[attr]).removesuffix("_total")
        return f"{'_'.join(labels)}:{name}:{op}"

    def rate_rule(labels: Sequence[str], attr: str, metric: str | None = None) -> dict[str, Any]:
        return _record(
            recorded(labels, attr, metric), sum_by(rate(metric or n[attr], window), labels)
        )

    analyses = recorded((*by_analysis, "status"), "analyses")
    analysis_errors = recorded(by_analysis, "analyses", op=f"error_ratio_{suffix}")
    bucket = f"{n['analysis_duration']}_bucket"
    duration_buckets = recorded((*by_analysis, "le"), "analysis_duration", bucket)
    analysis_group = {
        "name": f"{ns}.analyses",
        "rules": [
            rate_rule((*by_analysis, "status"), "analyses"),
            _record(
                analysis_errors,
                ratio(
                    sum_by(series(analyses, 'status="error"'), by_analysis),
                    sum_by(analyses, by_analysis),
                    by_analysis,
                ),
            ),
            rate_rule((*by_analysis, "le"), "analysis_duration", bucket),
            _alert(
                f"{prefix}AnalysisErrorRatioHigh",
                analysis_errors,
                error_ratio,
                for_=error_ratio_for,
                summary="{{ $labels.module }}/{{ $labels.analysis_type }}: "
                "{{ $value | humanizePercentage }} of analyses fail",
                description=f"More than {_percent(error_ratio)} of {{{{ $labels.module }}}}/"
                f"{{{{ $labels.analysis_type }}}} analyses raised over the last {window}. "
                f"Look at {n['analysis_errors']} by error_type for the exception classes.",
            ),
            _alert(
                f"{prefix}AnalysisDurationHigh",
                histogram_quantile(0.95, duration_buckets, by_analysis),
                duration_p95_seconds,
                for_=duration_for,
                summary="{{ $labels.module }}/{{ $labels.analysis_type }}: p95 duration "
                "{{ $value | humanizeDuration }}",
                description="The 95th percentile duration of {{ $labels.module }}/"
                "{{ $labels.analysis_type }} analyses is above "
                f"{number(duration_p95_seconds)} s over the last {window}. Check the input "
                "size and the hosts running them.",
            ),
            _alert(
                f"{prefix}JobActiveTooLong",
                n["active_jobs"],
                0,
                for_=job_active_for,
                summary="{{ $labels.job_type }}: {{ $value }} job(s) active for "
                f"{job_active_for} without a break",
                description="{{ $labels.job_type }} jobs of {{ $labels.job }} have been in "
                f"flight without a break for {job_active_for}: a hung job, or a process that "
                "died mid-job and left its gauge in the Pushgateway (delete that group).",
            ),
        ],
    }

    calls = recorded((*by_model, "status"), "ai_api_calls")
    errors = recorded((*by_model, "http_status"), "ai_api_errors")
    tokens = recorded((*by_model, "token_type"), "ai_tokens")
    ai_errors = recorded(by_model, "ai_api_calls", op=f"error_ratio_{suffix}")
    ai_rate_limited = recorded(by_model, "ai_api_calls", op=f"rate_limited_ratio_{suffix}")
    all_calls = sum_by(calls, by_model)
    ai_group = {
        "name": f"{ns}.ai",
        "rules": [
            rate_rule((*by_model, "status"), "ai_api_calls"),
            rate_rule((*by_model, "http_status"), "ai_api_errors"),
            rate_rule((*by_model, "token_type"), "ai_tokens"),
            _record(
                ai_errors,
                ratio(sum_by(series(calls, 'status="error"'), by_model), all_calls, by_model),
            ),
            _record(
                ai_rate_limited,
                ratio(sum_by(series(errors, 'http_status="429"'), by_model), all_calls, by_model),
            ),
            _alert(
                f"{prefix}AIErrorSpike",
                ai_errors,
                ai_error_ratio,
                for_=ai_for,
                summary="{{ $labels.provider }}/{{ $labels.model }}: "
                "{{ $value | humanizePercentage }} of AI calls fail",
                description=f"More than {_percent(ai_error_ratio)} of {{{{ $labels.provider }}}}/"
                f"{{{{ $labels.model }}}} calls failed over the last {window}, rate limits (429) "
                f"included. {n['ai_api_errors']} by error_type and http_status tells which.",
            ),
            _alert(
                f"{prefix}AIRateLimited",
                ai_rate_limited,
                ai_rate_limited_ratio,
                for_=ai_for,
                summary="{{ $labels.provider }}/{{ $labels.model }}: "
                "{{ $value | humanizePercentage }} of AI calls rate limited (429)",
                description=f"More than {_percent(ai_rate_limited_ratio)} of "
                f"{{{{ $labels.provider }}}}/{{{{ $labels.model }}}} calls got HTTP 429 over "
                f"the last {window}: slow down, back off on Retry-After, or raise the quota.",
            ),
            _alert(
                f"{prefix}AITokenBurnHigh",
                f"{sum_by(tokens, by_model)} * 3600",
                tokens_per_hour,
                for_=tokens_for,
                summary="{{ $labels.provider }}/{{ $labels.model }}: "
                "{{ $value | humanize }} tokens per hour",
                description="{{ $labels.provider }}/{{ $labels.model }} consumes tokens (input "
                f"and output) faster than {number(tokens_per_hour)} per hour, measured over "
                f"the last {window}. Check for loops or retries resending large prompts.",
            ),
        ],
    }

    delivery_group = {
        "name": f"{ns}.delivery",
        "rules": [
            _alert(
                f"{prefix}PushSilent",
                # A process's first push carries 0 (no success yet): not a silence.
                f"time() - ({n['last_push_success']} > 0)",
                push_silent_seconds,
                for_=None,
                summary="{{ $labels.job }}: no successful push for {{ $value | humanizeDuration }}",
                description="The last successful Pushgateway push of job {{ $labels.job }} "
                f"is more than {number(push_silent_seconds)} s old: "
                "the process is stuck, idle, or cannot reach the gateway. If it ended on "
                "purpose, delete its group from the Pushgateway (delete_on_exit=True).",
            ),
        ],
    }
    return {"groups": [analysis_group, ai_group, delivery_group]}


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
