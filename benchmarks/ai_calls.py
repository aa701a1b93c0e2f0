"""Section 4: ``track_ai_call`` on a fake chat completion with usage, against hand-inlined updates.

The hand-inlined version makes the updates the decorator makes for this response, with
pre-bound children: active jobs inc/dec, one duration sample, the call counter, input and
output tokens read straight from ``response.usage``, the operations counter
(``ai_operations_total{operation="chat"}``) and the finish reason of its one choice
(``ai_finish_reasons_total{finish_reason="stop"}``, the child of another reason looked up
when one comes). It knows the response shape; ``track_ai_call`` has to find it out, which
is part of what it costs.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.metrics import Metrics

from .calls import fresh_metrics, sync_batch
from .fakes import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    ChatCompletion,
    ai_unavailable,
    chat_completion,
    chat_completion_dict,
)
from .harness import Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_ai", "tokens"]

PROVIDER = "openai"
MODEL = "gpt-4o"
PROMPT = "Summarise this module."


def returning(response: Any) -> Callable[[str], Any]:
    """A fresh client call that answers every prompt with ``response``."""

    def ask(prompt: str) -> Any:
        return response

    return ask


def inlined_ai(ask: Callable[[str], ChatCompletion], m: Metrics) -> Callable[[str], ChatCompletion]:
    active = m.active_jobs.labels("ai_call")
    active_inc, active_dec = active.inc, active.dec
    observe = m.ai_call_duration.labels(PROVIDER, MODEL).observe
    success_inc = m.ai_api_calls.labels(PROVIDER, MODEL, "success").inc
    error_inc = m.ai_api_calls.labels(PROVIDER, MODEL, "error").inc
    input_inc = m.ai_tokens.labels(PROVIDER, MODEL, "input").inc
    output_inc = m.ai_tokens.labels(PROVIDER, MODEL, "output").inc
    operation_success_inc = m.ai_operations.labels(PROVIDER, MODEL, "chat", "success").inc
    operation_error_inc = m.ai_operations.labels(PROVIDER, MODEL, "chat", "error").inc
    stop_inc = m.ai_finish_reasons.labels(PROVIDER, MODEL, "stop").inc

    def inlined(prompt: str) -> ChatCompletion:
        active_inc()
        t0 = perf_counter()
        try:
            response = ask(prompt)
        except Exception:
            observe(perf_counter() - t0)
            error_inc()
            operation_error_inc()
            active_dec()
            raise
        observe(perf_counter() - t0)
        success_inc()
        operation_success_inc()
        usage = response.usage
        if usage is not None:
            input_inc(usage.prompt_tokens)
            output_inc(usage.completion_tokens)
        for choice in response.choices:
            reason = choice.finish_reason
            if reason == "stop":
                stop_inc()
            elif reason is not None:
                m.ai_finish_reasons.labels(PROVIDER, MODEL, reason).inc()
        active_dec()
        return response

    return inlined


def tokens(registry: CollectorRegistry, model: str = MODEL) -> dict[str, float | None]:
    labels = {"provider": PROVIDER, "model": model}
    return {
        kind: registry.get_sample_value(
            "codomyrmex_ai_tokens_used_total", {**labels, "token_type": kind}
        )
        for kind in ("input", "output")
    }


def outcomes(registry: CollectorRegistry, model: str = MODEL) -> tuple[float | None, float | None]:
    """The successful chat operations and the "stop" finish reasons counted."""
    labels = {"provider": PROVIDER, "model": model}
    return (
        registry.get_sample_value(
            "codomyrmex_ai_operations_total", {**labels, "operation": "chat", "status": "success"}
        ),
        registry.get_sample_value(
            "codomyrmex_ai_finish_reasons_total", {**labels, "finish_reason": "stop"}
        ),
    )


def run_ai(settings: Settings) -> Section:
    section = Section(
        "ai",
        4,
        "track_ai_call on a chat completion with usage: per-call time",
        ratio_columns=[("vs_bare", "vs bare"), ("vs_inlined", "vs inlined")],
    )
    unavailable = ai_unavailable()
    if unavailable is not None:
        section.skipped.append(f"track_ai_call: {unavailable}")
        return section
    object_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    dict_inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    inlined_m = fresh_metrics()
    tracked = object_inst.track_ai_call(PROVIDER, MODEL)(returning(chat_completion()))
    tracked_dict = dict_inst.track_ai_call(PROVIDER, MODEL)(returning(chat_completion_dict()))
    inlined = inlined_ai(returning(chat_completion()), inlined_m)
    variants = [
        Variant("bare", "bare call", sync_batch(returning(chat_completion()), PROMPT)),
        Variant(
            "inlined", "hand-inlined updates (pre-bound children)", sync_batch(inlined, PROMPT)
        ),
        Variant("tracked", "@inst.track_ai_call, usage as attributes", sync_batch(tracked, PROMPT)),
        Variant(
            "tracked_dict", "@inst.track_ai_call, usage as a dict", sync_batch(tracked_dict, PROMPT)
        ),
    ]
    try:
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        object_inst.close()
        dict_inst.close()
    bare, floor = timings["bare"].median, timings["inlined"].median
    for timing in timings.values():
        row = Row.from_timing(timing)
        row.ratios = {"vs_bare": ratio(row.median, bare), "vs_inlined": ratio(row.median, floor)}
        row.info["overhead_over_bare"] = row.median - bare
        if timing.key != "bare":
            row.detail = f"+{(row.median - bare) * 1e6:.2f} µs over bare"
        section.rows.append(row)
    section.targets.append(
        Target(
            "@track_ai_call with a usage dict / hand-inlined updates",
            ratio(timings["tracked_dict"].median, floor),
            "<=",
            1.0,
        )
    )
    for key, registry in (
        ("inlined", inlined_m.registry),
        ("tracked", object_inst.registry),
        ("tracked_dict", dict_inst.registry),
    ):
        calls = timings[key].calls
        expected = {"input": calls * PROMPT_TOKENS, "output": calls * COMPLETION_TOKENS}
        section.checks.append(
            Check(
                f"{key}: tokens, operations and finish reasons of all {calls} calls counted",
                tokens(registry) == expected and outcomes(registry) == (calls, calls),
            )
        )
    return section
