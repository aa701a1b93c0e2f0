"""Delivery defects from the hostile review, each against the real Pushgateway in a process of
its own: who deletes a group at exit after a fork, multiprocess mode turned on after
``import instrument``, and one group per host in multiprocess mode with ``instance=True``;
then the command line against the tests' fake Grafana: ``dashboard --apply -o FILE`` writes
FILE only once Grafana saved it, ``--ca-file`` / ``--insecure``, and error advice worded for
where it appears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, values

from instrument import Instrumentation, PrometheusIntegration, grafana
from instrument._command import tls_options
from instrument.cli import build_parser, main
from instrument.delivery import grouping_path
from instrument.grafana import GrafanaClient
from instrument.grafana.errors import _MESSAGES, error_for

from ..fake_grafana import TOKEN, FakeGrafana
from ..grafana import test_client
from ..servers import GatewayStandIn, Pushgateway
from ..support import ROOT, run_script
from ..support import pushed_analyses as analyses

# The Grafana tests' environment without Grafana variables, and their TLS pair.
grafana_env = test_client.grafana_env
certificate = test_client.certificate
tls_fake = test_client.tls_fake


def job_groups(gateway: Pushgateway, job: str) -> list[dict[str, str]]:
    """The grouping labels of every group of ``job`` the gateway holds."""
    return [g["labels"] for g in gateway.groups() if g["labels"].get("job") == job]


# -- rev-delivery 7: only the owner of a group deletes it at exit -------------------------------

FORKED_CHILD = """
import json, multiprocessing, os, urllib.request
from instrument import Instrumentation

inst = Instrumentation(
    pushgateway={gateway!r}, job={job!r}, push_interval=60, delete_on_exit=True,
    instance={instance!r},
)

@inst.monitored_analysis("m", "t")
def work(i):
    return i

def child():
    work(2)  # returning ends the child normally: its final flush runs

def groups():
    with urllib.request.urlopen({gateway!r} + "/api/v1/metrics") as answer:
        data = json.load(answer)["data"]
    return sorted(
        sorted(g["labels"].items()) for g in data if g["labels"].get("job") == {job!r}
    )

if __name__ == "__main__":
    work(1)
    assert inst.push()
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=child)
    p.start()
    p.join()
    assert p.exitcode == 0, p.exitcode
    print(json.dumps({{"after_child": groups(), "parent": os.getpid(), "child": p.pid}}))
"""


@pytest.mark.parametrize("instance", [False, "shared-name"])
def test_a_forked_child_sharing_the_group_never_deletes_it(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path, instance: bool | str
) -> None:
    code = FORKED_CHILD.format(gateway=pushgateway.url, job=job_name, instance=instance)
    result = run_script(tmp_path / "fork_delete.py", code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # The child pushed its final state into the shared group but left it in place...
    assert len(seen["after_child"]) == 1, seen
    # ...and the owner, at its own exit, delivered and then deleted it.
    assert job_groups(pushgateway, job_name) == []


def test_a_forked_child_with_a_group_of_its_own_deletes_only_that_one(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    code = FORKED_CHILD.format(gateway=pushgateway.url, job=job_name, instance=True)
    result = run_script(tmp_path / "fork_delete_own.py", code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    instances = [dict(labels)["instance"] for labels in seen["after_child"]]
    # The child's own group (its pid) is gone, the parent's is still there at that point.
    assert len(instances) == 1, seen
    assert instances[0].endswith(f"-{seen['parent']}")
    assert job_groups(pushgateway, job_name) == []


# -- rev-delivery 8/13: multiprocess mode turned on after `import instrument` -------------------

LATE_MULTIPROC = """
import os, sys
import instrument
from instrument.delivery import register_before_snapshot
from prometheus_client import generate_latest

os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]  # (again) after the import
inst = instrument.configure(pushgateway={gateway!r}, job={job!r}, push_interval=60)

@instrument.monitored_analysis("m", "t")
def work(i):
    return i

for i in range(5):
    work(i)
assert any(name.endswith(".db") for name in os.listdir(sys.argv[1])), "nothing in the directory"

hooks = []
register_before_snapshot(lambda: hooks.append("ran"))
scraped = generate_latest(inst.collect_registry()).decode()
assert hooks, "a scrape across processes skipped the before-collect hook"
line = 'codomyrmex_analyses_total{{analysis_type="t",module="m",status="success"}} 5.0'
assert line in scraped, scraped
inst.close()
"""


@pytest.mark.parametrize("set_before_import", [False, True])
def test_multiproc_dir_set_after_import_still_pushes_and_scrapes(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path, set_before_import: bool
) -> None:
    # Set before the import too: the scrape across processes must still run the hook.
    shared = tmp_path / "multiproc"
    shared.mkdir()
    code = LATE_MULTIPROC.format(gateway=pushgateway.url, job=job_name)
    path = tmp_path / "late.py"
    path.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(path), str(shared)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if "multiproc" not in k.lower()},
            **({"PROMETHEUS_MULTIPROC_DIR": str(shared)} if set_before_import else {}),
        },
    )
    assert result.returncode == 0, result.stderr
    assert analyses(pushgateway, job=job_name) == 5


# -- rev-delivery 6: multiprocess mode with instance=True counts each call once ----------------

MULTIPROCESS_OWNERS = """
import multiprocessing
from instrument import Instrumentation

def owner(gateway, job, calls):
    # Each worker configures its own instrumentation (a server without preload): each owns
    # a pusher, and each collects the whole directory.
    inst = Instrumentation(pushgateway=gateway, job=job, push_interval=60, instance=True)

    @inst.monitored_analysis("m", "t")
    def work(i):
        return i

    for i in range(calls):
        work(i)
    inst.close()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    for calls in (100, 150):  # one after the other: the second's final push sees both
        p = ctx.Process(target=owner, args=({gateway!r}, {job!r}, calls))
        p.start()
        p.join()
        assert p.exitcode == 0, p.exitcode
"""


def test_multiprocess_mode_with_instance_true_counts_each_call_once(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    code = MULTIPROCESS_OWNERS.format(gateway=pushgateway.url, job=job_name)
    result = run_script(tmp_path / "owners.py", code, {"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert result.returncode == 0, result.stderr
    # What `sum by (job) (codomyrmex_analyses_total)` over the gateway's groups shows.
    total = sum(
        value
        for name, labels, value in pushgateway.samples()
        if name == "codomyrmex_analyses_total"
        and labels.get("job") == job_name
        and labels.get("status") == "success"
    )
    assert total == 250
    groups = job_groups(pushgateway, job_name)
    assert len(groups) == 1, groups
    assert groups[0]["instance"] == os.uname().nodename


# -- rev-delivery 15c: `dashboard --apply -o FILE` writes FILE only once Grafana saved it ------


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's retry waits, skipped (what they are is tested in test_grafana)."""

    async def skip(delay: float) -> None:
        return None

    monkeypatch.setattr(grafana.client, "_sleep", skip)


def test_apply_with_output_writes_the_file_only_after_grafana_saved_it(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    out = tmp_path / "dashboard.json"
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url, "-o", str(out)]) == 0
    saved = fake_grafana.dashboards["codomyrmex-analytics"]["dashboard"]
    written = json.loads(out.read_text())
    assert written["uid"] == saved["uid"] == "codomyrmex-analytics"
    assert [p["title"] for p in written["panels"]] == [p["title"] for p in saved["panels"]]
    assert "saved in Grafana, version 1" in capsys.readouterr().out
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


@pytest.mark.parametrize("server", ["not grafana", "auth refused"])
def test_a_failed_apply_leaves_the_output_file_as_it_was(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, tmp_path: Path, server: str,
    capsys: pytest.CaptureFixture[str], no_waits: None,
) -> None:  # fmt: skip
    stand_in = GatewayStandIn()  # answers like a Pushgateway, not like Grafana
    try:
        if server == "not grafana":
            grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
            url = stand_in.url
            stand_in.answer(404, "Not Found", body="404 page not found\n")
        else:
            url = fake_grafana.url  # no token: refused
        fresh, kept = tmp_path / "fresh.json", tmp_path / "kept.json"
        kept.write_text('{"old": true}\n')
        for path in (fresh, kept):
            assert main(["dashboard", "--apply", "--grafana-url", url, "-o", str(path)]) == 1
            assert capsys.readouterr().err.startswith("instrument: error: ")
        assert not fresh.exists()
        assert kept.read_text() == '{"old": true}\n'
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]  # no temporary left
        assert fake_grafana.dashboards == {}
    finally:
        stand_in.close()


def test_a_write_that_fails_leaves_no_half_file(
    grafana_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "dashboard.json"
    assert main(["dashboard", "-o", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"instrument: error: cannot write {missing}: ")
    assert not missing.parent.exists()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- rev-delivery 14: --ca-file / --insecure, and advice in the words of where it appears -----


def test_the_cli_trusts_a_private_ca_or_skips_the_check_when_asked(
    tls_fake: FakeGrafana, certificate: tuple[Path, Path], grafana_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    apply = ["dashboard", "--apply", "--grafana-url", tls_fake.url]
    assert main(apply) == 1
    err = capsys.readouterr().err
    assert "is not trusted" in err
    assert "--ca-file FILE" in err and "--insecure" in err
    assert "ca_file=" not in err and "tls_verify" not in err
    assert tls_fake.dashboards == {}
    assert main([*apply, "--ca-file", str(certificate[0])]) == 0
    assert "version 1" in capsys.readouterr().out
    assert main([*apply, "--insecure"]) == 0
    assert "version 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ca-file", "/no/such/ca.pem"], "cannot be read as PEM certificates"),
        (["--ca-file", "{junk}"], "cannot be read as PEM certificates"),
        (["--ca-file", "{cert}", "--insecure"], "not allowed with argument"),
    ],
)
def test_tls_options_that_cannot_work_are_usage_errors(
    grafana_env: pytest.MonkeyPatch, tmp_path: Path, certificate: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], options: list[str], message: str,
) -> None:  # fmt: skip
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    filled = [o.format(junk=junk, cert=certificate[0]) for o in options]
    for command in (["dashboard", "--apply"], ["demo"]):
        assert main([*command, *filled]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_the_demo_takes_the_tls_options_for_the_pushgateway_and_grafana() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--insecure"])
    assert tls_options(args) == {"tls_verify": False, "ca_file": None}
    assert tls_options(parser.parse_args(["dashboard"])) == {"tls_verify": True, "ca_file": None}


KEYWORD_ARGUMENT = re.compile(r"(?<![-\w])[a-z_]+=")
COMMAND_OPTION = re.compile(r"--[a-z]")
FACTS: dict[str, Any] = {
    "url": "https://grafana.example", "where": "Grafana at https://grafana.example",
    "method": "POST", "path": "/api/dashboards/db", "said": "412: conflict", "what": "dashboard",
    "cause": "self-signed certificate", "timeout": 10.0, "attempt": 1, "attempts": 4,
    "answered": "404", "type": "prometheus", "name": "Prom", "found": "loki",
    "tries": "after 4 attempts", "status": 503, "delay": 30,
}  # fmt: skip


@pytest.mark.parametrize("condition", sorted(_MESSAGES, key=str))
def test_every_message_gives_advice_in_the_words_of_its_audience(condition: int | str) -> None:
    api = str(error_for(condition, **FACTS))
    cli = str(error_for(condition, audience="cli", **FACTS))
    assert "{" not in api and "{" not in cli  # every template filled
    assert not KEYWORD_ARGUMENT.search(cli), cli  # no `ca_file=` for a command line user
    assert not COMMAND_OPTION.search(api), api  # no `--insecure` for Python code
    assert api.split("; ")[0] == cli.split("; ")[0]  # the same facts, other advice


def test_an_unknown_audience_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="audience must be one of python, cli"):
        GrafanaClient("http://127.0.0.1:3000", audience="shell")


# -- rev-delivery 15a: push_metrics(job) never raises into its caller ---------------------------


@pytest.mark.parametrize(("job", "why"), [("", "non-empty"), ("bad\udc80", "lone surrogate")])
async def test_push_metrics_with_a_job_the_gateway_cannot_take_is_a_failed_push(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture, job: str, why: str
) -> None:
    monitoring = PrometheusIntegration(stand_in.url, registry=CollectorRegistry())
    monitoring.record_analysis("m", "t", 0.5)
    assert await monitoring.push_metrics(job) is False  # returned, not raised
    assert stand_in.requests == []  # nothing sent under a job it cannot name
    assert monitoring.registry.get_sample_value("codomyrmex_push_failures_total") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and why in errors[0].getMessage()
    assert errors[0].exc_info is None  # a clear line, not a traceback
    # The instrumentation goes on: its own job still pushes, and so does a good one.
    assert await monitoring.push_metrics() is True
    assert await monitoring.push_metrics("other-job") is True
    paths = [path for _, path, _ in stand_in.requests]
    assert paths == ["/metrics/job/codomyrmex", "/metrics/job/other-job"]
    await monitoring.aclose()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(job=st.text(max_size=12))
def test_push_metrics_never_raises_whatever_the_job(stand_in: GatewayStandIn, job: str) -> None:
    monitoring = PrometheusIntegration(stand_in.url, registry=CollectorRegistry())
    before = len(stand_in.requests)
    try:
        pushed = asyncio.run(monitoring.push_metrics(job))
    finally:
        monitoring.close()
    sent = stand_in.requests[before:]
    failures = monitoring.registry.get_sample_value("codomyrmex_push_failures_total")
    if pushed:
        # It landed under that job, escaped as the gateway's rules say (the gateway reads a
        # path percent-decoded, as aiohttp may send the characters that need no escape).
        assert [unquote(path) for _, path, _ in sent] == [unquote(grouping_path(job, {}))]
        assert failures == 0
    else:
        assert sent == [] and failures == 1


def test_multiprocess_mode_follows_the_variable_with_one_value_class_per_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert Instrumentation(registry=CollectorRegistry()).delivery.mode == "off"
    assert values.ValueClass is values.MutexValue
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    first = Instrumentation(registry=CollectorRegistry())
    made = values.ValueClass
    assert made is not values.MutexValue
    first.record_analysis("m", "t", 0.5)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    plain = Instrumentation(registry=CollectorRegistry())
    assert values.ValueClass is values.MutexValue
    plain.record_analysis("m", "t", 0.5)
    assert plain.collect_registry() is plain.registry
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    again = Instrumentation(registry=CollectorRegistry())
    assert values.ValueClass is made  # the same files, mapped once
    again.record_analysis("m", "t", 0.5)
    labels = {"module": "m", "analysis_type": "t", "status": "success"}
    # The directory holds both multiprocess instrumentations' records, not the plain one's.
    assert again.collect_registry().get_sample_value("codomyrmex_analyses_total", labels) == 2
    assert plain.registry.get_sample_value("codomyrmex_analyses_total", labels) == 1
    for inst in (first, plain, again):
        inst.close()
