"""The Grafana dashboard, generated from the metric definitions in ``metrics.py``.

Panels follow the RED method: rates, error ratios and duration quantiles for analyses and
AI calls, plus the gauges (active jobs, quality scores), tokens, usage coverage, cost and the
delivery self-metrics. The panels are a table (:data:`_ROWS`): one entry per panel, its
queries PromQL trees from ``_promql`` that name metrics by key; :func:`_layout` renders the
table for one namespace, so ``build_dashboard("other")`` queries ``other_*`` throughout.
"""

from __future__ import annotations

import json
import re
from copy import deepcopy
from typing import Any

from ._panels import AI as _AI
from ._panels import BY_MODEL as _BY_MODEL
from ._panels import LLM_OUTCOMES, TRACE_LINK, TRACES_VARIABLE, PanelKind, spend_by
from ._panels import NONE_IS_ZERO as _NONE_IS_ZERO
from ._panels import PER_MODEL as _PER_MODEL
from ._panels import SHARE as _SHARE
from ._panels import Panel as _Panel
from ._panels import Query as _Query
from ._panels import ai as _ai
from ._panels import calls as _calls
from ._panels import count as _count
from ._panels import latency as _latency
from ._panels import quantile as _quantile
from ._panels import stat as _stat
from ._panels import ts as _ts
from ._promql import (
    Context,
    Max,
    Op,
    OrZero,
    Rate,
    Ratio,
    Series,
    Source,
    Sum,
    max_by,
    namespace_of,
    series,
)
from ._slo import recorded_series
from .metrics import Metrics, metric_names

__all__ = ["SCHEMA_VERSION", "build_dashboard", "check_uid", "dashboard_json", "panel_queries"]

#: The dashboard model version written (Grafana 12).
SCHEMA_VERSION = 41

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_ANALYSIS = ('module=~"$module"', 'analysis_type=~"$analysis_type"')
_UID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
_GRID_WIDTH = 24


def _analyses(*where: str, by: tuple[str, ...] = (), over_range: bool = False) -> Sum:
    return _count("analyses", (*_ANALYSIS, *where), by, over_range)


_BY_ANALYSIS = ("module", "analysis_type")
_ERROR = 'status="error"'
_PER_ANALYSIS = "{{module}} / {{analysis_type}}"
_QUALITY = _Query(
    Max(Series("code_quality_score", _ANALYSIS[:1]), ("project", "module")),
    "{{project}} / {{module}}",
)
_PER_OBJECTIVE = "{{objective}} ({{job}})"
_PER_BUDGET = "/ on (sloth_id) group_left()"  # one budget per objective, a ratio per job


def _releases(names: dict[str, str]) -> dict[str, Any]:
    """Where a build starts reporting: a latency step lines up with its release."""
    now = max_by(names["build_info"], by := ("job", "version", "commit", "branch"))
    return {
        "name": "Releases", "datasource": dict(_DATASOURCE), "enable": True, "iconColor": "blue",
        "expr": f"{now} unless {max_by(names['build_info'] + ' offset 5m', by)}", "step": "1m",
        "titleFormat": "{{job}} {{version}}", "textFormat": "commit {{commit}} on {{branch}}",
        "tagKeys": "job,version",
    }  # fmt: skip


#: The dashboard: its rows top to bottom (the first without a title bar), each row's panels
#: left to right, wrapping at Grafana's 24 columns.
_ROWS: tuple[tuple[str | None, tuple[_Panel, ...]], ...] = (
    (None, (
        _stat("Analyses", "Analyses finished in the picked time range, every status.", "short",
              _Query(_analyses(over_range=True), "analyses"), decimals=0),
        _stat("Analysis errors", "Share of the analyses in the picked time range that raised.",
              "percentunit",
              _Query(Ratio(_analyses(_ERROR, over_range=True), _analyses(over_range=True)),
                     "errors")),
        _stat("Active jobs", "Jobs in flight right now, summed over every pushing process.",
              "short", _Query(Sum(Series("active_jobs")), "active"), decimals=0),
        _stat("AI calls", "LLM API calls in the picked time range, every status.", "short",
              _Query(_calls(over_range=True), "calls"), decimals=0),
        _stat("AI cost",
              "LLM spend in the picked time range, from the price table; empty without prices.",
              "currencyUSD", _Query(_ai("ai_cost", over_range=True), "cost")),
        # A process that never pushed exports 0 (the epoch): not a push 57 years ago.
        _stat("Since last successful push",
              "Time since the most recent successful Pushgateway push of any process; "
              '"never" when none has pushed (pull mode).', "s",
              _Query(Op("time()", "-", Max(Op(Series("last_push_success"), ">", 0))),
                     "since push"),
              noValue="never"),
    )),
    ("Analyses", (
        _ts("Analyses per second",
            "Rate of finished analyses by module and analysis type, every status.", "ops",
            _Query(_analyses(by=_BY_ANALYSIS), _PER_ANALYSIS), min=0),
        _ts("Analysis error ratio by module",
            "Share of analyses that raised, by module and analysis type (0 when none failed).",
            "percentunit",
            _Query(Ratio(_analyses(_ERROR, by=_BY_ANALYSIS), _analyses(by=_BY_ANALYSIS),
                         _BY_ANALYSIS), _PER_ANALYSIS),
            **_SHARE),
        _latency("Analysis duration p50 / p95 / p99",
                 "Duration quantiles of the selected analyses, estimated from the histogram "
                 "buckets; a dot is a traced analysis (its exemplar), a click opens its trace.",
                 *(_Query(_quantile(q, "analysis_duration", _ANALYSIS), f"p{round(q * 100)}")
                   for q in (0.5, 0.95, 0.99))),
        _ts("Mean analysis duration",
            "Average duration by module and analysis type: rate of the sum over rate of the count.",
            "s",
            _Query(Op(Sum(Rate(Series("analysis_duration", _ANALYSIS, "_sum")), _BY_ANALYSIS),
                      "/",
                      Sum(Rate(Series("analysis_duration", _ANALYSIS, "_count")), _BY_ANALYSIS)),
                   _PER_ANALYSIS),
            min=0),
        _ts("Analysis errors by exception",
            "Rate of analyses that raised, by module and exception class.", "ops",
            _Query(_count("analysis_errors", _ANALYSIS, ("module", "error_type"), False),
                   "{{module}}: {{error_type}}"),
            min=0, **_NONE_IS_ZERO),
        _ts("Active jobs by job type",
            "Jobs in flight by job type (a gauge: its value, never a rate).", "short",
            _Query(Sum(Series("active_jobs"), ("job_type",)), "{{job_type}}"),
            min=0, decimals=0),
        _Panel("gauge", "Code quality score", "Latest code quality score by project and module.",
               "short", (_QUALITY,)),
        _ts("Code quality trend", "Code quality score over time by project and module.", "short",
            _QUALITY),
    )),
    ("AI calls", (
        _ts("AI calls per second", "Rate of LLM API calls by provider and model, every status.",
            "ops", _Query(_calls(by=_BY_MODEL), _PER_MODEL), min=0),
        _ts("AI error ratio by model",
            "Share of LLM API calls that failed, by provider and model (0 when none failed).",
            "percentunit",
            _Query(Ratio(_calls(_ERROR, by=_BY_MODEL), _calls(by=_BY_MODEL), _BY_MODEL),
                   _PER_MODEL),
            **_SHARE),
        _Panel("piechart", "AI calls by provider",
               "Each provider's share of the LLM API calls in the picked time range.", "short",
               (_Query(_calls(by=("provider",), over_range=True), "{{provider}}"),), width=8),
        _ts("AI tokens per second",
            "Token throughput by token type (input includes cached input, output reasoning).",
            "short", _Query(_ai("ai_tokens", ("token_type",)), "{{token_type}}"), min=0),
        _ts("AI token details per second",
            "Cache reads, cache writes and reasoning tokens (already inside input and output).",
            "short", _Query(_ai("ai_token_details", ("detail",)), "{{detail}}"), min=0),
        _ts("AI usage coverage by model",
            "Share of the LLM calls that ran (errors left out) whose response or stream "
            "reported readable usage; below 1, tokens and cost are undercounted.",
            "percentunit",
            _Query(Op(1, "-", Ratio(_ai("ai_usage_missing", _BY_MODEL),
                                    _calls('status!="error"', by=_BY_MODEL), _BY_MODEL)),
                   _PER_MODEL),
            **_SHARE),
        _latency("AI call latency p95",
                 "95th percentile duration of LLM API calls, streams included, by provider and "
                 "model; a dot is a traced call (its exemplar), a click opens its trace.",
                 _Query(_quantile(0.95, "ai_call_duration", _AI, _BY_MODEL), _PER_MODEL)),
        _latency("Time to first token p95",
                 "95th percentile time from the start of a streamed call to its first chunk; "
                 "a dot is a traced call (its exemplar), a click opens its trace.",
                 _Query(_quantile(0.95, "ai_time_to_first_token", _AI, _BY_MODEL), _PER_MODEL)),
        _ts("AI errors by type and HTTP status",
            "Rate of failed LLM API calls by exception class and HTTP status (429: rate limited).",
            "ops",
            _Query(_ai("ai_api_errors", ("provider", "error_type", "http_status")),
                   "{{provider}} {{error_type}} {{http_status}}"),
            min=0, **_NONE_IS_ZERO),
        _Panel("stat", "AI cost by model",
               "LLM spend in the picked time range by provider and model, from the price table.",
               "currencyUSD", (_Query(_ai("ai_cost", _BY_MODEL, over_range=True), _PER_MODEL),),
               width=8, height=8),
        _Panel("stat", "Unpriced AI calls",
               "Calls with no price or no usage in the picked time range: the cost leaves them "
               "out.", "short",
               (_Query(OrZero(_ai("ai_unpriced_calls", over_range=True)), "unpriced"),),
               width=4, height=8, defaults={"decimals": 0}),
    )),
    ("LLM outcomes", LLM_OUTCOMES),
    # The objectives' recordings (rules.py): empty until objective= is declared.
    ("Objectives", (
        _Panel("stat", "Error budget remaining",
               "Share of each objective's error budget left over its window, per job; below 0 "
               "the objective is missed.", "percentunit",
               (_Query(Series("slo:budget_remaining"), _PER_OBJECTIVE),), width=8, height=8),
        _ts("Burn rate (page windows)",
            "How many times faster than allowed each objective burns its error budget, over "
            "the 5m and 1h windows of the page alert (it pages above 14.4 on both).", "short",
            *(_Query(Op(Series(f"slo:error_ratio_{window}"), _PER_BUDGET, Series("slo:budget")),
                     f"{_PER_OBJECTIVE} {window}") for window in ("5m", "1h")),
            min=0),
        _ts("Objective events (last hour)",
            "Events each objective counted over the last hour, per job: the alerts wait for "
            "the minimum-traffic guard (min_events) over their long window.", "short",
            _Query(Series("slo:events_1h"), _PER_OBJECTIVE), min=0, decimals=0),
    )),
    ("Delivery", (
        _ts("Pushgateway pushes per second",
            "Push attempts and failed pushes of the instrumented processes (0 when none failed).",
            "ops",
            _Query(Sum(Rate(Series("pushes"))), "attempts"),
            _Query(OrZero(Sum(Rate(Series("push_failures")))), "failures"),
            min=0),
    )),
)  # fmt: skip


def _reduce_options() -> dict[str, Any]:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _options(kind: PanelKind) -> dict[str, Any]:
    if kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {
            "reduceOptions": _reduce_options(),
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    if kind == "piechart":
        return {
            "reduceOptions": _reduce_options(),
            "pieType": "pie",
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "showLegend": True,
                "values": ["value", "percent"],
            },
            "tooltip": {"mode": "single", "sort": "none"},
        }
    return {
        "reduceOptions": _reduce_options(),
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }


def _render(panel: _Panel, ctx: Context, panel_id: int, x: int, y: int) -> dict[str, Any]:
    instant = panel.kind != "timeseries"
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
        }
    else:
        defaults["color"] = {
            "mode": "thresholds" if panel.kind != "piechart" else "palette-classic"
        }
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    targets = [
        {
            "refId": chr(ord("A") + index),
            "datasource": dict(_DATASOURCE),
            "editorMode": "code",
            "expr": query.expr.promql(ctx),
            "legendFormat": query.legend,
            "instant": instant,
            "range": not instant,
        }
        for index, query in enumerate(panel.queries)
    ]
    if panel.exemplars:
        for target in targets:
            target["exemplar"] = True
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(_DATASOURCE),
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": defaults,
            "overrides": [deepcopy(TRACE_LINK)] if panel.exemplars else [],
        },
        "options": _options(panel.kind),
        "targets": targets,
    }


def _layout(names: dict[str, str], attribution: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The panels of :data:`_ROWS` querying ``names``, with their ids and grid positions;
    with ``attribution``, the LLM outcomes end with the spend by its first label."""
    ctx = Context(names, rate_window="$__rate_interval", range_window="$__range")
    panels: list[dict[str, Any]] = []
    y = 0
    for row_title, section in _ROWS:
        if section is LLM_OUTCOMES and attribution:
            section = (*section, spend_by(attribution[0]))
        if row_title is not None:
            panels.append(
                {
                    "id": len(panels) + 1,
                    "type": "row",
                    "title": row_title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": _GRID_WIDTH, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
        x = 0
        line_height = 0
        for panel in section:
            if x + panel.width > _GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_render(panel, ctx, len(panels) + 1, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _query_variable(name: str, label: str, definition: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": dict(_DATASOURCE),
        "definition": definition,
        "query": {"query": definition, "refId": f"{name}-values"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "hide": 0,
    }


def _templating(n: dict[str, str], datasource_uid: str | None) -> list[dict[str, Any]]:
    current: dict[str, Any] = {}
    if datasource_uid is not None:
        current = {"selected": True, "text": datasource_uid, "value": datasource_uid}
    analyses, calls = n["analyses"], n["ai_api_calls"]
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": current,
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
            "includeAll": False,
            "multi": False,
        },
        _query_variable("module", "Module", f"label_values({analyses}, module)"),
        _query_variable(
            "analysis_type",
            "Analysis type",
            f"label_values({series(analyses, _ANALYSIS[0])}, analysis_type)",
        ),
        _query_variable("provider", "Provider", f"label_values({calls}, provider)"),
        _query_variable("model", "Model", f"label_values({series(calls, _AI[0])}, model)"),
        deepcopy(TRACES_VARIABLE),
    ]


def check_uid(uid: object) -> str:
    """``uid`` if Grafana takes it as a dashboard uid, else a ValueError saying what does."""
    if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
        raise ValueError(
            f"uid {uid!r} is not a Grafana dashboard uid: use 1 to 40 letters, digits, '-' or '_'"
        )
    return uid


def build_dashboard(
    inst_or_metrics: Source,
    *,
    title: str = "Codomyrmex Analytics",
    uid: str = "codomyrmex-analytics",
    datasource_uid: str | None = None,
) -> dict[str, Any]:
    """The dashboard model (schemaVersion 41) for the metrics of one namespace.

    ``inst_or_metrics`` is an Instrumentation, its ``.metrics``, or a namespace string.
    Post it with :meth:`GrafanaClient.upsert_dashboard` or save it as JSON:

    >>> dashboard = build_dashboard(Instrumentation(namespace="codomyrmex"))
    >>> dashboard["panels"][0]["type"]
    'stat'

    ``datasource_uid`` preselects a Prometheus data source; otherwise Grafana picks its
    default one, and the ``datasource`` variable switches between them. An Instrumentation
    with ``attribution=`` gets a panel of the spend by its first attribution label.
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    check_uid(uid)
    if datasource_uid is not None and (not isinstance(datasource_uid, str) or not datasource_uid):
        raise ValueError("datasource_uid must be a non-empty string or None")
    namespace = namespace_of(inst_or_metrics)
    names = metric_names(namespace)
    return {
        "uid": uid,
        "title": title,
        "description": f"Analyses, LLM calls and delivery of the {namespace}_* metrics "
        "(generated by instrument from its metric definitions).",
        "tags": [namespace, "code-analysis", "llm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _templating(names, datasource_uid)},
        "annotations": {"list": [_releases(names)]},
        "links": [],
        "panels": _layout({**names, **recorded_series(namespace)}, _attribution(inst_or_metrics)),
    }


def _attribution(source: Source) -> tuple[str, ...]:
    """The attribution labels of an Instrumentation or a Metrics (checked by namespace_of);
    a namespace string has none."""
    if isinstance(source, str):
        return ()
    metrics = source if isinstance(source, Metrics) else source.metrics
    return metrics.attribution


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query target of a dashboard model, then
    ``(annotation name, expr)`` for its annotations'."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ] + [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]


def dashboard_json(dashboard: dict[str, Any]) -> str:
    """The dashboard as the JSON file ``instrument dashboard`` writes (stable, diffable)."""
    return json.dumps(dashboard, indent=2) + "\n"
