"""The `instrument` command as a user runs it: demo, errors, help, `python -m instrument`."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from instrument.cli import main
from instrument.demo import quantile_of_buckets, tour

from ..fake_grafana import TOKEN, FakeGrafana
from ..servers import Pushgateway, free_port

# Most tests run the command in a child process, as a user does.
pytestmark = pytest.mark.subprocess

SAMPLE = '''
def documented(x):
    """Doc."""
    if x:
        return 1
    return 2


def undocumented(y):
    return [i for i in range(y) if i % 2]
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "sample"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text(SAMPLE)
    (root / "pkg" / "b.py").write_text(SAMPLE.replace("documented", "other"))
    return root


def test_demo_prints_what_the_registry_recorded(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", str(project), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"analysed {project}" in out
    # Two files analysed plus the deliberately broken one: 3 calls, 1 error.
    row = next(line for line in out.splitlines() if "static_analysis/file" in line)
    assert row.split()[:4] == ["static_analysis/file", "3", "1", "33.3%"]
    assert "LLM calls" in out and "gpt-4o" in out
    assert "instrument demo --serve" in out


def test_demo_pushes_to_a_real_pushgateway(
    project: Path, pushgateway: Pushgateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", str(project), "--quiet", "--pushgateway", pushgateway.url]) == 0
    assert "Pushed to" in capsys.readouterr().out
    value = pushgateway.value(
        "codomyrmex_analyses_total",
        job="instrument-demo",
        module="static_analysis",
        analysis_type="file",
        status="error",
    )
    assert value == 1


def test_demo_with_an_unreachable_gateway_is_one_line_and_exit_1(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://user:hunter2@127.0.0.1:{free_port()}"
    assert main(["demo", str(project), "--quiet", "--pushgateway", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("instrument: error: could not push to the Pushgateway")
    assert "\n" not in err and "hunter2" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "/nonexistent/dir"], "is not a directory"),
        (
            ["demo", "--pushgateway", "ftp://x"],
            "URL; use one such as http://127.0.0.1:9091",
        ),
    ],
)
def test_demo_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--quiet"]) == 2  # a usage error, as argparse's own
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_demo_applies_the_dashboard_to_grafana(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_grafana: FakeGrafana,
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert main(["demo", str(project), "--quiet", "--grafana-url", fake_grafana.url]) == 0
    assert "dashboard 'codomyrmex-analytics' saved in Grafana" in capsys.readouterr().out
    saved = fake_grafana.seen("POST", "/api/dashboards/db")
    assert len(saved) == 1
    assert saved[0].body["dashboard"]["uid"] == "codomyrmex-analytics"


def test_demo_serve_keeps_metrics_up_until_interrupted(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    scraped: list[str] = []

    def stop_after_scrape(_: float) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            scraped.append(resp.read().decode())
        raise KeyboardInterrupt

    monkeypatch.setattr(tour.time, "sleep", stop_after_scrape)
    assert main(["demo", str(project), "--quiet", "--serve", str(port)]) == 0
    assert len(scraped) == 1
    assert (
        'codomyrmex_analyses_total{analysis_type="file",module="static_analysis",status="error"} 1.0'
        in scraped[0]
    )
    with pytest.raises(OSError):  # shut down once interrupted
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_demo_serve_on_a_busy_port_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["demo", str(project), "--quiet", "--serve", str(port)]) == 1
    assert "cannot serve on 127.0.0.1" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("demo", "dashboard", "rules"):
        assert command in out


def test_python_dash_m_instrument() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "instrument", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("instrument ")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(1.0, 0), (2.0, 10), (float("inf"), 10)], 1.5),
        (0.95, [(0.1, 5), (1.0, 10), (float("inf"), 10)], 0.91),
        (0.5, [(1.0, 0), (float("inf"), 4)], 1.0),
    ],
)
def test_quantile_of_buckets_matches_prometheus(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert quantile_of_buckets(q, buckets) == pytest.approx(expected)


def test_quantile_of_buckets_of_nothing_is_nan() -> None:
    import math

    assert math.isnan(quantile_of_buckets(0.5, [(1.0, 0), (float("inf"), 0)]))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "instrument", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--quiet", "--pushgateway", "http://127.0.0.1:{port}"],
        ["dashboard", "--apply", "--grafana-url", "http://127.0.0.1:{port}"],
    ],
    ids=["gateway-unreachable", "grafana-unreachable"],
)
def test_expected_failures_print_exactly_one_line(args: list[str], project: Path) -> None:
    """As a user sees it: the library's retry and outage logs stay out of the way."""
    port = str(free_port())
    argv = [a.format(port=port) for a in args]
    if argv[0] == "demo":
        argv.insert(1, str(project))
    result = run_cli(*argv)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("instrument: error: "), result.stderr
    verbose = run_cli("-v", *argv)
    assert verbose.returncode == 1
    assert len(verbose.stderr.splitlines()) > 1  # -v shows the log lines too


def test_namespace_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTRUMENT_NAMESPACE", "acme")
    monkeypatch.setenv("INSTRUMENT_PUSH_INTERVAL", "not a number")  # unrelated to rules
    assert main(["rules"]) == 0
    text = capsys.readouterr().out
    assert "acme_analyses_total" in text and "codomyrmex_" not in text


def test_apply_without_a_url_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    target = tmp_path / "dashboard.json"
    assert main(["dashboard", "--apply", "--output", str(target)]) == 2
    assert not target.exists()
    captured = capsys.readouterr()
    assert captured.out == "" and "--apply needs Grafana's URL" in captured.err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["dashboard", "rules"])
def test_a_full_standard_output_is_one_line(command: str) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "instrument", command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "instrument: error: cannot write standard output: No space left on device"
    )


def test_a_closed_pipe_is_not_an_error() -> None:
    result = subprocess.run(
        f"{sys.executable} -m instrument dashboard | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == '{\n  "uid":'
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
