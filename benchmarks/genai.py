"""Section 11: what issue 15's options add to ``track_ai_call``.

``plain`` is the call as every user has it (operation, finish reason and headroom reading
included) on a chat completion dict; ``attributed`` adds one attribution label read from
the call's arguments, on an Instrumentation that declares it; ``semconv`` records the
OpenTelemetry GenAI metrics beside (``genai_semconv=True``). The stream rows do the same
for a chat-completion stream, per call (its chunks included), where ``semconv`` adds the
per-chunk timing. The targets: attribution adds at most 15 %, the GenAI metrics at most
30 %, each against the plain call measured in the same run, rounds interleaved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation

from .calls import sync_batch
from .fakes import ai_unavailable, chat_completion_dict, make_stream
from .harness import Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings
from .streams import consume_batch

__all__ = ["run_genai"]

PROVIDER = "openai"
MODEL = "gpt-4o"
TENANT = "acme"
#: Each row's baseline: the plain call of its kind.
BASELINES = {
    "plain": "plain",
    "attributed": "plain",
    "semconv": "plain",
    "stream": "stream",
    "stream_semconv": "stream",
}


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
    response = chat_completion_dict()
    plain_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    attributed_inst = Instrumentation(
        registry=CollectorRegistry(), push_mode="off", attribution=("tenant",)
    )
    semconv_inst = Instrumentation(
        registry=CollectorRegistry(), push_mode="off", genai_semconv=True
    )

    def tracked(inst: Instrumentation, **options: Any) -> Callable[[str], Any]:
        @inst.track_ai_call(PROVIDER, MODEL, **options)
        def ask(tenant: str) -> Any:
            return response

        return ask

    length = settings.stream_length
    variants = [
        Variant(
            "plain", "@inst.track_ai_call, usage as a dict", sync_batch(tracked(plain_inst), TENANT)
        ),
        Variant(
            "attributed",
            "the same, attribution=('tenant',) read from an argument",
            sync_batch(
                tracked(attributed_inst, attribution={"tenant": lambda args: args["tenant"]}),
                TENANT,
            ),
        ),
        Variant(
            "semconv",
            "the same, genai_semconv=True",
            sync_batch(tracked(semconv_inst), TENANT),
        ),
        Variant(
            "stream",
            f"@inst.track_ai_call stream of {length} chunks, per call",
            consume_batch(plain_inst.track_ai_call(PROVIDER, MODEL)(make_stream(length))),
        ),
        Variant(
            "stream_semconv",
            "the same stream, genai_semconv=True",
            consume_batch(semconv_inst.track_ai_call(PROVIDER, MODEL)(make_stream(length))),
        ),
    ]
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        for inst in (plain_inst, attributed_inst, semconv_inst):
            inst.close()
    for timing in timings.values():
        row = Row.from_timing(timing)
        row.ratios = {"vs_plain": ratio(row.median, timings[BASELINES[timing.key]].median)}
        section.rows.append(row)
    for key, what, limit in (
        ("attributed", "attribution with one label / plain @track_ai_call", 1.15),
        ("semconv", "genai_semconv=True / plain @track_ai_call (usage dict)", 1.30),
        ("stream_semconv", f"genai_semconv=True / plain, a stream of {length} chunks", 1.30),
    ):
        base = timings[BASELINES[key]].median
        section.targets.append(Target(what, ratio(timings[key].median, base), "<=", limit))
    calls = timings["attributed"].calls
    counted = attributed_inst.registry.get_sample_value(
        "codomyrmex_ai_api_calls_total",
        {"provider": PROVIDER, "model": MODEL, "status": "success", "tenant": TENANT},
    )
    section.checks.append(
        Check(f"attributed: all {calls} calls counted for the tenant", counted == calls)
    )
    semconv = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": PROVIDER,
        "gen_ai_request_model": MODEL,
        "gen_ai_response_model": MODEL,
        "error_type": "",
    }
    calls = timings["semconv"].calls + timings["stream_semconv"].calls
    durations = semconv_inst.registry.get_sample_value(
        "gen_ai_client_operation_duration_seconds_count", semconv
    )
    section.checks.append(
        Check(f"semconv: all {calls} calls in gen_ai_client_operation_duration", durations == calls)
    )
    streams = timings["stream_semconv"].calls
    gaps = semconv_inst.registry.get_sample_value(
        "gen_ai_client_operation_time_per_output_chunk_seconds_count", semconv
    )
    section.checks.append(
        Check(
            f"semconv: {length - 1} chunk gaps for each of {streams} streams",
            gaps == streams * (length - 1),
        )
    )
    return section
