"""Section 7: import time, ``import instrument`` against ``import prometheus_client, wrapt``.

Each command runs in a fresh interpreter, interleaved with the others, and is timed from
outside (interpreter start-up included, as a user's script would pay it). ``python -c pass``
gives the start-up alone, so the import-only ratio can be shown as well.

Cached: both sides import from bytecode the children write and read under a temporary
``PYTHONPYCACHEPREFIX`` (the first, untimed round fills it). Otherwise, with
``PYTHONDONTWRITEBYTECODE`` set, a source checkout recompiles on every import while
site-packages ship their ``.pyc``, and the comparison would time the compiler.
Uncached: the same with an empty prefix that is never written, so every run of either
side compiles all it imports from source (a first import after an install or upgrade).
The targets are on the import alone: each run minus the median start-up of its kind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from time import perf_counter

from .harness import Timing
from .memory import ROOT
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_imports"]

COMMANDS = {
    "startup": ("python -c pass", "pass"),
    "baseline": ('python -c "import prometheus_client, wrapt"', "import prometheus_client, wrapt"),
    "instrument": ('python -c "import instrument"', "import instrument"),
}
#: Modules worth knowing about after ``import instrument``; aiohttp must not be among them.
WATCHED = ("aiohttp", "asyncio", "ssl", "urllib.request", "http.client", "json")


class _Interpreter:
    """Runs fresh interpreters with a clean environment and a private bytecode cache."""

    def __init__(self, pycache: str, *, cached: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
        for name in ("PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        env["PYTHONPYCACHEPREFIX"] = pycache
        if not cached:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"python {' '.join(args)} exited with {done.returncode}: {last[0]}")
        return done

    def timed(self, code: str) -> Callable[[], float]:
        def run() -> float:
            t0 = perf_counter()
            self.run("-c", code)
            return perf_counter() - t0

        return run

    def import_times(self, code: str) -> dict[str, int]:
        """Self time in µs of every module ``code`` imports (``-X importtime``)."""
        stderr = self.run("-X", "importtime", "-c", code).stderr
        times: dict[str, int] = {}
        for match in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", stderr):
            times[match.group(2)] = int(match.group(1))
        return times


def run_imports(settings: Settings) -> Section:
    with (
        tempfile.TemporaryDirectory(prefix="instrument-bench-pycache-") as pycache,
        tempfile.TemporaryDirectory(prefix="instrument-bench-nocache-") as empty,
    ):
        return _measure(settings, _Interpreter(pycache), _Interpreter(empty, cached=False))


def _measure(settings: Settings, python: _Interpreter, uncached: _Interpreter) -> Section:
    section = Section(
        "import",
        7,
        f"Import: fresh interpreter per run, median of {settings.import_runs}",
        display=("ms", 1e3),
        ratio_columns=[("vs_baseline", "vs baseline"), ("import_only", "import only")],
    )
    runs: dict[str, Callable[[], float]] = {}
    labels: dict[str, str] = {}
    for suffix, interpreter in (("", python), ("_uncached", uncached)):
        for key, (command, code) in COMMANDS.items():
            runs[key + suffix] = interpreter.timed(code)
            labels[key + suffix] = command + (" (uncached)" if suffix else "")
    keys = list(runs)
    for key in keys:  # warm-up: fill the bytecode cache and the page cache
        runs[key]()
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(settings.import_runs):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            samples[key].append(runs[key]())
    rows = {
        key: Row.from_timing(Timing(key, labels[key], samples[key], len(samples[key]), 1))
        for key in keys
    }
    for suffix, kind in (("", "cached"), ("_uncached", "uncached")):
        startup = rows["startup" + suffix].median
        baseline = rows["baseline" + suffix].median
        for key in COMMANDS:
            row = rows[key + suffix]
            row.info = {"command": COMMANDS[key][1], "bytecode": kind}
            if key != "startup":
                row.ratios = {
                    "vs_baseline": ratio(row.median, baseline),
                    "import_only": ratio(row.median - startup, baseline - startup),
                }
                row.detail = f"{(row.median - startup) * 1e3:.1f} ms over start-up"
            section.rows.append(row)
        section.targets.append(
            Target(
                f"import instrument / import prometheus_client, wrapt (import only, {kind})",
                ratio(rows["instrument" + suffix].median - startup, baseline - startup),
                "<=",
                1.2,
            )
        )
    section.notes.append(
        "cached: both sides import from bytecode (a private PYTHONPYCACHEPREFIX, filled by an "
        "untimed first round); uncached: both compile from source on every run"
    )
    probe = "import instrument, sys, json; print(json.dumps({m: m in sys.modules for m in %r}))"
    loaded = json.loads(python.run("-c", probe % (WATCHED,)).stdout)
    section.checks.append(
        Check("aiohttp is not in sys.modules after import instrument", not loaded["aiohttp"])
    )
    rows["instrument"].info["modules_loaded"] = loaded
    section.notes.append(
        "after import instrument: "
        + ", ".join(f"{m} {'loaded' if on else 'not loaded'}" for m, on in loaded.items())
    )
    extra = python.import_times("import instrument")
    for name in python.import_times("import prometheus_client, wrapt"):
        extra.pop(name, None)
    top = sorted(extra.items(), key=lambda item: item[1], reverse=True)[:6]
    rows["instrument"].info["extra_modules_self_us"] = dict(top)
    section.notes.append(
        "largest self import times beyond the baseline (-X importtime, one run): "
        + ", ".join(f"{name} {us / 1000:.1f} ms" for name, us in top)
    )
    return section
