"""``instrument gateway prune`` and ``Instrumentation.prune_gateway``: the groups of a real
Pushgateway pushed at different times, label values of every shape, and gateways that
answer what a gateway never would."""

from __future__ import annotations

import argparse
import http.server as http_server
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._gateway_command import format_duration, parse_duration
from instrument.cli import main
from instrument.delivery import PushTarget, grouping_path, prune_groups

from ..grafana import test_client as grafana_tests
from ..servers import GatewayStandIn, Pushgateway, http

pytestmark = pytest.mark.integration

certificate = grafana_tests.certificate  # the self-signed certificate for 127.0.0.1, a fixture


def _push(gateway: Pushgateway, job: str, **key: str) -> None:
    http("PUT", gateway.url + grouping_path(job, key), data=b"some_value 1\n")


def _groups(gateway: Pushgateway) -> list[dict[str, str]]:
    return sorted(
        (g["labels"] for g in gateway.groups()), key=lambda labels: sorted(labels.items())
    )


@pytest.fixture
def aged(pushgateway: Pushgateway) -> Iterator[tuple[Pushgateway, str, str]]:
    """Three groups pushed about 2.5 s ago (two jobs, awkward values), one just now."""
    old_job, other_job = f"old-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    _push(pushgateway, old_job, instance="host-1")
    _push(pushgateway, old_job, path="a/b", note="x y+z%")
    _push(pushgateway, other_job, instance="")
    time.sleep(2.5)
    _push(pushgateway, old_job, instance="fresh")
    yield pushgateway, old_job, other_job


def test_the_gateway_reads_back_the_groups_as_pushed(
    aged: tuple[Pushgateway, str, str],
) -> None:
    gateway, old_job, _ = aged
    labels = _groups(gateway)
    assert {"job": old_job, "path": "a/b", "note": "x y+z%"} in labels
    assert {"job": old_job, "instance": "fresh"} in labels
    assert len(labels) == 4


def test_the_command_prunes_only_groups_older_than_asked(
    aged: tuple[Pushgateway, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, old_job, other_job = aged
    argv = ["gateway", "prune", "--pushgateway", gateway.url, "--older-than", "2s"]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(gateway.groups()) == 4  # a dry run deletes nothing
    assert sum(line.startswith("would delete {") for line in out) == 3
    assert out[-1] == "3 group(s) older than 2s would delete"
    assert main([*argv, "--job", other_job]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        f'deleted {{job="{other_job}", instance=""}}, last pushed [0-9]+s ago', out[0]
    )
    assert other_job not in {g["job"] for g in _groups(gateway)}
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 group(s) older than 2s deleted"
    assert _groups(gateway) == [{"job": old_job, "instance": "fresh"}]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["0 group(s) older than 2s deleted"]


def test_prune_gateway_returns_what_it_deleted(aged: tuple[Pushgateway, str, str]) -> None:
    gateway, old_job, other_job = aged
    inst = Instrumentation(registry=CollectorRegistry(), pushgateway=gateway.url, push_mode="off")
    assert inst.prune_gateway(older_than=3600) == []
    would = inst.prune_gateway(older_than=2, dry_run=True)
    assert len(would) == 3 and len(gateway.groups()) == 4
    deleted = inst.prune_gateway(older_than=2, job=old_job)
    assert sorted(deleted, key=len) == [
        {"job": old_job, "instance": "host-1"},
        {"job": old_job, "path": "a/b", "note": "x y+z%"},
    ]
    assert {"job": other_job, "instance": ""} in _groups(gateway)
    inst.close()


label_values = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)


@given(
    st.lists(label_values, min_size=1, max_size=4, unique=True),
    label_values.filter(lambda job: job not in ("", ".", "..")),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_label_value_is_deleted_by_its_grouping_key(
    pushgateway: Pushgateway, values: list[str], name: str
) -> None:
    job = f"{name}-{uuid.uuid4().hex[:6]}"
    for value in values:
        _push(pushgateway, job, instance=value)
    target = PushTarget(pushgateway.url, job="x", grouping_key={})
    time.sleep(0.01)
    found = prune_groups(target, 0.001, job=job)
    assert found.failed == []
    assert sorted(g.labels["instance"] for g in found.deleted) == sorted(values)
    assert [g for g in pushgateway.groups() if g["labels"]["job"] == job] == []


# -- what a command line and a bad gateway can do ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1.5h", 5400), (" 2s ", 2)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "0s", "1w", "1 h", "1e9999d", "\u0661h"])
def test_bad_durations_say_what_to_give(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="such as 90s, 30m, 1h or 2d"):
        parse_duration(text)


def test_durations_shown_in_the_largest_unit() -> None:
    shown = [format_duration(s) for s in (0.2, 45, 90, 7199, 3 * 86400, -5)]
    assert shown == ["0s", "45s", "1m", "1h", "3d", "0s"]


def test_command_line_errors_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INSTRUMENT_PUSHGATEWAY_URL", raising=False)
    assert main(["gateway", "prune", "--older-than", "1h"]) == 2
    assert "pass --pushgateway URL or set INSTRUMENT_PUSHGATEWAY_URL" in capsys.readouterr().err
    assert main(["gateway", "prune", "--pushgateway", "http://127.0.0.1:9"]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert main(["gateway", "prune", "--pushgateway", "ftp://u:pw@x", "--older-than", "1h"]) == 2
    err = capsys.readouterr().err
    assert "not an http(s) URL" in err and "pw" not in err


def test_the_environment_gives_the_gateway_and_its_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in = GatewayStandIn()
    stand_in.answer(
        200, "OK", {"Content-Type": "application/json"}, '{"status":"success","data":[]}'
    )
    monkeypatch.setenv("INSTRUMENT_PUSHGATEWAY_URL", stand_in.url)
    monkeypatch.setenv("INSTRUMENT_PUSHGATEWAY_TOKEN", "tok-Secret-9")
    assert main(["gateway", "prune", "--older-than", "1h"]) == 0
    assert capsys.readouterr().out == "0 group(s) older than 1h deleted\n"
    method, path, headers = stand_in.requests[0]
    assert (method, path, headers["authorization"]) == (
        "GET",
        "/api/v1/metrics",
        "Bearer tok-Secret-9",
    )
    stand_in.close()


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (401, "bad credentials {auth}", "HTTP 401"),
        (200, "<html>{auth}</html>", "not the Pushgateway's group listing"),
        (200, '{"status": "success", "data": "{auth}"}', "not the Pushgateway's group listing"),
        (200, '{"data": [{"labels": {"job": 3}}, 7, {"labels": {"job": "j"}}]}', "0 group(s)"),
        (302, "", "never redirected"),
    ],
)
def test_a_gateway_answering_oddly_fails_cleanly_and_never_shows_credentials(
    status: int, body: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in = GatewayStandIn()
    stand_in.answer(status, "Reason {auth}", {"Location": "http://x/{auth}"}, body)
    url = stand_in.url.replace("http://", "http://prune:Pa55-word@")
    code = main(["gateway", "prune", "--pushgateway", url, "--older-than", "1h"])
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert said in shown
    assert code == (0 if said == "0 group(s)" else 1)
    assert stand_in.requests[0][2]["authorization"].startswith("Basic ")
    for secret in ("Pa55-word", stand_in.requests[0][2]["authorization"].split()[1]):
        assert secret not in shown
    stand_in.close()


def test_a_group_that_cannot_be_deleted_is_reported_and_the_rest_still_go(
    pushgateway: Pushgateway, capsys: pytest.CaptureFixture[str]
) -> None:
    # A relay that lists the real gateway's groups but refuses one DELETE: the others go.
    job = f"relay-{uuid.uuid4().hex[:6]}"
    _push(pushgateway, job, instance="a")
    _push(pushgateway, job, instance="b")
    time.sleep(1.2)
    relay = GatewayStandIn("forward")
    relay.upstream = pushgateway.url
    original = relay._forward

    def forward(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if method == "DELETE" and path.endswith("/instance/a"):
            return b"HTTP/1.1 500 Nope\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
        return original(method, path, headers, body)

    relay._forward = forward  # type: ignore[method-assign]
    code = main(["gateway", "prune", "--pushgateway", relay.url, "--older-than", "1s"])
    captured = capsys.readouterr()
    assert code == 1
    assert f'deleted {{job="{job}", instance="b"}}' in captured.out
    assert "1 group(s) could not be deleted" in captured.err and "HTTP 500 Nope" in captured.err
    assert [g["labels"] for g in pushgateway.groups()] == [{"job": job, "instance": "a"}]
    relay.close()


def test_prune_gateway_needs_a_gateway_and_sane_arguments() -> None:
    inst = Instrumentation(registry=CollectorRegistry())
    with pytest.raises(ValueError, match="prune_gateway needs pushgateway="):
        inst.prune_gateway()
    target = PushTarget("http://127.0.0.1:9", job="x", grouping_key={})
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            prune_groups(target, bad)
    with pytest.raises(TypeError, match="number of seconds"):
        prune_groups(target, "1h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        prune_groups(target, 1, job="")


def test_verbose_after_the_action_shows_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    stand_in = GatewayStandIn()
    stand_in.answer(200, "OK", {}, '{"status": "success", "data": []}')
    argv = ["gateway", "prune", "--pushgateway", stand_in.url, "--older-than", "1h"]
    assert main([*argv, "-v"]) == 0
    assert main(["-v", *argv]) == 0
    assert capsys.readouterr().out == "0 group(s) older than 1h deleted\n" * 2
    stand_in.close()


# -- a gateway that lists old groups and is slow (or stuck) to delete them -----------------------


class _StuckGateway:
    """Lists ``groups`` old groups; each DELETE after the first ``quick`` ones hangs
    ``hang`` seconds. ``tls`` serves it over https. Records every DELETE path."""

    def __init__(
        self, groups: int, *, quick: int = 0, hang: float = 30.0, tls: ssl.SSLContext | None = None
    ) -> None:
        old = time.time() - 3600
        listing = json.dumps({"status": "success", "data": [
            {"labels": {"job": f"j{i}"}, "push_time_seconds": {"metrics": [{"value": str(old)}]}}
            for i in range(groups)
        ]}).encode()  # fmt: skip
        self.deleted: list[str] = []
        gateway = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(listing)))
                self.end_headers()
                self.wfile.write(listing)

            def do_DELETE(self) -> None:
                if len(gateway.deleted) >= quick:
                    time.sleep(hang)
                gateway.deleted.append(self.path)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hanging_deletes_are_bounded_per_request_and_in_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stuck = _StuckGateway(5, hang=30)
    args = ["--timeout", "0.3", "--max-time", "0.8"]
    code = main(["gateway", "prune", "--pushgateway", stuck.url, "--older-than", "1s", *args])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 group(s) older than 1s deleted" in captured.out
    assert "5 group(s) could not be deleted" in captured.err
    # Only the deletes that fit in the overall limit were tried; none landed in time.
    assert stuck.deleted == []
    stuck.close()


def test_prune_groups_reports_each_group_as_it_goes_and_what_was_left() -> None:
    stuck = _StuckGateway(4, quick=2, hang=30)
    heard: list[tuple[str, str | None]] = []
    found = prune_groups(
        PushTarget(stuck.url, job="x", grouping_key={}), 1.0, timeout=0.3, within=2.0,
        each=lambda group, reason: heard.append((group.labels["job"], reason)),
    )  # fmt: skip
    assert [job for job, reason in heard if reason is None] == ["j0", "j1"]
    assert [g.labels["job"] for g in found.deleted] == ["j0", "j1"]
    assert len(found.failed) == 2 and all(reason for _, reason in heard[2:])
    assert sorted(stuck.deleted[:2]) == ["/metrics/job/j0", "/metrics/job/j1"]
    stuck.close()


def test_an_interrupted_prune_has_printed_every_deletion_it_made() -> None:
    stuck = _StuckGateway(6, quick=3, hang=60)
    command = [sys.executable, "-m", "instrument", "gateway", "prune", "--pushgateway",
               stuck.url, "--older-than", "1s"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(stuck.deleted) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the fourth DELETE is hanging now
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert len(stuck.deleted) == 3
    lines = out.splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        'deleted {job="j0"}', 'deleted {job="j1"}', 'deleted {job="j2"}'
    ]  # fmt: skip
    assert lines[-1] == "interrupted: 3 group(s) deleted before it"
    assert process.returncode == 130
    stuck.close()


def test_a_listing_echoing_credentials_is_shown_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = time.time() - 3600
    stand_in = GatewayStandIn("answer")
    listing = {"status": "success", "data": [{"labels": {"job": "leak {auth}", "k{auth}": "v"},
               "push_time_seconds": {"metrics": [{"value": str(old)}]}}]}  # fmt: skip
    stand_in.answer(200, "OK", {"Content-Type": "application/json"}, json.dumps(listing))
    monkeypatch.setenv("INSTRUMENT_PUSHGATEWAY_TOKEN", "TOKsecret99")
    code = main(["gateway", "prune", "--pushgateway", stand_in.url, "--older-than", "1s",
                 "--dry-run"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "would delete {job=" in captured.out and "1 group(s)" in captured.out
    assert "TOKsecret99" not in captured.out + captured.err
    stand_in.close()


def test_prune_takes_ca_file_and_insecure_for_an_https_gateway(
    certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    gateway = _StuckGateway(1, quick=5, tls=context)
    base = ["gateway", "prune", "--pushgateway", gateway.url, "--older-than", "1s", "--dry-run"]
    assert main(base) == 1  # a self-signed certificate: refused
    assert "certificate" in capsys.readouterr().err.lower()
    assert main([*base, "--ca-file", str(certificate[0])]) == 0
    assert 'would delete {job="j0"}' in capsys.readouterr().out
    assert main([*base, "--insecure"]) == 0
    assert 'would delete {job="j0"}' in capsys.readouterr().out
    gateway.close()
