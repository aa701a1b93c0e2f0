"""The demo package: imported by the CLI's ``demo`` command only, itself importing no CLI,
shipped in the wheel, and touring the package when no directory is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import instrument
from instrument.cli import main
from instrument.demo import quantile_of_buckets

from .test_architecture import _edges

DEMO = "instrument.demo"


def _is_demo(module: str) -> bool:
    return module == DEMO or module.startswith(DEMO + ".")


def test_only_the_cli_imports_the_demo_and_the_demo_no_cli() -> None:
    edges = _edges()
    assert DEMO in edges, "instrument/demo/ is a package"
    importers = {
        m for m, targets in edges.items() if not _is_demo(m) and any(map(_is_demo, targets))
    }
    assert importers == {"instrument.cli"}
    assert {m: t for m, t in edges.items() if _is_demo(m) and "instrument.cli" in t} == {}


def test_the_library_loads_no_demo_and_no_web_server() -> None:
    # Everything the library offers, imported and used as far as needs no server.
    probe = (
        "import sys, instrument\n"
        "from instrument import cli, compat, config, dashboard, exposition, grafana, rules, testing\n"
        "for name in instrument.__all__: getattr(instrument, name)\n"
        "cli.build_parser()\n"
        "dashboard.build_dashboard('x'); rules.rules_yaml('x')\n"
        "print(sorted(m for m in sys.modules if m.startswith('instrument.demo')))\n"
        "print('aiohttp.web' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "False"]


def test_without_a_directory_the_tour_analyses_the_package(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    package = Path(instrument.__file__).resolve().parent
    assert f"instrument demo: analysed {package} in " in out
    files = [p for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    # Every file of the package and the deliberately broken one, the demo's own included.
    row = next(line for line in out.splitlines() if "static_analysis/file" in line)
    assert row.split()[1:3] == [str(len(files) + 1), "1"]
    assert "LLM calls" in out and "(LLM calls skipped" not in out


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Interpolated inside the bucket holding the rank, as Prometheus does.
        (0.25, [(1.0, 2), (2.0, 6), (4.0, 8), (float("inf"), 8)], 1.0),
        (0.5, [(1.0, 2), (2.0, 6), (4.0, 8), (float("inf"), 8)], 1.5),
        (0.875, [(1.0, 2), (2.0, 6), (4.0, 8), (float("inf"), 8)], 3.0),
        # A rank in +Inf answers the largest finite bound; unsorted input is sorted first.
        (0.99, [(float("inf"), 10), (1.0, 5)], 1.0),
    ],
)
def test_quantile_of_buckets_is_a_number_as_prometheus_estimates_it(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert quantile_of_buckets(q, buckets) == pytest.approx(expected)
