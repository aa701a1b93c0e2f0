"""``python -m benchmarks``: run the sections, print the table, write the JSON.

Targets are informational: a miss is printed, never turned into a failure. The exit
status is 1 only when a section crashed (the others still run and are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .ai_calls import run_ai
from .calls import run_async, run_sync
from .coalesce import run_coalesce
from .collect import run_collect
from .genai import run_genai
from .imports import run_imports
from .memory import run_memory
from .push import run_push
from .remote_write import run_remote_write
from .report import Section, render
from .settings import Settings
from .streams import run_streams
from .tracing import run_tracing

__all__ = ["SECTIONS", "main"]

#: The issue's sections, in its order: (number, key, runner).
SECTIONS: tuple[tuple[int, str, Callable[[Settings], Section]], ...] = (
    (1, "sync", run_sync),
    (2, "async", run_async),
    (3, "streams", run_streams),
    (4, "ai", run_ai),
    (5, "push", run_push),
    (6, "memory", run_memory),
    (7, "import", run_imports),
    (8, "coalesce", run_coalesce),
    (9, "remote_write", run_remote_write),
    (10, "collect", run_collect),
    (11, "genai", run_genai),
    (12, "tracing", run_tracing),
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "packages": {
            name: _version(name)
            for name in ("instrument", "prometheus-client", "wrapt", "aiohttp", "prometheus-async")
        },
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Per-call overhead of instrument against hand-written updates and the "
        "alternatives, side by side in one run (issue 6).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and calls (CI smoke test, < 1 min)"
    )
    parser.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="one line per section (status, targets met, checks, first ratio) instead of its "
        "table: for CI logs, where a quick run's noisy numbers are not the README's",
    )
    parser.add_argument(
        "--sections",
        metavar="N,N",
        help=f"run only these section numbers, e.g. 1,2 (default: all {len(SECTIONS)})",
    )
    return parser.parse_args(argv)


def summary_line(section: Section) -> str:
    """One section in one line: pass or fail, the targets met, and the first target's ratio."""
    failed = [c for c in section.checks if not c.ok]
    verdict = "FAIL" if section.error is not None or failed else "pass"
    if section.status == "skipped":
        verdict = "skipped"
    parts = [f"{section.number}. {section.title}: {verdict}"]
    if section.targets:
        met = sum(t.met for t in section.targets)
        first = section.targets[0]
        parts.append(f"targets met {met}/{len(section.targets)}")
        parts.append(f"{first.description} {first.value:.2f} (target {first.op} {first.limit:g})")
    if failed:
        parts.append(f"checks failed: {', '.join(c.description for c in failed)}")
    if section.error is not None:
        parts.append(f"error: {section.error}")
    return "; ".join(parts) + f" [{section.seconds:.1f} s]"


def _run(
    number: int, key: str, runner: Callable[[Settings], Section], settings: Settings
) -> Section:
    t0 = time.perf_counter()
    try:
        section = runner(settings)
    except Exception as exc:
        traceback.print_exc()
        section = Section(key, number, f"section {number} ({key})")
        section.error = f"{type(exc).__name__}: {exc}"
    # SECTIONS numbers the sections: whatever number a section's module gave itself (a
    # section added or moved keeps an old one), the table, the summary and --sections agree.
    section.number = number
    section.seconds = time.perf_counter() - t0
    return section


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings.for_quick() if args.quick else Settings.full()
    wanted = None
    if args.sections:
        try:
            wanted = {int(n) for n in args.sections.split(",")}
        except ValueError:
            wanted = set()
        if not wanted or not wanted <= {number for number, _, _ in SECTIONS}:
            print(
                f"--sections takes numbers 1-{len(SECTIONS)} separated by commas, "
                f"got {args.sections!r}"
            )
            return 2
    info = machine()
    mode = "quick" if settings.quick else "full"
    print(
        f"instrument benchmarks ({mode}): Python {info['python']} on {info['cpu']}, "
        f"{info['cpus']} CPUs; interleaved rounds, medians; +- is half the interquartile range\n",
        flush=True,
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    sections: list[Section] = []
    for number, key, runner in SECTIONS:
        if wanted is not None and number not in wanted:
            continue
        section = _run(number, key, runner, settings)
        sections.append(section)
        print(summary_line(section) if args.summary else render(section) + "\n", flush=True)
    total = time.perf_counter() - started
    missed = [t.description for s in sections for t in s.targets if not t.met]
    failed = [c.description for s in sections for c in s.checks if not c.ok]
    print(
        f"{len(sections)} sections in {total:.1f} s; targets missed: {len(missed)}; "
        f"checks failed: {len(failed)}"
    )
    if args.output:
        document = {
            "meta": {
                **info,
                "mode": mode,
                "settings": settings.as_dict(),
                "started": started_at,
                "seconds": round(total, 2),
                "argv": sys.argv[1:] if argv is None else list(argv),
            },
            "sections": {s.key: s.as_dict() for s in sections},
        }
        Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 1 if any(s.error is not None for s in sections) else 0
