"""Section 3: per-item cost of a wrapped generator, and of the AI stream wrapper.

A batch is ``n`` generator calls, each consumed to the end; the time is divided by the
items, so the start and end of each job are amortised over ``stream_length`` items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import repeat
from time import perf_counter

from prometheus_client import CollectorRegistry

from instrument import Instrumentation

from .before import BeforeMonitor
from .calls import KIND, MODULE, observations
from .fakes import COMPLETION_TOKENS, PROMPT_TOKENS, ai_unavailable, make_items, make_stream
from .harness import Batch, Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_streams"]


def consume_batch(create: Callable[[], Iterable[object]]) -> Batch:
    def batch(n: int) -> float:
        calls = repeat(None, n)
        t0 = perf_counter()
        for _ in calls:
            for _item in create():
                pass
        return perf_counter() - t0

    return batch


def run_streams(settings: Settings) -> Section:
    section = Section(
        "streams",
        3,
        f"Generators and streams: per-item time ({settings.stream_length} items per call)",
        ratio_columns=[("vs_bare", "vs bare")],
    )
    length = settings.stream_length
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    before_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    variants = [
        Variant("bare_generator", "bare generator", consume_batch(make_items(length)), length),
        Variant(
            "monitored_generator",
            "@inst.monitored_analysis generator",
            consume_batch(inst.monitored_analysis(MODULE, KIND)(make_items(length))),
            length,
        ),
        Variant(
            "before_generator",
            "before: @monitored_analysis generator of 0.1.0",
            consume_batch(BeforeMonitor(before_inst, MODULE, KIND)(make_items(length))),
            length,
        ),
    ]
    baselines = {"monitored_generator": "bare_generator", "before_generator": "bare_generator"}
    unavailable = ai_unavailable()
    if unavailable is None:
        variants += [
            Variant(
                "bare_stream",
                "bare chat-completion stream",
                consume_batch(make_stream(length)),
                length,
            ),
            Variant(
                "ai_stream",
                "track_ai_call stream wrapper",
                consume_batch(inst.track_ai_call("openai", "gpt-4o")(make_stream(length))),
                length,
            ),
        ]
        baselines["ai_stream"] = "bare_stream"
    else:
        section.skipped.append(f"AI stream wrapper: {unavailable}")
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        inst.close()
        before_inst.close()
    for timing in timings.values():
        row = Row.from_timing(timing)
        base = timings[baselines.get(timing.key, timing.key)].median
        row.ratios = {"vs_bare": ratio(row.median, base)}
        row.info["overhead_per_item"] = row.median - base
        if timing.key in baselines:
            row.detail = f"+{(row.median - base) * 1e9:.0f} ns per item over bare"
        section.rows.append(row)
    # "Unchanged (about 40 ns)": against 0.1.0's, measured beside it, as the machine's
    # speed moves both.
    section.targets.append(
        Target(
            "generator: per-item overhead over bare / 0.1.0's",
            ratio(
                section.row("monitored_generator").info["overhead_per_item"],
                section.row("before_generator").info["overhead_per_item"],
            ),
            "<=",
            1.1,
        )
    )
    section.notes.append(
        f"per item includes each call's start and end, spread over its {length} items"
    )
    calls = timings["monitored_generator"].calls
    section.checks.append(
        Check(
            f"monitored generator: {calls} generator runs observed",
            observations(inst.metrics) == calls,
        )
    )
    if "ai_stream" in timings:
        calls = timings["ai_stream"].calls
        labels = {"provider": "openai", "model": "gpt-4o"}
        tokens = {
            kind: inst.registry.get_sample_value(
                "codomyrmex_ai_tokens_used_total", {**labels, "token_type": kind}
            )
            for kind in ("input", "output")
        }
        section.checks.append(
            Check(
                f"AI stream: usage of all {calls} streams counted from their final chunks",
                tokens == {"input": calls * PROMPT_TOKENS, "output": calls * COMPLETION_TOKENS},
            )
        )
    return section
