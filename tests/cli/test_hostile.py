"""The `instrument` command attacked as a hostile user would: every option with bad values,
servers that are not what they claim, closed and full outputs, secrets in every place.

Most runs are real processes (`python -m instrument ...`), asserting the exact line a user
reads and the exit status: 2 for a command line that cannot work (as argparse's own), 1 for
a failure while working. Either comes before the demo's tour whenever it can.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instrument.cli import build_parser, main
from instrument.demo import tour
from instrument.grafana import GrafanaClient, GrafanaError, GrafanaNotFoundError

from ..fake_grafana import TOKEN, FakeGrafana
from ..servers import Pushgateway, closed_port
from .test_commands import SAMPLE

# Most tests run the command in a child process, as a user does.
pytestmark = pytest.mark.subprocess

SECRET = "S3cr3t-Passw0rd"
DEMO_HELP = "(see instrument demo --help)"
PORT_FIX = "give a number from 1 to 65535, or 0 for any free port " + DEMO_HELP
NOT_GRAFANA = "is this URL a Grafana server (mind a sub-path such as /grafana)?"  # the advice's end


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, without any GRAFANA_* / INSTRUMENT_* of ours."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "INSTRUMENT_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "instrument", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
    )


def shell(
    command: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``instrument`` inside a shell line (pipes, closed descriptors)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "INSTRUMENT_"))
    }
    prefix = shlex.join([sys.executable, "-m", "instrument"])
    return subprocess.run(
        ["bash", "-c", command.replace("instrument", prefix, 1)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
    )


def run_into_a_closed_pipe(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command writing into a pipe whose reader has already left: every write to
    stdout fails with EPIPE, whatever the pipe's buffer could hold (``| head`` may not)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "INSTRUMENT_"))
        }
        return subprocess.run(
            [sys.executable, "-m", "instrument", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
            env={**environment, **(env or {})},
        )
    finally:
        os.close(write_end)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command, which must be exactly one line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text(SAMPLE)
    return root


# -- item 16: every argument checked before the demo runs -------------------------------------


def test_demo_serve_with_a_port_out_of_range_fails_before_the_demo(tree: Path) -> None:
    result = run("demo", str(tree), "--quiet", "--serve", "99999")
    assert result.returncode == 2
    assert one_line(result) == (
        f"instrument: error: argument --serve: '99999' is not a TCP port: {PORT_FIX}"
    )
    assert result.stdout == ""  # the tour never started


def test_demo_serve_on_a_busy_port_fails_before_the_demo(tree: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run("demo", str(tree), "--quiet", "--serve", str(port))
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: cannot serve on 127.0.0.1:{port}: Address already in use"
    )
    assert result.stdout == ""


def test_demo_with_a_pushgateway_that_is_not_a_url_fails_before_the_demo(tree: Path) -> None:
    result = run("demo", str(tree), "--quiet", "--pushgateway", "notaurl")
    assert result.returncode == 2
    assert one_line(result) == (
        "instrument: error: argument --pushgateway: 'notaurl' is not a URL: give one such as "
        f"http://127.0.0.1:9091 (or host:port) {DEMO_HELP}"
    )
    assert result.stdout == ""


def test_demo_with_an_unreachable_pushgateway_fails_before_the_demo(tree: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run("demo", str(tree), "--quiet", "--pushgateway", url)
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: could not push to the Pushgateway at {url}: is it running and "
        "reachable? (tried before the demo ran; -v shows why)"
    )
    assert result.stdout == ""


def test_demo_with_grafana_refusing_the_missing_token_fails_before_the_demo(
    tree: Path, fake_grafana: FakeGrafana
) -> None:
    result = run("demo", str(tree), "--quiet", "--grafana-url", fake_grafana.url)
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: Grafana at {fake_grafana.url} refused GET "
        "/api/dashboards/uid/codomyrmex-analytics (401: invalid API key): no credentials were "
        "sent; set GRAFANA_TOKEN (or GRAFANA_API_KEY) to a service account token"
    )
    assert result.stdout == ""
    assert fake_grafana.seen("POST", "/api/dashboards/db") == []


def test_demo_with_a_pushgateway_as_grafana_fails_before_the_demo(
    tree: Path, pushgateway: Pushgateway
) -> None:
    result = run("demo", str(tree), "--quiet", "--grafana-url", pushgateway.url)
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: the server at {pushgateway.url} did not answer as Grafana does "
        f"(GET /api/health answered 404: 404 page not found); {NOT_GRAFANA}"
    )
    assert result.stdout == ""


PRUNE_HELP = "(see instrument gateway prune --help)"
USAGE_ERRORS = [
    (
        ["gateway", "prune", "--older-than", "1w", "--pushgateway", "http://127.0.0.1:9"],
        "argument --older-than: '1w' is not a duration: give a positive number with a unit, "
        f"such as 90s, 30m, 1h or 2d {PRUNE_HELP}",
    ),
    (
        ["gateway", "prune", "--older-than", "1h", "--pushgateway", "ftp://u:pw@x"],
        "argument --pushgateway: the pushgateway URL 'ftp://***@x' is not an http(s) URL; use "
        f"one such as http://127.0.0.1:9091 {PRUNE_HELP}",
    ),
    (
        ["gateway", "prune", "--older-than", "1h", "--job="],
        f"argument --job: the job is empty; give a job name, or leave --job out {PRUNE_HELP}",
    ),
    (
        ["gateway", "prune", "--older-than", "1h", "--timeout", "0"],
        f"argument --timeout: '0' is not a positive number of seconds {PRUNE_HELP}",
    ),
    (
        ["gateway", "prune", "--older-than", "1h", "--max-time", "nan"],
        f"argument --max-time: 'nan' is not a positive number of seconds {PRUNE_HELP}",
    ),
    (
        ["gateway", "prune", "--older-than", "1h", "--ca-file", "/no/such/ca.pem"],
        "argument --ca-file: '/no/such/ca.pem' cannot be read as PEM certificates ([Errno 2] "
        "No such file or directory); give the file of the CA certificate that signed the "
        f"server's {PRUNE_HELP}",
    ),
    (["demo", "--serve", "-1"], f"argument --serve: '-1' is not a TCP port: {PORT_FIX}"),
    (["demo", "--serve", ""], f"argument --serve: '' is not a TCP port: {PORT_FIX}"),
    (["demo", "--serve", "65536"], f"argument --serve: '65536' is not a TCP port: {PORT_FIX}"),
    (["demo", "--serve", "0x50"], f"argument --serve: '0x50' is not a TCP port: {PORT_FIX}"),
    (["demo", "--serve", " 80"], f"argument --serve: ' 80' is not a TCP port: {PORT_FIX}"),
    # int() reads fullwidth digits as 80: a port is ASCII digits only
    (
        ["demo", "--serve", "\uff18\uff10"],
        f"argument --serve: '\uff18\uff10' is not a TCP port: {PORT_FIX}",
    ),
    (["demo", "--serve"], f"argument --serve: expected one argument {DEMO_HELP}"),
    (
        ["demo", "--pushgateway", ""],
        "argument --pushgateway: the pushgateway URL is empty: pass one such as "
        f"http://127.0.0.1:9091 {DEMO_HELP}",
    ),
    (
        ["demo", "--pushgateway", "ftp://gateway"],
        "argument --pushgateway: the pushgateway URL 'ftp://gateway' is not an http(s) URL; "
        f"use one such as http://127.0.0.1:9091 {DEMO_HELP}",
    ),
    (
        ["demo", "--pushgateway", "http://127.0.0.1:port"],
        "argument --pushgateway: the pushgateway URL 'http://127.0.0.1:port' has an invalid "
        f"port; use 1 to 65535 {DEMO_HELP}",
    ),
    (
        ["demo", "--grafana-url", "grafana:3000"],
        "argument --grafana-url: the Grafana URL 'grafana:3000' is not an http(s) URL; use one "
        f"such as http://127.0.0.1:3000 {DEMO_HELP}",
    ),
    (
        ["demo", "--grafana-url", ""],
        "argument --grafana-url: the Grafana URL is empty: pass one such as "
        f"http://127.0.0.1:3000 {DEMO_HELP}",
    ),
    (
        ["demo", "/nonexistent/dir"],
        "argument path: '/nonexistent/dir' is not a directory; give a directory of Python "
        f"files {DEMO_HELP}",
    ),
    (
        ["demo", ""],
        f"argument path: '' is not a directory; give a directory of Python files {DEMO_HELP}",
    ),
    (
        ["demo", "a" * 5000],  # longer than a file name may be: stat() raises, not False
        f"argument path: '{'a' * 5000}' is not a directory; give a directory of Python files "
        f"{DEMO_HELP}",
    ),
    (["demo", "--quiet=yes"], f"argument --quiet: ignored explicit argument '***' {DEMO_HELP}"),
    (
        ["dashboard", "--uid", ""],
        "uid '' is not a Grafana dashboard uid: use 1 to 40 letters, digits, '-' or '_'",
    ),
    (
        ["dashboard", "--uid", "a/b"],
        "uid 'a/b' is not a Grafana dashboard uid: use 1 to 40 letters, digits, '-' or '_'",
    ),
    (
        ["dashboard", "--uid", "x" * 41],
        f"uid '{'x' * 41}' is not a Grafana dashboard uid: use 1 to 40 letters, digits, '-' or '_'",
    ),
    (
        ["dashboard", "--title", " "],
        "argument --title: the dashboard title is blank; give one "
        "(see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--datasource-uid", ""],
        "argument --datasource-uid: the data source uid is blank; give one "
        "(see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--namespace", ""],
        "argument --namespace: namespace '' is not a valid Prometheus metric prefix; use "
        "letters, digits and underscores, not starting with a digit "
        "(see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--namespace", "1x"],
        "argument --namespace: namespace '1x' is not a valid Prometheus metric prefix; use "
        "letters, digits and underscores, not starting with a digit "
        "(see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--output", ""],
        "argument --output/-o: the file name is empty; give one, or '-' for stdout "
        "(see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--grafana-url", "http://grafana:port"],
        "argument --grafana-url: the Grafana URL 'http://grafana:port' has an invalid port; "
        "use 1 to 65535 (see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--folder-uid"],
        "argument --folder-uid: expected one argument (see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--message"],
        "argument --message: expected one argument (see instrument dashboard --help)",
    ),
    (
        ["dashboard", "--apply"],
        "--apply needs Grafana's URL: pass --grafana-url URL or set GRAFANA_URL",
    ),
    (
        ["rules", "--namespace", "a-b"],
        "argument --namespace: namespace 'a-b' is not a valid Prometheus metric prefix; use "
        "letters, digits and underscores, not starting with a digit "
        "(see instrument rules --help)",
    ),
    (
        ["rules", "-o", ""],
        "argument --output/-o: the file name is empty; give one, or '-' for stdout "
        "(see instrument rules --help)",
    ),
    (["rules", "extra"], "unrecognized arguments: extra (see instrument --help)"),
    (
        ["rules", "--import", " "],
        "argument --import: the module name is blank; give one (see instrument rules --help)",
    ),
    (
        ["rules", "--tests", ""],
        "argument --tests: the file name is empty; give one, or '-' for stdout "
        "(see instrument rules --help)",
    ),
    (
        ["rules", "--runbook-base-url", "https://bob:hunter2@wiki.example.test"],
        "argument --runbook-base-url: runbook base URL holds credentials; an annotation is "
        "shown wherever the alert goes, so give the URL without user:password@ "
        "(see instrument rules --help)",
    ),
    (
        ["rules", "--monthly-budget-usd", "-5"],
        "argument --monthly-budget-usd: '-5' is not an amount of US dollars, such as 500 "
        "(see instrument rules --help)",
    ),
    (
        ["bogus"],
        "argument COMMAND: invalid choice: 'bogus' (choose from 'demo', 'dashboard', 'rules', 'gateway') "
        "(see instrument --help)",
    ),
    (["--bogus"], "unrecognized arguments: --bogus (see instrument --help)"),
    *[
        (
            [command, "--ca-file", "/no/such/ca.pem"],
            "argument --ca-file: '/no/such/ca.pem' cannot be read as PEM certificates ([Errno 2] "
            "No such file or directory); give the file of the CA certificate that signed the "
            f"server's (see instrument {command} --help)",
        )
        for command in ("demo", "dashboard")
    ],
    (
        ["rules", "-v=x"],
        "argument -v/--verbose: ignored explicit argument '***' (see instrument rules --help)",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), USAGE_ERRORS, ids=[" ".join(a)[:40] for a, _ in USAGE_ERRORS]
)
def test_a_bad_argument_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert one_line(result) == f"instrument: error: {message}"
    assert result.stdout == ""


def test_every_option_is_attacked() -> None:
    """Each option of each command that takes a value has a bad value above, or is free text."""
    free_text = {("dashboard", "--message"), ("dashboard", "--folder-uid")}  # any string works
    # A nested command ("gateway prune") is named by its words.
    nested = {"gateway"}

    def command_of(argv: list[str]) -> tuple[str, list[str]]:
        words = 2 if argv[0] in nested else 1
        return " ".join(argv[:words]), argv[words:]

    attacked = {
        (command_of(argv)[0], arg.split("=")[0])
        for argv, _ in USAGE_ERRORS
        for arg in command_of(argv)[1]
    }
    attacked |= {
        ("demo", "path") for argv, _ in USAGE_ERRORS if argv[0] == "demo" and argv[1][:1] != "-"
    }

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(found[0].choices) if found else {}

    leaves = {}
    for name, command in subcommands(build_parser()).items():
        inner = subcommands(command)
        assert (name in nested) == bool(inner), name
        leaves.update({f"{name} {n}": c for n, c in inner.items()} if inner else {name: command})
    missing = []
    for name, command in leaves.items():
        for action in command._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.dest]
            if not any((name, n) in attacked | free_text for n in names):
                missing.append((name, names))
    assert missing == []


def test_demo_serve_0_serves_on_a_free_port_and_says_which(
    tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scraped: list[str] = []

    def scrape_then_stop(_: float) -> None:
        port = re.search(r"Serving http://127\.0\.0\.1:(\d+)/metrics", capsys.readouterr().out)
        assert port is not None
        url = f"http://127.0.0.1:{port.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            scraped.append(resp.read().decode())
        raise KeyboardInterrupt

    monkeypatch.setattr(tour.time, "sleep", scrape_then_stop)
    assert main(["demo", str(tree), "--quiet", "--serve", "0"]) == 0
    (text,) = scraped
    line = 'codomyrmex_analyses_total{analysis_type="file",module="static_analysis",status='
    assert f'{line}"success"}} 1.0' in text and f'{line}"error"}} 1.0' in text


# -- what the demo walks: only regular files are read -----------------------------------------


def test_demo_skips_what_is_not_a_regular_file(tree: Path) -> None:
    """A FIFO named x.py (reading it waits forever), a directory and a dangling link."""
    os.mkfifo(tree / "fifo.py")
    (tree / "package.py").mkdir()
    (tree / "package.py" / "inner.py").write_text(SAMPLE)
    (tree / "dangling.py").symlink_to(tree / "nowhere.py")
    result = run("demo", str(tree), "--quiet", timeout=60)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "static_analysis/file" in line)
    # a.py and package.py/inner.py, plus the demo's own broken example
    assert row.split()[:3] == ["static_analysis/file", "3", "1"]


def test_demo_with_an_unreadable_file_is_one_line(tree: Path) -> None:
    (tree / "mem.py").symlink_to("/proc/self/mem")  # a regular file whose read fails
    try:
        (tree / "mem.py").read_text()
    except OSError as exc:
        reason = exc.strerror
    else:  # pragma: no cover - a kernel that lets this read succeed
        pytest.skip("reading /proc/self/mem does not fail here")
    result = run("demo", str(tree), "--quiet")
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: cannot read {tree / 'mem.py'}: {reason}; give a directory "
        "whose Python files are readable"
    )


# -- item 17: a server that is not Grafana, and a missing token --------------------------------


def test_apply_to_a_pushgateway_says_it_is_not_grafana(pushgateway: Pushgateway) -> None:
    result = run(
        "dashboard", "--apply", "--grafana-url", pushgateway.url, env={"GRAFANA_TOKEN": TOKEN}
    )
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: the server at {pushgateway.url} did not answer as Grafana does "
        "(GET /api/dashboards/uid/codomyrmex-analytics answered 404: 404 page not found); "
        f"{NOT_GRAFANA}"
    )
    assert TOKEN not in result.stderr + result.stdout
    assert pushgateway.groups() == []  # nothing was saved anywhere


async def test_the_client_tells_a_pushgateway_from_grafana(pushgateway: Pushgateway) -> None:
    async with GrafanaClient(pushgateway.url, token=TOKEN) as client:
        for call in (
            client.health(),
            client.get_dashboard("codomyrmex-analytics"),
            client.upsert_dashboard({"uid": "u", "title": "t", "panels": []}),
        ):
            with pytest.raises(GrafanaError) as caught:
                await call
            # Not "no such dashboard": a missing dashboard would be created, hiding the cause.
            assert type(caught.value) is GrafanaError
            assert "did not answer as Grafana does" in str(caught.value)
            assert str(caught.value).endswith(NOT_GRAFANA)


@pytest.mark.parametrize(
    ("path", "status", "body", "answered"),
    [
        # a reverse proxy's own page: the URL misses Grafana's sub-path
        ("/api/dashboards/uid/codomyrmex-analytics", 404, "<h1>Not Found</h1>", "404: Not Found"),
        ("/api/dashboards/uid/codomyrmex-analytics", 404, ["not", "grafana"], "404: ['not', 'grafana']"),
        ("/api/dashboards/uid/codomyrmex-analytics", 405, {"error": "method"}, "405"),
        ("/api/dashboards/uid/codomyrmex-analytics", 200, {"status": "success", "data": []},
         "200: {'status': 'success', 'data': []}"),
        ("/api/dashboards/db", 400, "", "400"),
        ("/api/dashboards/db", 200, {"ok": True}, "200 without uid, url and version: {'ok': True}"),
    ],
)  # fmt: skip
def test_an_answer_not_shaped_as_grafanas_is_named(
    fake_grafana: FakeGrafana, path: str, status: int, body: object, answered: str
) -> None:
    method = "POST" if path.endswith("/db") else "GET"
    fake_grafana.script(method, path, status, body)
    result = run(
        "dashboard", "--apply", "--grafana-url", fake_grafana.url, env={"GRAFANA_TOKEN": TOKEN}
    )
    assert result.returncode == 1
    assert one_line(result) == (
        f"instrument: error: the server at {fake_grafana.url} did not answer as Grafana does "
        f"({method} {path} answered {answered}); {NOT_GRAFANA}"
    )
    assert fake_grafana.dashboards == {}


def test_a_redirect_is_not_followed_with_the_token(fake_grafana: FakeGrafana) -> None:
    """A proxy sending the client elsewhere (a login page on another host) gets no token."""
    elsewhere = FakeGrafana().start()
    try:
        path = "/api/dashboards/uid/codomyrmex-analytics"
        fake_grafana.script("GET", path, 302, "", headers={"Location": f"{elsewhere.url}/login"})
        result = run("dashboard", "--apply", "--grafana-url", fake_grafana.url,
                     env={"GRAFANA_TOKEN": TOKEN})  # fmt: skip
        assert result.returncode == 1
        assert one_line(result) == (
            f"instrument: error: Grafana at {fake_grafana.url} answered GET {path} with 302; this "
            "client does not expect that here: check the URL (proxies, sub-path) and "
            "Grafana's version"
        )
        assert elsewhere.requests == [] and fake_grafana.dashboards == {}
    finally:
        elsewhere.stop()


async def test_grafanas_own_404_is_still_not_found(fake_grafana: FakeGrafana) -> None:
    async with GrafanaClient(fake_grafana.url, token=TOKEN) as client:
        with pytest.raises(GrafanaNotFoundError, match="has no such dashboard 'nope'"):
            await client.get_dashboard("nope")


def test_apply_without_a_token_names_the_variable_not_the_parameter(
    fake_grafana: FakeGrafana,
) -> None:
    """Anonymous access that Grafana answers with 403 needs a token too, not another role."""
    fake_grafana.script(
        "GET", "/api/dashboards/uid/codomyrmex-analytics", 403, {"message": "Permission denied"}
    )
    result = run("dashboard", "--apply", "--grafana-url", fake_grafana.url)
    assert result.returncode == 1
    line = one_line(result)
    assert line == (
        f"instrument: error: Grafana at {fake_grafana.url} refused GET "
        "/api/dashboards/uid/codomyrmex-analytics (403: Permission denied): no credentials "
        "were sent; set GRAFANA_TOKEN (or GRAFANA_API_KEY) to a service account token"
    )
    assert "token=" not in line and "org_id" not in line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRAFANA_TOKEN": " \t "}, "GRAFANA_TOKEN holds only whitespace: set it to a service "
         "account token, or unset it"),
        ({"GRAFANA_API_KEY": "glsa_a\x1bb"}, "GRAFANA_API_KEY contains a control character; "
         "check how the secret is read"),
        ({"GRAFANA_URL": "grafana:3000"}, "GRAFANA_URL is not valid: the Grafana URL "
         "'grafana:3000' is not an http(s) URL; use one such as http://127.0.0.1:3000"),
        ({"GRAFANA_URL": f"ftp://admin:{SECRET}@grafana"}, "GRAFANA_URL is not valid: the "
         "Grafana URL 'ftp://***@grafana' is not an http(s) URL; use one such as "
         "http://127.0.0.1:3000"),
        ({"INSTRUMENT_NAMESPACE": "1x"}, "INSTRUMENT_NAMESPACE='1x' is not valid: namespace "
         "'1x' is not a valid Prometheus metric prefix; use letters, digits and underscores, "
         "not starting with a digit"),
    ],
)  # fmt: skip
def test_a_bad_environment_fails_before_anything_is_written(
    tmp_path: Path, fake_grafana: FakeGrafana, env: dict[str, str], message: str
) -> None:
    target = tmp_path / "dashboard.json"
    env = {"GRAFANA_URL": fake_grafana.url, **env}
    result = run("dashboard", "--apply", "--output", str(target), env=env)
    assert result.returncode == 1
    assert one_line(result) == f"instrument: error: {message}"
    assert not target.exists() and fake_grafana.requests == []
    assert SECRET not in result.stderr


# -- outputs that cannot be written ------------------------------------------------------------


@pytest.mark.parametrize("command", ["rules", "dashboard", "demo"])
def test_a_closed_stdout_is_one_line(command: str, tree: Path) -> None:
    args = f"{command} {tree} --quiet" if command == "demo" else command
    result = shell(f"instrument {args} >&-")
    assert result.returncode == 1
    assert one_line(result) == "instrument: error: cannot write standard output: it is closed"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress-bar"])
def test_the_demo_on_a_full_stdout_is_one_line(tree: Path, quiet: bool) -> None:
    result = shell(f"instrument demo {tree}{' --quiet' if quiet else ''} > /dev/full")
    assert result.returncode == 1
    assert one_line(result) == (
        "instrument: error: cannot write standard output: No space left on device"
    )


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress-bar"])
def test_the_demo_into_a_closed_pipe_still_pushes_and_saves_the_dashboard(
    tree: Path, pushgateway: Pushgateway, fake_grafana: FakeGrafana, quiet: bool
) -> None:
    """A reader that left ends the output only, not what the command was asked to do."""
    args = ["demo", str(tree), "--pushgateway", pushgateway.url, "--grafana-url", fake_grafana.url]
    result = run_into_a_closed_pipe(
        *args, *(["--quiet"] if quiet else []), env={"GRAFANA_TOKEN": TOKEN}
    )
    assert (result.returncode, result.stderr) == (0, "")
    labels = {"job": "instrument-demo", "module": "static_analysis", "analysis_type": "file"}
    assert pushgateway.value("codomyrmex_analyses_total", **labels, status="success") == 1
    assert pushgateway.value("codomyrmex_analyses_total", **labels, status="error") == 1
    assert fake_grafana.dashboards["codomyrmex-analytics"]["version"] == 1


@pytest.mark.parametrize("command", [["rules"], ["dashboard"], ["--help"], ["demo", "--help"]])
def test_output_into_a_closed_pipe_is_a_quiet_exit(command: list[str]) -> None:
    result = run_into_a_closed_pipe(*command)
    assert (result.returncode, result.stderr) == (0, "")


def test_apply_with_the_json_into_a_closed_pipe_still_saves(fake_grafana: FakeGrafana) -> None:
    result = run_into_a_closed_pipe(
        "dashboard", "--apply", "--grafana-url", fake_grafana.url, "-o", "-",
        env={"GRAFANA_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stderr == (
        "dashboard 'codomyrmex-analytics' saved in Grafana, version 1: "
        f"{fake_grafana.url}/d/codomyrmex-analytics/codomyrmex-analytics\n"
    )
    assert fake_grafana.dashboards["codomyrmex-analytics"]["version"] == 1


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (".", "Is a directory"),
        ("missing/dashboard.json", "No such file or directory"),
        ("x" * 300 + ".json", "File name too long"),
    ],
)
def test_an_unwritable_output_is_one_line_and_nothing_is_applied(
    tmp_path: Path, fake_grafana: FakeGrafana, where: str, reason: str
) -> None:
    target = str(tmp_path / where)
    result = run(
        "dashboard", "--apply", "--grafana-url", fake_grafana.url, "-o", target,
        env={"GRAFANA_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 1
    assert one_line(result) == f"instrument: error: cannot write {target}: {reason}"
    assert fake_grafana.requests == [] and result.stdout == ""


# -- secrets: never in an error line, a log line (-vv) or anything printed --------------------


def test_gateway_credentials_never_show_even_with_vv(tree: Path) -> None:
    url = f"http://admin:{SECRET}@127.0.0.1:{closed_port()}"
    result = run("-vv", "demo", str(tree), "--quiet", "--pushgateway", url)
    assert result.returncode == 1
    encoded = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    shown = result.stderr + result.stdout
    assert SECRET not in shown and encoded not in shown
    assert result.stderr.splitlines()[-1] == (
        f"instrument: error: could not push to the Pushgateway at {url.replace(f'admin:{SECRET}', '***')}: "
        "is it running and reachable? (tried before the demo ran; -v shows why)"
    )
    assert len(result.stderr.splitlines()) > 1  # -vv did show the library's log


def test_a_token_grafana_echoes_back_never_shows_even_with_vv(fake_grafana: FakeGrafana) -> None:
    wrong = "glsa_WrongButSecret_0099887766"
    result = run("-vv", "dashboard", "--apply", "--grafana-url", fake_grafana.url,
                 env={"GRAFANA_TOKEN": wrong})  # fmt: skip
    assert result.returncode == 1
    (seen,) = fake_grafana.requests
    assert seen.headers["Authorization"] == f"Bearer {wrong}"  # sent, and echoed back
    assert wrong not in result.stderr + result.stdout
    assert result.stderr.splitlines()[-1] == (
        f"instrument: error: Grafana at {fake_grafana.url} refused the credentials (401: invalid "
        "API key (Authorization: ***)); check the service account token (API keys are "
        "deprecated in favour of service account tokens) or the basic auth password"
    )


def test_grafana_basic_auth_in_the_url_never_shows(fake_grafana: FakeGrafana) -> None:
    url = fake_grafana.url.replace("http://", f"http://admin:{SECRET}@")
    result = run("-vv", "dashboard", "--apply", "--grafana-url", url)
    assert result.returncode == 1
    encoded = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert SECRET not in result.stderr and encoded not in result.stderr
    assert "(401: invalid API key (Authorization: ***))" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dashboard", "--token", SECRET], "unrecognized arguments: --token ***; give the "
         "token in GRAFANA_TOKEN (see instrument --help)"),
        (["dashboard", f"--token={SECRET}"], "unrecognized arguments: --token=***; give the "
         "token in GRAFANA_TOKEN (see instrument --help)"),
        (["rules", f"http://admin:{SECRET}@host"], "unrecognized arguments: http://***@host "
         "(see instrument --help)"),
        ([f"--ver={SECRET}"], "ambiguous option: --ver=*** could match --version, --verbose "
         "(see instrument --help)"),
        (["demo", "--pushgateway", f"http://admin:{SECRET}@host:port"], "argument "
         "--pushgateway: the pushgateway URL 'http://***@host:port' has an invalid port; use 1 "
         f"to 65535 {DEMO_HELP}"),
    ],
)  # fmt: skip
def test_a_secret_typed_on_the_command_line_is_masked(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert one_line(result) == f"instrument: error: {message}"
    assert SECRET not in result.stderr


# Printable, and all the characters that make URL parsers and regexes stumble.
secrets = st.text(
    alphabet=st.sampled_from("abcXYZ019-_.~!$&'()*+,;=%:@/?# "), min_size=6, max_size=24
).map(lambda s: f"Zk{s}qW")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=secrets,
    place=st.sampled_from(
        [
            ["dashboard", "--token", "{s}"],
            ["dashboard", "--token={s}"],
            ["rules", "--password", "{s}", "--namespace", "ok"],
            ["rules", "http://user:{s}@host"],
            ["demo", "--pushgateway", "ftp://user:{s}@host"],
            ["demo", "--pushgateway", "http://user:{s}@host:bad"],
            ["demo", "--grafana-url", "gopher://user:{s}@grafana"],
            ["demo", "--push=ftp://user:{s}@host"],
            ["--ver=http://user:{s}@host"],
            ["demo", "--quiet={s}"],
        ]
    ),
)
def test_no_usage_error_ever_shows_the_secret(secret: str, place: list[str]) -> None:
    argv = [part.replace("{s}", secret) for part in place]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("instrument: error: ")
    assert secret not in lines[0]
