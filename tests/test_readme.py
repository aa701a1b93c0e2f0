"""Every Python block of README.md runs as written (issue 18: a README that cannot drift).

The blocks run in README order, each as a script of its own in a child process (``python -m
tests.test_readme BLOCK DUMP``), so what a script does at exit (the final push) happens as
it would for a user. The README's URLs are pointed at the suite's servers: its Pushgateway
(``http://127.0.0.1:9091``, ``http://pushgateway:9091``) at the real one, its Grafana
(``http://grafana:3000``) at the Grafana stand-in, and the SDKs' clients, through
``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``, at the local LLM server; a child may reach
nothing but 127.0.0.1. A block with ``def test_...`` is a test file, run by pytest.

A block meant as a fragment says so on the line before it, ``<!-- fragment -->``: it is
only compiled. New blocks are picked up as they are written; the checks every block gets
are that it runs cleanly (no traceback, no warning from the library) and that a block
that pushes does so under a job of its own, which no later block overwrites. The blocks
named in :data:`CHECKS` are also checked for what they promise, read back from the
gateway, the stand-in or the registry.
"""

from __future__ import annotations

import ast
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from instrument import Instrumentation, get_instrumentation
from instrument.demo.llm_server import DEFAULT_COMPLETION_TOKENS, LocalLLMServer

from .fake_grafana import TOKEN, FakeGrafana
from .servers import Pushgateway
from .support import ROOT, SDK_MODULES, go_offline, require_sdk

README = ROOT / "README.md"
FRAGMENT = "<!-- fragment -->"

#: A sample as the child dumps it: (name, labels, value).
Sample = tuple[str, dict[str, str], float]


# -- the blocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    name: str  # the heading it stands under, as a slug (-2, -3 for more under one heading)
    line: int  # of its opening fence
    code: str
    fragment: bool

    @property
    def filename(self) -> str:
        """The name its first line gives it (``# my_job.py``), else one from its heading."""
        first = self.code.split("\n", 1)[0]
        named = re.fullmatch(r"#\s*(\w+\.py)\s*", first)
        return named.group(1) if named else f"{self.name.replace('-', '_')}.py"

    @property
    def is_test_file(self) -> bool:
        return re.search(r"^def test_\w+\(", self.code, re.MULTILINE) is not None

    def sdks(self) -> list[str]:
        """The LLM SDKs the block imports, by their names in SDK_MODULES."""
        imported: set[str] = set()
        for node in ast.walk(ast.parse(self.code)):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)  # and ``from google import genai``:
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        return [sdk for sdk, module in SDK_MODULES.items() if module in imported]


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def readme_blocks(text: str) -> list[Block]:
    """Every ```python block of ``text``, with the heading above it."""
    blocks: list[Block] = []
    heading, seen = "top", dict[str, int]()
    lines = text.split("\n")
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("```"):
            start, language = number, line[3:].strip()
            number += 1
            while number < len(lines) and not lines[number].startswith("```"):
                number += 1
            if language == "python":
                before = [ln for ln in lines[:start] if ln.strip()]
                seen[heading] = seen.get(heading, 0) + 1
                name = heading if seen[heading] == 1 else f"{heading}-{seen[heading]}"
                blocks.append(
                    Block(
                        name=name,
                        line=start + 1,
                        code="\n".join(lines[start + 1 : number]) + "\n",
                        fragment=bool(before) and before[-1].strip() == FRAGMENT,
                    )
                )
        elif line.startswith("#"):
            heading = _slug(line.lstrip("#"))
        number += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


# -- the child: one block as a script, and what it recorded --------------------------------------


def _child(script: str, dump: str) -> None:
    """Run ``script`` as ``__main__``, then dump the samples of every Instrumentation it
    made (and of the default one) to ``dump`` as JSON. Its exit hooks run after this."""
    go_offline()
    namespace = runpy.run_path(script, run_name="__main__")
    registries = {id(get_instrumentation().registry): get_instrumentation().registry}
    for value in namespace.values():
        if isinstance(value, Instrumentation):
            registries[id(value.registry)] = value.registry
    samples = [
        (s.name, dict(s.labels), s.value)
        for registry in registries.values()
        for family in registry.collect()
        for s in family.samples
    ]
    Path(dump).write_text(json.dumps(samples))


# -- the parent: every block in README order against the suite's servers ------------------------


@dataclass
class Ran:
    block: Block
    result: subprocess.CompletedProcess[str] | None = None  # None: a fragment, only compiled
    samples: list[Sample] = field(default_factory=list)
    #: The gateway's samples of this toolkit, by job, right after the block ran.
    groups: dict[str, set[tuple[str, str, float]]] = field(default_factory=dict)
    skipped: str = ""

    def value(self, name: str, **labels: str) -> float | None:
        """A sample the block recorded, as a user reads it from the block's registry."""
        found = [v for n, lab, v in self.samples if n == name and labels.items() <= lab.items()]
        assert len(found) <= 1, f"{len(found)} samples match {name}{labels}"
        return found[0] if found else None


@dataclass
class Tour:
    gateway: Pushgateway
    grafana: FakeGrafana
    llm: LocalLLMServer
    ran: dict[str, Ran]

    def pushed(self, job: str) -> set[tuple[str, str, float]]:
        return _groups(self.gateway).get(job, set())


def _groups(gateway: Pushgateway) -> dict[str, set[tuple[str, str, float]]]:
    """This toolkit's samples on the gateway, by job (the gateway's own push_time_seconds
    and the like left out)."""
    groups: dict[str, set[tuple[str, str, float]]] = {}
    for name, labels, value in gateway.samples():
        if name.startswith("codomyrmex_") and "job" in labels:
            rest = json.dumps({k: v for k, v in sorted(labels.items()) if k != "job"})
            groups.setdefault(labels["job"], set()).add((name, rest, value))
    return groups


def _localized(code: str, tour: Tour) -> str:
    """The block with the README's server URLs pointed at the suite's servers."""
    for readme_url, local_url in (
        ("http://127.0.0.1:9091", tour.gateway.url),
        ("http://pushgateway:9091", tour.gateway.url),
        ("http://grafana:3000", tour.grafana.url),
    ):
        code = code.replace(readme_url, local_url)
    return code


def _environment(tour: Tour) -> dict[str, str]:
    """The user's environment, as the README assumes it: an API key for each SDK and a
    Grafana token set; nothing of ours (INSTRUMENT_*, GRAFANA_*) leaking in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INSTRUMENT_", "GRAFANA_"))}
    base.pop("COVERAGE_PROCESS_START", None)
    return {
        **base,
        "PYTHONPATH": os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OPENAI_API_KEY": "sk-readme-0123456789",
        "OPENAI_BASE_URL": tour.llm.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-readme-0123456789",
        "ANTHROPIC_BASE_URL": tour.llm.url,
        "GRAFANA_TOKEN": TOKEN,
    }


def _run(block: Block, tour: Tour, workdir: Path) -> Ran:
    ran = Ran(block)
    if block.fragment:
        compile(block.code, f"README.md:{block.line}", "exec")
        return ran
    for sdk in block.sdks():
        try:
            require_sdk(sdk)
        except pytest.skip.Exception as skip:
            ran.skipped = str(skip)
            return ran
    script = workdir / block.filename
    script.write_text(_localized(block.code, tour))
    dump = workdir / f"{block.name}.json"
    if block.is_test_file:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name]
    else:
        command = [sys.executable, "-m", "tests.test_readme", script.name, str(dump)]
    ran.result = subprocess.run(
        command,
        cwd=workdir,
        env=_environment(tour),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if dump.exists():
        ran.samples = [(n, labels, v) for n, labels, v in json.loads(dump.read_text())]
    ran.groups = _groups(tour.gateway)
    return ran


@pytest.fixture(scope="module")
def tour(
    pushgateway_server: Pushgateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tour]:
    workdir = tmp_path_factory.mktemp("readme")
    pushgateway_server.wipe()
    with FakeGrafana() as grafana, LocalLLMServer() as llm:
        tour = Tour(pushgateway_server, grafana, llm, {})
        for block in BLOCKS:
            tour.ran[block.name] = _run(block, tour, workdir)
        yield tour


def _ran(tour: Tour, name: str) -> Ran:
    ran = tour.ran[name]
    if ran.skipped:
        pytest.skip(ran.skipped)
    assert ran.result is not None and ran.result.returncode == 0, name
    return ran


# -- what every block gets ---------------------------------------------------------------------


def test_the_readme_has_blocks_and_few_fragments() -> None:
    assert len(BLOCKS) >= 7
    assert sum(b.fragment for b in BLOCKS) <= 2, "fragments stay rare: make the block run"
    assert len({b.name for b in BLOCKS}) == len(BLOCKS)


def test_blocks_are_found_under_their_headings_and_a_fragment_is_marked() -> None:
    text = "\n".join(
        [
            "# Title",
            "```python",
            "print(1)",
            "```",
            "```sh",
            "echo not python",
            "```",
            "## Some `code`, here",
            FRAGMENT,
            "",
            "```python",
            "x = (",
            "```",
            "```python",
            "# my_job.py",
            "def test_it(): ...",
            "```",
        ]
    )
    first, fragment, named = readme_blocks(text)
    assert (first.name, first.line, first.code, first.fragment) == ("title", 2, "print(1)\n", False)
    assert (fragment.name, fragment.fragment) == ("some-code-here", True)
    assert (named.name, named.fragment, named.filename) == ("some-code-here-2", False, "my_job.py")
    assert named.is_test_file and not first.is_test_file
    assert first.filename == "title.py"
    imports = "```python\nimport os, openai\nfrom google import genai\nfrom anthropic import X\n```"
    assert readme_blocks(imports)[0].sdks() == ["openai", "anthropic", "google-genai"]


@pytest.mark.subprocess
def test_a_child_reaches_nothing_but_loopback(tmp_path: Path) -> None:
    """The guard is on in every block's process: a README URL left pointing elsewhere fails."""
    script = tmp_path / "outside.py"
    script.write_text("import socket\nsocket.getaddrinfo('example.com', 443)\n")
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_readme", str(script), str(tmp_path / "dump.json")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "the test suite allows 127.0.0.1 only, not 'example.com'" in result.stderr
    assert not (tmp_path / "dump.json").exists()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
@pytest.mark.subprocess
@pytest.mark.sdk
def test_every_block_runs_cleanly(tour: Tour, block: Block) -> None:
    ran = tour.ran[block.name]
    if ran.skipped:
        pytest.skip(ran.skipped)
    if block.fragment:
        return  # compiled when the tour ran
    assert ran.result is not None
    output = ran.result.stdout + ran.result.stderr
    assert ran.result.returncode == 0, f"README.md:{block.line} ({block.name}) failed:\n{output}"
    assert "Traceback" not in output, output
    # The library logs its warnings ("instrument: push to ... failed") under this prefix.
    assert "instrument:" not in ran.result.stderr, ran.result.stderr


@pytest.mark.subprocess
@pytest.mark.sdk
def test_each_pushing_block_has_a_job_of_its_own_that_no_later_block_overwrites(
    tour: Tour,
) -> None:
    before: dict[str, set[tuple[str, str, float]]] = {}
    owners: dict[str, str] = {}
    pushing = []
    for ran in tour.ran.values():
        if ran.result is None:
            continue
        changed = {job for job, got in ran.groups.items() if before.get(job) != got}
        for job in changed:
            assert job not in owners, (
                f"{ran.block.name} pushed to job {job!r}, which {owners[job]} pushed to: "
                "give each snippet its own job"
            )
            owners[job] = ran.block.name
        if changed:
            pushing.append(ran)
        before = ran.groups
    assert len(pushing) >= 4, f"only {[r.block.name for r in pushing]} pushed"
    assert "codomyrmex" not in owners, "a snippet pushed the default job"
    for ran in pushing:  # at the end, each group is still what its block left
        for job, owner in owners.items():
            if owner == ran.block.name:
                assert tour.pushed(job) == ran.groups[job], f"{job} was overwritten"


# -- what the blocks promise -------------------------------------------------------------------


def _five_minutes(tour: Tour, ran: Ran) -> None:
    """The curl output the README shows under my_job.py is what the gateway holds."""
    shown = re.findall(r"^# \.\.\.(\{[^}]*\}) (\d+)$", README.read_text(), re.MULTILINE)
    assert shown, "the README shows no curl output line"
    for labels_text, value in shown:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
        labels.pop("instance", None)  # "" on the gateway's page: the group has none
        assert tour.gateway.value("codomyrmex_analyses_total", **labels) == float(value)


def _decorating(tour: Tour, ran: Ran) -> None:
    job = "analysis-example"
    gateway = tour.gateway
    for module, kind in (
        ("static_analysis", "codebase"),
        ("static_analysis", "complexity"),
        ("discovery", "walk"),
    ):
        labels = {"module": module, "analysis_type": kind, "job": job}
        assert gateway.value("codomyrmex_analyses_total", status="success", **labels) == 1
        assert gateway.value("codomyrmex_analyses_total", status="error", **labels) == 0
    quality = {"project": "src", "module": "static_analysis", "job": job}
    assert gateway.value("codomyrmex_code_quality_score", **quality) == 87.5


def _llm_calls(tour: Tour, ran: Ran) -> None:
    calls = "codomyrmex_ai_api_calls_total"
    assert ran.value(calls, provider="openai", model="gpt-4o", status="success") == 2
    assert ran.value(calls, provider="openai", model="gpt-4o-mini", status="success") == 1
    assert ran.value(calls, provider="anthropic", model="claude-sonnet-4-6", status="success") == 2
    for provider, model in (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-6")):
        ttft = ran.value(
            "codomyrmex_ai_time_to_first_token_seconds_count", provider=provider, model=model
        )
        assert ttft == 1, (provider, model)  # the one stream of each
    tokens = "codomyrmex_ai_tokens_used_total"
    # The server replies with the asked limit in words (12 when none is asked).
    output = ran.value(tokens, provider="anthropic", model="claude-sonnet-4-6", token_type="output")
    assert output == 2 * 512
    gpt_out = ran.value(tokens, provider="openai", model="gpt-4o", token_type="output")
    assert gpt_out == 2 * DEFAULT_COMPLETION_TOKENS
    assert (ran.value(tokens, provider="openai", model="gpt-4o", token_type="input") or 0) > 0
    missing = "codomyrmex_ai_usage_missing_total"
    assert not any(v for n, _, v in ran.samples if n == missing)


def _with_blocks(tour: Tour, ran: Ran) -> None:
    gateway = tour.gateway
    labels = {"module": "indexer", "analysis_type": "reindex", "job": "indexer"}
    assert gateway.value("codomyrmex_analyses_total", status="success", **labels) == 2
    quality = "codomyrmex_code_quality_score"
    assert gateway.value(quality, project="indexer", module="indexer", job="indexer") == 91.5
    assert gateway.value(quality, project="repo", module="indexer", job="indexer") == 88.0


def _grafana_client(tour: Tour, ran: Ran) -> None:
    (folder,) = [f for f in tour.grafana.folders.values() if f["title"] == "Team"]
    # The first dashboard saved is this block's (the migration block saves it again later).
    saved = tour.grafana.seen("POST", "/api/dashboards/db")[0].body
    assert saved["folderUid"] == folder["uid"]
    assert saved["dashboard"]["uid"] == "codomyrmex-analytics"
    assert ran.result is not None
    url = f"{tour.grafana.url}/d/codomyrmex-analytics/codomyrmex-analytics"
    assert ran.result.stdout.split() == [url, "1"]  # print(result.url, result.version)


def _testing(tour: Tour, ran: Ran) -> None:
    assert ran.result is not None and "1 passed" in ran.result.stdout


def _migrating(tour: Tour, ran: Ran) -> None:
    labels = {"module": "static_analysis", "analysis_type": "codebase", "job": "migrated-job"}
    assert tour.gateway.value("codomyrmex_analyses_total", status="success", **labels) == 1
    assert "codomyrmex-analytics" in tour.grafana.dashboards
    assert ran.result is not None and "codomyrmex-analytics" in ran.result.stdout


#: What the named blocks promise, checked after they ran.
CHECKS: dict[str, Callable[[Tour, Ran], None]] = {
    "your-own-function-on-a-pushgateway-in-five-minutes": _five_minutes,
    "decorating-analysis-functions": _decorating,
    "wrapping-llm-client-calls": _llm_calls,
    "with-blocks-around-ad-hoc-jobs": _with_blocks,
    "seeing-it": _grafana_client,
    "testing-your-own-code": _testing,
    "migrating-from-prometheusintegration-grafanaintegration": _migrating,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.subprocess
@pytest.mark.sdk
def test_the_block_does_what_the_readme_says(tour: Tour, name: str) -> None:
    assert name in tour.ran, f"no README block under {name!r} any more: update CHECKS"
    CHECKS[name](tour, _ran(tour, name))


if __name__ == "__main__":
    _child(*sys.argv[1:])
