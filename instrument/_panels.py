"""The dashboard's panel model (a panel, its queries, the shorthands that build them) and
the panels of the LLM outcomes row: operations, finish reasons, tool calls, headroom, and
spend by the first attribution label.

``dashboard.py`` renders them; they live here so each module stays one job's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ._promql import Expr, Increase, Max, Quantile, Rate, Ratio, Series, Sum

PanelKind = Literal["timeseries", "stat", "piechart", "gauge"]

# Multi-value variables with "All" need regex matchers; "All" is sent as ".*".
AI = ('provider=~"$provider"', 'model=~"$model"')
BY_MODEL = ("provider", "model")
PER_MODEL = "{{provider}} / {{model}}"
SHARE = {"min": 0, "max": 1}
NONE_IS_ZERO = {"noValue": "0"}
#: The finish reasons that mean the answer was cut at its token limit, per provider:
#: OpenAI's and Mistral's length, Anthropic's and Gemini's max_tokens, OpenAI Responses'
#: max_output_tokens.
TRUNCATED = 'finish_reason=~"length|max_tokens|max_output_tokens"'


@dataclass(frozen=True)
class Query:
    expr: Expr
    legend: str = "__auto"


@dataclass(frozen=True)
class Panel:
    """One panel: what it shows and where; ``defaults`` are its fieldConfig defaults
    (axis bounds, decimals, what "no data" reads as) beyond its unit."""

    kind: PanelKind
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Show the exemplars of the queried series (a latency histogram's): a dot per traced
    #: observation, linking to its trace in the ``traces`` data source.
    exemplars: bool = False


def ts(title: str, description: str, unit: str, *queries: Query, **defaults: Any) -> Panel:
    return Panel("timeseries", title, description, unit, queries, defaults=defaults)


def latency(title: str, description: str, *queries: Query) -> Panel:
    """A duration quantile panel, its exemplars shown."""
    return Panel("timeseries", title, description, "s", queries, defaults={"min": 0},
                 exemplars=True)  # fmt: skip


#: The data source variable an exemplar's trace opens in: Tempo by default; Jaeger, Zipkin
#: or any trace data source by changing its type (``query``) in the dashboard settings.
TRACES_VARIABLE: dict[str, Any] = {
    "type": "datasource",
    "name": "traces",
    "label": "Traces",
    "query": "tempo",
    "current": {},
    "options": [],
    "regex": "",
    "refresh": 1,
    "hide": 0,
    "includeAll": False,
    "multi": False,
}

#: What makes an exemplar's ``trace_id`` a link to its trace in the ``traces`` data source.
TRACE_LINK: dict[str, Any] = {
    "matcher": {"id": "byName", "options": "trace_id"},
    "properties": [
        {
            "id": "links",
            "value": [
                {
                    "title": "Open the trace",
                    "url": "",
                    "internal": {
                        "datasourceUid": "${traces}",
                        "datasourceName": "traces",
                        "query": {"query": "${__value.raw}"},
                    },
                }
            ],
        }
    ],
}


def stat(title: str, description: str, unit: str, *queries: Query, **defaults: Any) -> Panel:
    return Panel("stat", title, description, unit, queries, width=4, height=4, defaults=defaults)


def count(key: str, where: tuple[str, ...], by: tuple[str, ...], over_range: bool) -> Sum:
    # Per second over the rate interval, or the total over the picked range.
    selector = Series(key, where)
    return Sum(Increase(selector) if over_range else Rate(selector), by)


def calls(*where: str, by: tuple[str, ...] = (), over_range: bool = False) -> Sum:
    return count("ai_api_calls", (*AI, *where), by, over_range)


def ai(key: str, by: tuple[str, ...] = (), over_range: bool = False, *where: str) -> Sum:
    return count(key, (*AI, *where), by, over_range)


def quantile(q: float, key: str, where: tuple[str, ...], by: tuple[str, ...] = ()) -> Quantile:
    return Quantile(q, Rate(Series(key, where, "_bucket")), by)


LLM_OUTCOMES: tuple[Panel, ...] = (
    Panel("piechart", "AI operation mix",
          "Each operation's share of the LLM calls in the picked time range (chat, "
          "embeddings, execute_tool, ...).", "short",
          (Query(ai("ai_operations", ("operation",), True), "{{operation}}"),), width=8),
    ts("AI truncation rate by model",
       "Share of the finished responses cut at their token limit (length, max_tokens, "
       "max_output_tokens), by provider and model.", "percentunit",
       Query(Ratio(ai("ai_finish_reasons", BY_MODEL, False, TRUNCATED),
                   ai("ai_finish_reasons", BY_MODEL), BY_MODEL), PER_MODEL),
       **SHARE),
    ts("AI finish reasons per second",
       "Why responses ended, one per choice or candidate (content_filter: blocked).", "ops",
       Query(ai("ai_finish_reasons", ("finish_reason",)), "{{finish_reason}}"), min=0),
    ts("AI tool calls per second",
       "Tool or function calls the models asked for, by provider and model.", "ops",
       Query(ai("ai_tool_calls", BY_MODEL), PER_MODEL), min=0, **NONE_IS_ZERO),
    ts("AI rate-limit headroom",
       "Requests and tokens left in each provider's rate limit, from the last response's "
       "headers (a gauge: its value, never a rate).", "short",
       Query(Max(Series("ai_rate_limit_remaining", AI), (*BY_MODEL, "limit")),
             PER_MODEL + " {{limit}}"), min=0),
    ts("AI retry-after on 429s",
       "The retry-after the provider sent with its last rate-limited answer.", "s",
       Query(Max(Series("ai_retry_after", AI), BY_MODEL), PER_MODEL), min=0),
)  # fmt: skip


def spend_by(label: str) -> Panel:
    """Spend per value of an attribution label (``attribution=("tenant",)``: per tenant)."""
    return Panel("stat", f"AI spend by {label}",
                 f"LLM spend in the picked time range by {label} (the first attribution label), "
                 f'from the price table; "" is calls that gave none, "other" the values past '
                 "max_attribution_values.", "currencyUSD",
                 (Query(ai("ai_cost", (label,), True), "{{" + label + "}}"),),
                 width=8, height=8)  # fmt: skip
