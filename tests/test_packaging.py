"""What is released: the sdist runs its own tests, the wheel holds the package alone.

Both are built as a release would build them (``python -m build``: the sdist, then the wheel
from it), offline with the venv's setuptools (``--no-isolation``), from a copy of this
checkout without its caches and environment.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .support import ROOT

# Builds the sdist and wheel, and runs them, in child processes.
pytestmark = pytest.mark.subprocess

# What a checkout holds besides its sources: caches, the environment, build output.
NOT_SOURCE = (
    ".git",
    ".venv",
    "__pycache__",
    "*.py[cod]",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".coverage*",
    ".benchmarks-quick.json",
    "build",
    "dist",
)
# Where the tests' imports and reads lead, besides the package: all of it is shipped.
SHIPPED_DIRS = ("instrument", "tests", "benchmarks", "deploy", "scripts")
SHIPPED_FILES = ("README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in")
# Files of the test tree that read the rest of the checkout (deploy/, README.md, benchmarks/).
READS_THE_CHECKOUT = (
    "config/test_settings.py",
    "test_dashboard.py",
    "test_rules.py",
    "test_deploy.py",
)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("packaging") / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return source


@pytest.fixture(scope="module")
def dist(checkout: Path) -> Path:
    out = checkout.parent / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(checkout)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def unpacked(dist: Path) -> Path:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        # filter= (refusing links out of the tree) exists from Python 3.11.4 on.
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dist / "unpacked", filter="data")
        else:  # pragma: no cover
            archive.extractall(dist / "unpacked")
    (root,) = (dist / "unpacked").iterdir()
    return root


def sdist_names(dist: Path) -> set[str]:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        return {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}


def test_the_sdist_ships_every_source_file_and_nothing_else(checkout: Path, dist: Path) -> None:
    sources = {
        str(path.relative_to(checkout))
        for top in SHIPPED_DIRS
        for path in (checkout / top).rglob("*")
        if path.is_file()
    } | set(SHIPPED_FILES)
    assert {"tests/conftest.py", "tests/servers.py", "tests/ai_fakes.py"} <= sources
    names = sdist_names(dist)
    generated = {"PKG-INFO", "setup.cfg"} | {
        n for n in names if n.startswith("codomyrmex_instrument.egg-info/")
    }
    assert names - generated == sources
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


def test_the_wheel_ships_the_package_alone(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.parser.Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"instrument", "codomyrmex_instrument-0.1.0.dist-info"}
    assert "instrument/py.typed" in names and "instrument/cli.py" in names
    # The demo and its LLM server are shipped: `instrument demo` works from a wheel.
    assert {"instrument/demo/__init__.py", "instrument/demo/llm_server.py"} <= set(names)
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    runtime = {
        re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower()
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
    }
    assert runtime == {"prometheus-client", "wrapt", "aiohttp"}


def in_unpacked(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python in the unpacked sdist, importing its own ``instrument`` and ``tests``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("COVERAGE_PROCESS_START", None)  # measured here, not in the copy
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def collected(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"^(\d+) tests? collected", result.stdout, re.MULTILINE)
    assert match is not None, result.stdout[-2000:]
    return int(match.group(1))


def test_the_unpacked_sdist_collects_the_same_tests(unpacked: Path, checkout: Path) -> None:
    found = in_unpacked(unpacked, "-c", "import instrument, tests; print(instrument.__file__)")
    assert found.stdout.strip() == str(unpacked / "instrument" / "__init__.py")
    command = ("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "")
    assert collected(in_unpacked(unpacked, *command)) == collected(in_unpacked(checkout, *command))


def test_the_unpacked_sdist_passes_the_tests_that_read_the_checkout(unpacked: Path) -> None:
    """The full suite passes there too (run by hand for a release); these are the files whose
    tests read deploy/, README.md and the generated artifacts."""
    files = [f"tests/{name}" for name in READS_THE_CHECKOUT]
    everything = ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "")
    result = in_unpacked(unpacked, *everything, *files)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed", summary) and "failed" not in summary, summary


def test_the_demo_runs_from_the_wheel(dist: Path, tmp_path: Path) -> None:
    """What ``pip install`` of the wheel lays out (a pure wheel unpacks as is), run as a user
    would: the demo tour with its local LLM server, nothing from this checkout."""
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.py").write_text('def f():\n    """Doc."""\n    return 1\n')
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("COVERAGE_PROCESS_START", None)
    result = subprocess.run(
        [sys.executable, "-m", "instrument", "demo", str(project), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"analysed {project}" in result.stdout
    assert "LLM calls" in result.stdout and "(LLM calls skipped" not in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import instrument.demo as d; print(d.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(site / "instrument" / "demo" / "__init__.py")
