"""Checked by `mypy --strict` in CI: the public API keeps decorated functions' types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from instrument import Instrumentation, Objective, configure, monitored_analysis, track_ai_call

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
    return total + int(pushed) + int(pushed_too)
