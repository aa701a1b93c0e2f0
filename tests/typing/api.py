"""Checked by `mypy --strict` in CI: the public API keeps decorated functions' types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

# The seed's names, outside __all__, are still exported to a strict type checker.
from instrument import (
    Instrumentation,
    Objective,
    PrometheusIntegration,
    configure,
    monitored_analysis,
    record_analysis,
    run_id,
    track_ai_call,
)

inst: Instrumentation = configure(namespace="typed")


@monitored_analysis("static_analysis", "codebase", quality=lambda r: float(len(r)))
def analyze(path: str, depth: int = 1) -> list[str]:
    return [path] * depth


@inst.monitored_analysis("static_analysis", "complexity")
async def complexity(path: str) -> int:
    return len(path)


@inst.monitored_analysis("discovery", "walk")
def walk(n: int) -> Iterator[int]:
    yield from range(n)


@track_ai_call("openai", model=None)
async def stream(model: str) -> AsyncIterator[str]:
    yield model


available = Objective("typed-availability", success=0.99)


@inst.track_ai_call(
    "openai", "gpt-4o", objective=[available, Objective("typed-fast", latency=(2.56, 0.9))]
)
def ask(prompt: str) -> str:
    return prompt


@monitored_analysis("typed", "objective", objective=available)
def checked(path: str) -> int:
    return len(path)


answer: str = ask("hi")
files: list[str] = analyze("src", depth=2)
count: int = sum(walk(3))


async def main() -> int:
    total = await complexity("src/app.py")
    with inst.monitored_analysis("indexer", "reindex") as job:
        job.record_quality(91.5)
    async with track_ai_call("anthropic", "claude") as call:
        call.add_usage(input_tokens=10, output_tokens=5)
    pushed: bool = await inst.push_metrics()
    pushed_too: bool = await inst.apush(timeout=2.0)
    record_analysis("static_analysis", "codebase", 1.5, success=True)
    seed_pushed: bool = await PrometheusIntegration("http://127.0.0.1:9091").push_metrics()
    return total + int(pushed) + int(pushed_too) + int(seed_pushed)


def fleet_worker() -> list[dict[str, str]]:
    writer = Instrumentation(
        remote_write="http://127.0.0.1:9090/api/v1/write",
        remote_write_headers={"X-Scope-OrgID": "team-a"},
        external_labels={"cluster": "eu-1"},
        stale_on_exit=False,
        pushgateway="http://127.0.0.1:9091",
    )
    deleted: list[dict[str, str]] = writer.prune_gateway(older_than=3600, job="n", dry_run=True)
    return deleted


def nightly() -> int:
    untraced = Instrumentation(tracing=False)
    with run_id("nightly-2026-12-01") as run:
        name: str = run
        return len(name) + int(untraced.tracing)


def conventions() -> bool:
    inst = Instrumentation(genai_semconv=True, attribution=("tenant",))
    on: bool = inst.genai_semconv
    return on
