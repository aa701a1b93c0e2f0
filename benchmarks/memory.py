"""Section 6: RSS growth, each case in a fresh interpreter so earlier sections cannot pollute it.

``python -m benchmarks.memory KIND N`` is the child: it sets up, warms up, reads the RSS,
runs N operations, collects garbage, reads the RSS again and prints one JSON object.
Kinds:

- ``bare``: N calls of the undecorated function (the control: what the loop itself costs);
- ``calls``: N calls of a ``@monitored_analysis`` function (a per-call leak shows here);
- ``models``: N calls of ``@track_ai_call(provider, model=None)``, each with a new model
  name, cardinality guard on (``max_models``, default 50): the series stay bounded;
- ``models_unguarded``: the same updates hand-written with ``.labels(provider, model, ...)``
  and no guard (the control: what the guard saves).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any

from .report import Check, Row, Section, Target
from .settings import Settings

__all__ = ["rss_bytes", "run_memory"]

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
WARM_UP = 10_000


def rss_bytes() -> int:
    """Resident set size now (``/proc/self/statm``), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# -- the child -----------------------------------------------------------------------------------


def _loop(func: Callable[[int], Any], n: int) -> None:
    for _ in repeat(None, n):
        func(1)


def _calls(kind: str, n: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from instrument import Instrumentation

    from .fakes import make_work

    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    func = make_work() if kind == "bare" else inst.monitored_analysis("bench", "call")(make_work())
    _loop(func, WARM_UP)
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    _loop(func, n)
    seconds = time.perf_counter() - t0
    gc.collect()
    return {"rss_before": before, "rss_after": rss_bytes(), "seconds": seconds}


def _models(kind: str, n: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from instrument import Instrumentation
    from instrument.metrics import Metrics

    from .fakes import chat_completion

    names = [f"model-{i:05d}" for i in range(n)]
    responses = {name: chat_completion(name) for name in [*names, "warm-up"]}
    registry = CollectorRegistry()
    if kind == "models":
        import logging

        logging.getLogger("instrument").setLevel(logging.ERROR)  # the guard's one warning
        inst = Instrumentation(registry=registry, push_mode="off")

        def ask(model: str, prompt: str) -> Any:
            return responses[model]

        call: Callable[[str, str], Any] = inst.track_ai_call("openai", model=None)(ask)
    else:
        m = Metrics.get(registry)

        def call(model: str, prompt: str) -> Any:
            t0 = time.perf_counter()
            response = responses[model]
            m.ai_call_duration.labels("openai", model).observe(time.perf_counter() - t0)
            m.ai_api_calls.labels("openai", model, "success").inc()
            usage = response.usage
            assert usage is not None
            m.ai_tokens.labels("openai", model, "input").inc(usage.prompt_tokens)
            m.ai_tokens.labels("openai", model, "output").inc(usage.completion_tokens)
            return response

    for _ in range(WARM_UP):
        call("warm-up", "hi")
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    for name in names:
        call(name, "hi")
    seconds = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    models = {
        sample.labels["model"]
        for family in registry.collect()
        if family.name.endswith("ai_api_calls")
        for sample in family.samples
    }
    return {"rss_before": before, "rss_after": after, "seconds": seconds, "series": len(models)}


def child(kind: str, n: int) -> dict[str, Any]:
    result = _calls(kind, n) if kind in ("bare", "calls") else _models(kind, n)
    return {"kind": kind, "operations": n, **result}


# -- the section ---------------------------------------------------------------------------------


def measure_in_child(kind: str, n: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", kind, str(n)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child {kind} failed:\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _row(key: str, label: str, result: dict[str, Any], per_million: bool) -> Row:
    growth = (result["rss_after"] - result["rss_before"]) / MIB
    n = result["operations"]
    value = growth * 1_000_000 / n if per_million else growth
    detail = (
        f"RSS {result['rss_before'] / MIB:.1f} -> {result['rss_after'] / MIB:.1f} MiB "
        f"over {n:,} calls"
    )
    if "series" in result:
        detail += f", {result['series']:,} model label values"
    return Row(
        key=key,
        label=label,
        median=value,
        unit="MiB per 1M calls" if per_million else "MiB",
        info={**result, "growth_mib": growth},
        detail=detail,
    )


def run_memory(settings: Settings) -> Section:
    from .fakes import ai_unavailable

    section = Section(
        "memory", 6, "Memory: RSS growth (fresh interpreter per case)", display=("MiB", 1)
    )
    calls = settings.memory_calls
    scaled = "" if calls == 1_000_000 else f", {calls:,} calls scaled"
    bare = _row("bare", f"bare calls, per 1M calls{scaled}", measure_in_child("bare", calls), True)
    decorated = _row(
        "calls",
        f"@monitored_analysis, per 1M calls{scaled}",
        measure_in_child("calls", calls),
        True,
    )
    section.rows += [bare, decorated]
    section.targets.append(
        Target("RSS growth per 1M @monitored_analysis calls (MiB)", decorated.median, "<", 2)
    )
    models = settings.memory_models
    unavailable = ai_unavailable()
    if unavailable is not None:
        section.skipped.append(f"{models:,} distinct model names: {unavailable}")
        return section
    guarded = _row(
        "models",
        f"track_ai_call, {models:,} model names, guard on",
        measure_in_child("models", models),
        False,
    )
    unguarded = _row(
        "models_unguarded",
        f"hand-written .labels(), {models:,} names, no guard",
        measure_in_child("models_unguarded", models),
        False,
    )
    section.rows += [guarded, unguarded]
    section.checks.append(
        Check(
            "guard on: at most 50 model label values + 'other' (the warm-up's model included)",
            guarded.info["series"] <= 51,
        )
    )
    section.notes.append("MiB column: growth per 1M calls for the first rows, total for the others")
    return section


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]))))
