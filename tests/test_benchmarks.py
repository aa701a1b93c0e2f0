"""The benchmarks run (quick mode) and report every section; their numbers are not judged."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from .support import ROOT

# The smoke run is a child process; its section 5 starts a real Pushgateway.
pytestmark = [pytest.mark.integration, pytest.mark.subprocess]

SECTIONS = (
    "sync",
    "async",
    "streams",
    "ai",
    "push",
    "memory",
    "import",
    "coalesce",
    "remote_write",
    "collect",
    "genai",
    "tracing",
)
#: Sections that must have run, not been skipped, on a machine with the bench extra.
ALWAYS_RUN = ("sync", "async", "streams", "import", "memory", "collect")


def positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "quick.json"
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1. Sync call" in done.stdout and "7. Import" in done.stdout  # the printed table
    document: dict[str, Any] = json.loads(output.read_text())
    return document


def test_every_section_is_reported(report: dict[str, Any]) -> None:
    assert list(report["sections"]) == list(SECTIONS)
    assert report["meta"]["mode"] == "quick"
    for key, section in report["sections"].items():
        assert section["error"] is None, key
        assert section["status"] in ("ok", "skipped"), key
        if section["status"] == "skipped":
            assert section["skipped"], f"{key} was skipped without saying why"
    for key in ALWAYS_RUN:
        assert report["sections"][key]["status"] == "ok", key


def test_sections_are_numbered_as_the_runner_lists_them(report: dict[str, Any]) -> None:
    # The numbers --sections takes, the table's and the summary's are one: the runner's.
    numbers = {key: section["number"] for key, section in report["sections"].items()}
    assert numbers == {key: n for n, key in enumerate(SECTIONS, start=1)}


def test_optional_sections_run_when_they_can(report: dict[str, Any]) -> None:
    sections = report["sections"]
    if importlib.util.find_spec("instrument.ai") is not None:
        assert sections["ai"]["status"] == "ok"
        assert {"bare_stream", "ai_stream"} <= {r["key"] for r in sections["streams"]["rows"]}
        assert {"models", "models_unguarded"} <= {r["key"] for r in sections["memory"]["rows"]}
    if shutil.which("prometheus-pushgateway") is not None:
        assert sections["push"]["status"] == "ok"
        if shutil.which("prometheus") is not None:
            assert sections["remote_write"]["status"] == "ok"
            keys = {r["key"] for r in sections["remote_write"]["rows"]}
            assert keys == {f"{t}_{n}" for t in ("gateway", "remote") for n in (100, 1000, 10000)}
            assert all(positive(r["info"]["bytes"]) for r in sections["remote_write"]["rows"])


@pytest.mark.parametrize("key", [s for s in SECTIONS if s != "memory"])
def test_medians_and_ratios_are_positive_numbers(report: dict[str, Any], key: str) -> None:
    for row in report["sections"][key]["rows"]:
        assert positive(row["median"]), row
        assert row["samples"] >= 1
        assert all(positive(value) for value in row["ratios"].values()), row


def test_memory_rows_are_numbers(report: dict[str, Any]) -> None:
    # RSS growth may be zero (or even negative): only its being measured is checked.
    for row in report["sections"]["memory"]["rows"]:
        assert number(row["median"]), row
        assert positive(row["info"]["rss_before"]) and positive(row["info"]["rss_after"])


def test_ratios_are_against_the_baselines(report: dict[str, Any]) -> None:
    for key in ("sync", "async"):
        rows = {row["key"]: row for row in report["sections"][key]["rows"]}
        assert set(rows) == {"bare", "inlined", "monitored", "stacked", "labels_per_call", "before"}
        assert rows["bare"]["ratios"]["vs_bare"] == 1
        assert rows["inlined"]["ratios"]["vs_inlined"] == 1


def test_targets_and_checks_are_reported(report: dict[str, Any]) -> None:
    # Targets are informational: only their shape is checked, never whether they are met.
    for section in report["sections"].values():
        for target in section["targets"]:
            assert number(target["value"]) and number(target["limit"])
            assert isinstance(target["met"], bool)
        # Checks are about correctness (every timed call was recorded), not speed.
        assert all(check["ok"] for check in section["checks"]), section["checks"]
    import_checks = report["sections"]["import"]["checks"]
    assert any("aiohttp" in check["description"] for check in import_checks)


def test_hot_path_profile_runs() -> None:
    # The hot-path profiling aid keeps working as the engine changes.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hotpath", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Where one @monitored_analysis call goes" in done.stdout


def test_a_stalled_calibration_batch_does_not_set_the_round_size() -> None:
    # On a loaded machine one batch of a few calls may stall; the rounds must still be
    # sized by what the calls cost, not by the stall (a round of one call is timer-bound).
    import time

    from benchmarks.harness import Variant, measure

    stalls = [True]

    def batch(n: int) -> float:
        t0 = time.perf_counter()
        if stalls:
            stalls.pop()
            time.sleep(0.05)
        for _ in range(n):
            pass
        return time.perf_counter() - t0

    timings = measure([Variant("loop", "empty loop", batch)], rounds=1, batch_seconds=0.01)
    assert timings["loop"].calls_per_round > 1000


def test_genai_section_sets_semconv_and_attribution_beside_the_plain_call(
    report: dict[str, Any],
) -> None:
    section = report["sections"]["genai"]
    if section["status"] == "skipped":
        pytest.skip("track_ai_call cannot be benchmarked here")
    rows = {row["key"]: row for row in section["rows"]}
    assert set(rows) == {"plain", "attributed", "semconv", "stream", "stream_semconv"}
    assert rows["plain"]["ratios"]["vs_plain"] == 1 and rows["stream"]["ratios"]["vs_plain"] == 1
    limits = {target["description"]: target["limit"] for target in section["targets"]}
    assert sorted(limits.values()) == [1.15, 1.3, 1.3]
    assert any("genai_semconv=True" in description for description in limits)
    checks = [check["description"] for check in section["checks"]]
    assert any("gen_ai_client_operation_duration" in check for check in checks)
