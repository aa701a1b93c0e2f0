"""A newcomer's first hour (issue 18): the distribution's name and metadata, the CLI's
messages, the demo's explanations, the scripts' setup, the plugin's fixture name, and a
wheel installed into a new venv running the README's first example and the demo."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from instrument import __version__
from instrument.cli import main

from .support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
DIST = "codomyrmex-instrument"


def readme_first_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert match is not None
    return match.group(1)


# -- the distribution -----------------------------------------------------------------------


def test_the_distribution_has_a_free_name_and_the_metadata_an_index_page_shows() -> None:
    assert PROJECT["name"] == DIST
    assert __version__ == PROJECT["version"]  # found by the new name, not the fallback
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    classifiers = set(PROJECT["classifiers"])
    assert {"Typing :: Typed", "Programming Language :: Python :: 3.11"} <= classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: SPDX only
    assert PROJECT["authors"] and PROJECT["urls"]
    assert PROJECT["requires-python"] == ">=3.11"


def test_the_test_extra_is_what_users_need_and_dev_is_the_projects_tooling() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"cli", "test", "dev", "sdk", "tracing"}
    assert extras["tracing"] == ["opentelemetry-api>=1.20"]
    assert extras["test"] == ["pytest>=8"]
    tools = {re.split(r"[<>=]", r, maxsplit=1)[0] for r in extras["dev"]}
    assert {"pytest", "mypy", "ruff", "hypothesis", "build", "prometheus-async"} <= tools
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "install_once dev,cli,sdk" in script
    assert "install_once cli" in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_readme_opens_with_the_install_lines_and_a_short_example() -> None:
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert f"pip install {DIST}" in head and f'pip install "{DIST}[cli]"' in head
    assert "REGISTRY" in head
    example = readme_first_python_block()
    assert len([line for line in example.splitlines() if line.strip()]) <= 10


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["rules"], r"the rules of namespace codomyrmex \(\d+ alerts, \d+ recording rules\)"),
        (["dashboard"], r"the dashboard 'Codomyrmex Analytics' \(uid codomyrmex-analytics"),
    ],
)
def test_output_says_what_it_wrote_and_where(
    command: list[str], what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.file"
    assert main([*command, "--output", str(target)]) == 0
    out = capsys.readouterr().out
    size = len(target.read_bytes())
    assert size > 0
    assert re.fullmatch(f"wrote {what}.* to {re.escape(str(target))} \\({size} bytes\\)\n", out)
    # On stdout, the text alone: nothing else mixed into what a pipe reads.
    assert main([*command, "--output", "-"]) == 0
    assert capsys.readouterr().out.encode() == target.read_bytes()


def test_verbose_log_lines_carry_the_prefix_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from instrument import cli

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with cli._command_logging(1):
        logging.getLogger("instrument").warning("instrument: push to %s failed", "gw")
        logging.getLogger("instrument.delivery").info("retrying in %s s", 2)
    assert stderr.getvalue().splitlines() == [
        "instrument: WARNING: push to gw failed",
        "instrument: INFO: retrying in 2 s",
    ]


# -- the demo -----------------------------------------------------------------------------------


def test_the_demo_says_what_is_staged_and_what_to_do_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.py").write_text('def f():\n    """Doc."""\n    return 1\n')
    assert main(["demo", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "local OpenAI-compatible stand-in" in out and "no real API is called" in out
    assert "broken on purpose" in out and "staged 429" in out
    assert "Nothing was pushed" in out
    steps = out.split("Next steps:", 1)[1]
    assert re.findall(r"^  (\d)\. ", steps, re.MULTILINE) == ["1", "2", "3"]
    assert "@monitored_analysis" in steps and "/metrics" in steps
    assert "instrument dashboard" in steps
    # The per-file gauge holds the last file's score: labelled so, not as a total.
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "the last file analysed" in rows[f"{tmp_path.name}/static_analysis"]
    assert "mean of the files" in rows[f"{tmp_path.name}/overall"]


# -- the scripts --------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_demo_sh_with_a_missing_python_says_so_cleanly() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env={**os.environ, "PYTHON": "nonexistent-python"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "instrument needs Python 3.11 or newer; there is no 'nonexistent-python' on PATH.",
        f"Point PYTHON at one, e.g. PYTHON=python3.12 {ROOT / 'scripts' / 'demo.sh'}",
    ]


@pytest.mark.subprocess
def test_install_once_skips_pip_while_pyproject_is_unchanged(tmp_path: Path) -> None:
    """The stamp logic of scripts/_venv.sh, in a copy with a pip that only says it ran."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "_venv.sh").write_text((ROOT / "scripts" / "_venv.sh").read_text())
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(
        '#!/bin/sh\ncase "$*" in *"-m pip"*) echo "pip ran: $*";; *) exec '
        f'{sys.executable} "$@";; esac\n'
    )
    fake.chmod(0o755)
    script = 'source scripts/_venv.sh && install_once "$1"'

    def run(extras: str) -> str:
        result = subprocess.run(
            ["bash", "-c", script, "run", extras],
            cwd=tmp_path,
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "pip ran" in run("cli")
    assert "skipping pip" in run("cli") and "pip ran" not in run("cli")
    assert "pip ran" in run("dev,cli")  # other extras: installed
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert "pip ran" in run("dev,cli")  # pyproject changed: installed again


# -- the plugin's fixture -----------------------------------------------------------------------


@pytest.mark.subprocess
def test_the_plugin_fixture_has_a_prefixed_name_and_the_old_one_warns(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        "from instrument import monitored_analysis\n"
        "from instrument.testing import assert_analyses\n"
        "@monitored_analysis('m', 't')\n"
        "def f():\n    return 1\n"
        "def test_new(instrument_isolated):\n"
        "    f()\n"
        "    assert_analyses(instrument_isolated, 'm', 't', success=1)\n"
        "def test_old(instrumentation):\n"
        "    f()\n"
        "    assert_analyses(instrumentation, 'm', 't', success=1)\n"
    )

    def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_START"}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    plain = pytest_run()
    assert plain.returncode == 0, plain.stdout[-2000:]
    assert "2 passed" in plain.stdout
    assert "DeprecationWarning" in plain.stdout and "renamed 'instrument_isolated'" in plain.stdout
    strict = pytest_run("-W", "error:the pytest fixture:DeprecationWarning")
    assert re.search(r"1 passed.*1 error|1 error.*1 passed", strict.stdout), strict.stdout[-2000:]


# -- from a wheel, into a new venv --------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.integration
def test_a_wheel_in_a_new_venv_runs_the_readme_example_and_the_demo(tmp_path: Path) -> None:
    """``python -m build``, then ``pip install`` of the wheel into a new venv (its dependencies
    from the indexes pip is set up with), then the README's first block and the demo."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", ".*cache"),
    )
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("codomyrmex_instrument-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START")}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[cli]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if installed.returncode != 0 and "No matching distribution" in installed.stderr:
        pytest.skip(f"the wheel's dependencies are not reachable: {installed.stderr[-300:]}")
    assert installed.returncode == 0, installed.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "quickstart.py").write_text(readme_first_python_block())
    example = subprocess.run(
        [str(python), "quickstart.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert example.returncode == 0, example.stderr[-2000:]
    line = (
        'codomyrmex_analyses_total{analysis_type="codebase",module="static_analysis",'
        'status="success"} 1.0'
    )
    assert line in example.stdout.splitlines()
    version = subprocess.run(
        [
            str(python),
            "-c",
            "import instrument; print(instrument.__version__, instrument.__file__)",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found_version, found_file = version.stdout.split()
    assert found_version == PROJECT["version"]
    assert found_file.startswith(str(env_dir))
    (work / "proj").mkdir()
    (work / "proj" / "a.py").write_text("x = 1\n")
    demo = subprocess.run(
        [str(env_dir / "bin" / "instrument"), "demo", "proj", "--quiet"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "analysed proj" in demo.stdout and "Next steps:" in demo.stdout


# -- quiet CI output ----------------------------------------------------------------------------


def test_the_benchmarks_summary_prints_one_line_per_section(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.runner import main as benchmarks_main

    assert benchmarks_main(["--quick", "--summary", "--sections", "1,2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 4, lines  # the machine line, one per section, the totals
    for number, line in zip(("1", "2"), lines[1:3], strict=True):
        assert re.match(rf"{number}\. .*: (pass|FAIL); targets met \d/\d; .* \[\d+\.\d s\]$", line)
    assert "variant" not in "\n".join(lines)  # no table
    assert re.match(r"2 sections in .*; targets missed: \d+; checks failed: 0$", lines[3])
    assert "python -m benchmarks --quick --summary" in (ROOT / "scripts" / "test.sh").read_text()
