"""Section 11: what issue 15's options add to ``track_ai_call`` on a chat completion dict.

``plain`` is the call as every user has it (operation, finish reason and headroom reading
included); ``attributed`` adds one attribution label read from the call's arguments, on
an Instrumentation that declares it. The target: attribution adds at most 15 %.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation

from .calls import sync_batch
from .fakes import ai_unavailable, chat_completion_dict
from .harness import Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_genai"]

PROVIDER = "openai"
MODEL = "gpt-4o"
TENANT = "acme"


def run_genai(settings: Settings) -> Section:
    section = Section(
        "genai",
        11,
        "track_ai_call with issue 15's options: per-call time",
        ratio_columns=[("vs_plain", "vs plain")],
    )
    unavailable = ai_unavailable()
    if unavailable is not None:
        section.skipped.append(f"track_ai_call: {unavailable}")
        return section
    section.notes.append("genai_semconv=True: not built yet (issue 15, item 5), so no row")
    response = chat_completion_dict()
    plain_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    attributed_inst = Instrumentation(
        registry=CollectorRegistry(), push_mode="off", attribution=("tenant",)
    )

    @plain_inst.track_ai_call(PROVIDER, MODEL)
    def plain(tenant: str) -> Any:
        return response

    @attributed_inst.track_ai_call(
        PROVIDER, MODEL, attribution={"tenant": lambda args: args["tenant"]}
    )
    def attributed(tenant: str) -> Any:
        return response

    variants = [
        Variant("plain", "@inst.track_ai_call, usage as a dict", sync_batch(plain, TENANT)),
        Variant(
            "attributed",
            "the same, attribution=('tenant',) read from an argument",
            sync_batch(attributed, TENANT),
        ),
    ]
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        plain_inst.close()
        attributed_inst.close()
    base = timings["plain"].median
    for timing in timings.values():
        row = Row.from_timing(timing)
        row.ratios = {"vs_plain": ratio(row.median, base)}
        section.rows.append(row)
    section.targets.append(
        Target(
            "attribution with one label / plain @track_ai_call",
            ratio(timings["attributed"].median, base),
            "<=",
            1.15,
        )
    )
    calls = timings["attributed"].calls
    counted = attributed_inst.registry.get_sample_value(
        "codomyrmex_ai_api_calls_total",
        {"provider": PROVIDER, "model": MODEL, "status": "success", "tenant": TENANT},
    )
    section.checks.append(
        Check(f"attributed: all {calls} calls counted for the tenant", counted == calls)
    )
    return section
