"""Section 12: what issue 16's spans and exemplars cost a decorated call.

Each state runs in a child process of its own (``python -m benchmarks.tracing STATE``), so
that one state's imports and global tracer provider cannot leak into another's:

- ``blocked``: ``sys.modules["opentelemetry"] = None``, as if it were not installed. The
  default (``tracing=True``) against ``tracing=False``, which skips the span checks: the
  hooks themselves must cost nothing measurable ("no change").
- ``installed``: opentelemetry-api imported, interleaved: without ``opentelemetry.trace``
  in ``sys.modules`` for the batch (what the toolkit sees when it was never imported), with
  it but no provider set (target: at most 10 % more), and with the SDK's provider and an
  in-memory exporter (measured and reported: a span per call is real work). The provider
  is swapped in and out around its batches through the API's global, as opentelemetry's
  own test helpers reset it.

Both decorators are timed: ``@monitored_analysis`` on a plain function and
``@track_ai_call`` on a function returning a chat completion dict.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from .harness import Batch, Timing, Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_tracing"]

_TRACE = "opentelemetry.trace"
_COUNT = {"module": "m", "analysis_type": "t", "status": "success"}


def run_tracing(settings: Settings) -> Section:
    section = Section(
        "tracing",
        12,
        "spans and exemplars (issue 16): per-call time",
        ratio_columns=[("vs_base", "vs without")],
    )
    if importlib.util.find_spec("opentelemetry") is None:
        section.skipped.append("opentelemetry-api is not installed (the tracing extra)")
        return section
    blocked = _child("blocked", settings)
    installed = _child("installed", settings)
    for child, base_of in (
        (blocked, {"analysis": "analysis_off", "ai": "ai_off"}),
        (installed, {"analysis": "analysis_absent", "ai": "ai_absent"}),
    ):
        for key, timing in child["timings"].items():
            row = Row.from_timing(Timing(key, timing["label"], timing["samples"],
                                         timing["calls"], timing["calls_per_round"]))  # fmt: skip
            base = child["timings"][base_of[key.split("_", 1)[0]]]
            row.ratios = {"vs_base": ratio(row.median, _median(base["samples"]))}
            section.rows.append(row)
        for description, ok in child["checks"].items():
            section.checks.append(Check(description, ok))
    for kind in ("analysis", "ai"):
        section.targets.append(
            Target(
                f"{kind}: without opentelemetry, tracing on / off (no change)",
                section.row(f"{kind}_on").ratios["vs_base"],
                "<=",
                1.05,
            )
        )
        section.targets.append(
            Target(
                f"{kind}: API imported, no provider / never imported",
                section.row(f"{kind}_no_provider").ratios["vs_base"],
                "<=",
                1.10,
            )
        )
    section.notes.append(
        "with a provider: the SDK's span, its SimpleSpanProcessor and an in-memory "
        "exporter, cleared after every batch; no target (a span per call is real work)"
    )
    return section


def _median(samples: list[float]) -> float:
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _child(state: str, settings: Settings) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.tracing",
            state,
            # Three times the usual rounds: the differences measured are tens of
            # nanoseconds on a call of one or two microseconds.
            str(settings.rounds * 3),
            str(settings.batch_seconds),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {state} child failed: {done.stderr.strip()[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


# -- the children -------------------------------------------------------------------------


def _decorated(tracing: bool) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
    from prometheus_client import CollectorRegistry

    from instrument import Instrumentation

    from .fakes import chat_completion_dict

    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off", tracing=tracing)
    response = chat_completion_dict()

    @inst.monitored_analysis("m", "t")
    def analyze(x: Any) -> Any:
        return x

    @inst.track_ai_call("openai", "gpt-4o")
    def ask(x: Any) -> Any:
        return response

    return inst, analyze, ask


def _batch(
    func: Callable[[Any], Any], around: Callable[[Callable[[], float]], float] | None = None
) -> Batch:
    """A batch of calls of ``func``, run inside ``around`` (which sets the state up)."""
    from .calls import sync_batch

    batch = sync_batch(func)
    if around is None:
        return batch
    setup = around

    def run(n: int) -> float:
        return setup(partial(batch, n))

    return run


def _blocked(rounds: int, seconds: float) -> dict[str, Any]:
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    on, analyze_on, ask_on = _decorated(True)
    off, analyze_off, ask_off = _decorated(False)
    variants = [
        Variant("analysis_on", "no OTel: @monitored_analysis (tracing on)", _batch(analyze_on)),
        Variant("analysis_off", "no OTel: @monitored_analysis, tracing=False", _batch(analyze_off)),
        Variant("ai_on", "no OTel: @track_ai_call (tracing on)", _batch(ask_on)),
        Variant("ai_off", "no OTel: @track_ai_call, tracing=False", _batch(ask_off)),
    ]
    timings = measure(variants, rounds=rounds, batch_seconds=seconds)
    loaded = sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v)
    checks = {
        "blocked: no opentelemetry module was loaded": loaded == [],
        "blocked: every analysis counted": _counted(on, timings["analysis_on"])
        and _counted(off, timings["analysis_off"]),
    }
    return {"timings": _dump(timings), "checks": checks}


def _installed(rounds: int, seconds: float) -> dict[str, Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    inst, analyze, ask = _decorated(True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exported = [0]

    def absent(run: Callable[[], float]) -> float:
        module = sys.modules.pop(_TRACE)
        try:
            return run()
        finally:
            sys.modules[_TRACE] = module

    def traced(run: Callable[[], float]) -> float:
        saved = trace._TRACER_PROVIDER
        trace._TRACER_PROVIDER = provider
        try:
            return run()
        finally:
            trace._TRACER_PROVIDER = saved
            exported[0] += len(exporter.get_finished_spans())
            exporter.clear()

    variants = [
        Variant("analysis_absent", "@monitored_analysis, opentelemetry.trace never imported",
                _batch(analyze, absent)),
        Variant("analysis_no_provider", "@monitored_analysis, API imported, no provider",
                _batch(analyze)),
        Variant("analysis_provider", "@monitored_analysis, SDK provider + in-memory exporter",
                _batch(analyze, traced)),
        Variant("ai_absent", "@track_ai_call, opentelemetry.trace never imported",
                _batch(ask, absent)),
        Variant("ai_no_provider", "@track_ai_call, API imported, no provider", _batch(ask)),
        Variant("ai_provider", "@track_ai_call, SDK provider + in-memory exporter",
                _batch(ask, traced)),
    ]  # fmt: skip
    timings = measure(variants, rounds=rounds, batch_seconds=seconds)
    spans = timings["analysis_provider"].calls + timings["ai_provider"].calls
    total = sum(t.calls for k, t in timings.items() if k.startswith("analysis"))
    checks = {
        f"installed: one span per traced call ({spans})": exported[0] == spans,
        f"installed: all {total} analyses counted": _value(inst, _COUNT) == total,
    }
    return {"timings": _dump(timings), "checks": checks}


def _counted(inst: Any, timing: Timing) -> bool:
    return bool(_value(inst, _COUNT) == timing.calls)


def _value(inst: Any, labels: dict[str, str]) -> float | None:
    value: float | None = inst.registry.get_sample_value("codomyrmex_analyses_total", labels)
    return value


def _dump(timings: dict[str, Timing]) -> dict[str, Any]:
    return {
        key: {
            "label": t.label,
            "samples": t.samples,
            "calls": t.calls,
            "calls_per_round": t.calls_per_round,
        }
        for key, t in timings.items()
    }


if __name__ == "__main__":
    state, rounds, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    result = _blocked(rounds, seconds) if state == "blocked" else _installed(rounds, seconds)
    print(json.dumps(result))
