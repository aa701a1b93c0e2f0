"""Remote write as a delivery target: the protocol as a receiver reads it, series identity,
retries, ordering, the end of a worker's series, secrets, and the real Prometheus receiver.

The stand-in receiver below (http.server on loopback) misbehaves on purpose: scripted
statuses, Retry-After, echoed headers, hangs. The real one is Debian's Prometheus started
with ``--web.enable-remote-write-receiver`` (the ``remote_write_prometheus`` fixture).
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from instrument import Instrumentation
from instrument.config import from_environment
from instrument.delivery import _remote_write, _remote_write_checks

from ..servers import Prometheus, Pushgateway
from ..support import ROOT
from .test_remote_write_codec import decode_request

STALE_BITS = struct.pack("<Q", 0x7FF0000000000002)


# -- a receiver that does what a test tells it ------------------------------------------------


class Write:
    """One request the stand-in received, decoded with an independent snappy (cramjam)."""

    def __init__(self, headers: dict[str, str], body: bytes, at: float, path: str = "") -> None:
        self.headers = headers
        self.path = path
        self.at = at
        self.body = body
        self.series, self.metadata = decode_request(bytes(cramjam.snappy.decompress_raw(body)))

    def values(self) -> dict[tuple[tuple[str, str], ...], tuple[bytes, int]]:
        """Each series' labels and its one sample (raw double bits, timestamp)."""
        out = {}
        for entry in self.series:
            assert len(entry["samples"]) == 1
            out[tuple(entry["labels"])] = entry["samples"][0]
        return out

    def value(self, name: str, **labels: str) -> float | None:
        found = [
            struct.unpack("<d", bits)[0]
            for key, (bits, _) in self.values().items()
            if dict(key).get("__name__") == name and labels.items() <= dict(key).items()
        ]
        assert len(found) <= 1, f"{len(found)} series match {name}{labels}"
        return found[0] if found else None


class Receiver:
    """A remote-write receiver on loopback. ``answers`` are (status, headers, body) used in
    turn, then ``default``; ``{headers}`` in a reason or body stands for every header the
    request carried (an echoing proxy); ``hang`` seconds are slept before answering."""

    def __init__(
        self,
        answers: list[tuple[int, dict[str, str], str]] | None = None,
        default: tuple[int, dict[str, str], str] = (204, {}, ""),
        hang: float = 0.0,
    ) -> None:
        self.answers = list(answers or [])
        self.default = default
        self.hang = hang
        self.writes: list[Write] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.writes.append(Write(headers, body, time.monotonic(), self.path))
                    status, extra, text = (
                        receiver.answers.pop(0) if receiver.answers else receiver.default
                    )
                if receiver.hang:
                    time.sleep(receiver.hang)
                echoed = " ".join(f"{k}: {v}" for k, v in headers.items())
                payload = text.replace("{headers}", echoed).encode("latin-1", "replace")
                self.send_response(status, f"Reason {echoed}" if "{headers}" in text else None)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/write"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    stand_in = Receiver()
    yield stand_in
    stand_in.close()


def _inst(url: str, **options: Any) -> Instrumentation:
    options.setdefault("registry", CollectorRegistry())
    options.setdefault("push_mode", "off")
    options.setdefault("job", "rw-test")
    return Instrumentation(remote_write=url, **options)


def _analyses(inst: Instrumentation, n: int, module: str = "static_analysis") -> None:
    @inst.monitored_analysis(module, "codebase")
    def work(i: int) -> int:
        return i

    for i in range(n):
        assert work(i) == i


def _samples(inst: Instrumentation, name: str) -> float | None:
    return inst.registry.get_sample_value(f"codomyrmex_{name}")


# -- the protocol --------------------------------------------------------------------------------


def test_a_write_is_the_remote_write_protocol_with_every_series_labelled(
    receiver: Receiver,
) -> None:
    inst = _inst(
        receiver.url,
        grouping_key={"team": "a"},
        external_labels={"cluster": "eu-1"},
        instance="w-1",
        remote_write_headers={"X-Scope-OrgID": "tenant-a"},
    )
    _analyses(inst, 3)
    assert inst.push()
    (write,) = receiver.writes
    assert write.headers["Content-Encoding"] == "snappy"
    assert write.headers["Content-Type"] == "application/x-protobuf"
    assert write.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert write.headers["X-Scope-OrgID"] == "tenant-a"
    assert write.headers["User-Agent"].startswith("instrument/")
    for labels in write.values():
        names = [name for name, _ in labels]
        assert names == sorted(names) and len(set(names)) == len(names)
        assert {("job", "rw-test"), ("instance", "w-1"), ("team", "a"), ("cluster", "eu-1")} <= set(
            labels
        )
        assert all(value != "" for _, value in labels)
    want = inst.registry.get_sample_value(
        "codomyrmex_analyses_total",
        {"module": "static_analysis", "analysis_type": "codebase", "status": "success"},
    )
    assert want == 3
    assert write.value("codomyrmex_analyses_total", module="static_analysis", status="success") == 3
    # Histograms as their classic series, cumulative buckets ending in +Inf.
    assert write.value("codomyrmex_analysis_duration_seconds_count", module="static_analysis") == 3
    assert write.value("codomyrmex_analysis_duration_seconds_bucket", le="+Inf") == 3
    assert write.value("codomyrmex_analysis_duration_seconds_sum") is not None
    assert not any(dict(k)["__name__"].endswith("_created") for k in write.values())
    # Metadata: type and help of each family, under the name a query uses.
    meta = {m["family"]: (m["type"], m["help"]) for m in write.metadata}
    assert meta["codomyrmex_analyses_total"][0] == 1
    assert meta["codomyrmex_analysis_duration_seconds"][0] == 3
    assert meta["codomyrmex_active_jobs"][0] == 2
    assert all(help_text for _, help_text in meta.values())
    # Timestamps in milliseconds of now, all series at once.
    stamps = {ts for _, ts in write.values().values()}
    assert len(stamps) == 1
    assert abs(stamps.pop() / 1000 - time.time()) < 60
    inst.close()


def test_the_instance_is_host_pid_unless_given_and_the_gateway_keeps_its_meaning(
    receiver: Receiver,
) -> None:
    default = _inst(receiver.url, pushgateway="http://127.0.0.1:9", stale_on_exit=False)
    expected = f"{socket.gethostname()}-{os.getpid()}"
    assert default.delivery.remote_write is not None
    assert default.delivery.remote_write.labels["instance"] == expected
    assert default.delivery.gateway is not None
    assert "instance" not in default.delivery.gateway.grouping_key  # instance=False there
    named = _inst(receiver.url, instance="batch-7", pushgateway="http://127.0.0.1:9")
    assert named.delivery.remote_write is not None and named.delivery.gateway is not None
    assert named.delivery.remote_write.labels["instance"] == "batch-7"
    assert named.delivery.gateway.grouping_key["instance"] == "batch-7"
    _analyses(named, 1)
    named.delivery.gateway = None  # only the receiver is up here
    assert named.push()
    assert (
        receiver.writes[-1].value("codomyrmex_analyses_total", instance="batch-7", status="success")
        == 1
    )
    default.close()
    named.close()


class SteppingClock:
    """time for the remote-write module, with a wall clock that a test steps back."""

    def __init__(self, walls: list[float]) -> None:
        self.walls = walls

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    def time(self) -> float:
        return self.walls.pop(0) if len(self.walls) > 1 else self.walls[0]


def test_timestamps_strictly_increase_when_the_clock_steps_back_or_stands_still(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_remote_write, "time", SteppingClock([1000.0, 1000.0, 999.0, 999.0005]))
    inst = _inst(receiver.url)
    for _ in range(4):
        _analyses(inst, 1)
        assert inst.push()
    stamps = [{ts for _, ts in w.values().values()} for w in receiver.writes]
    assert stamps == [{1_000_000}, {1_000_001}, {1_000_002}, {1_000_003}]
    assert [w.value("codomyrmex_analyses_total", status="success") for w in receiver.writes] == [
        1,
        2,
        3,
        4,
    ]
    inst.close()
    # close() in off mode writes the final values again, then the markers, each later.
    final, stale = receiver.writes[-2:]
    assert {ts for _, ts in final.values().values()} == {1_000_004}
    assert final.value("codomyrmex_analyses_total", status="success") == 4
    assert {ts for _, ts in stale.values().values()} == {1_000_005}


# -- retries -----------------------------------------------------------------------------------


def test_a_500_is_retried_with_the_same_write_and_lands(receiver: Receiver) -> None:
    receiver.answers = [(500, {}, "try later"), (503, {}, "busy")]
    inst = _inst(receiver.url, push_timeout=10)
    _analyses(inst, 2)
    assert inst.push()
    assert len(receiver.writes) == 3
    assert receiver.writes[0].body == receiver.writes[1].body == receiver.writes[2].body
    assert _samples(inst, "push_failures_total") == 0
    assert _samples(inst, "pushes_total") == 1
    inst.close()


def test_a_429_waits_for_its_retry_after(receiver: Receiver) -> None:
    receiver.answers = [(429, {"Retry-After": "1"}, "slow down")]
    inst = _inst(receiver.url, push_timeout=10)
    _analyses(inst, 1)
    assert inst.push()
    first, second = receiver.writes[:2]
    assert second.at - first.at >= 0.95  # a lower bound: the receiver asked for 1 s
    assert _samples(inst, "push_failures_total") == 0
    inst.close()


def test_a_retry_after_beyond_the_timeout_holds_the_next_write_back(receiver: Receiver) -> None:
    receiver.answers = [(503, {"Retry-After": "30"}, "maintenance")]
    inst = _inst(receiver.url, push_timeout=0.5)
    _analyses(inst, 1)
    assert not inst.push()
    assert not inst.push()  # still inside the 30 s asked for: nothing is sent
    assert len(receiver.writes) == 1
    assert _samples(inst, "push_failures_total") == 2
    inst.delivery.remote_write._not_before = 0.0  # type: ignore[union-attr]  # the 30 s pass
    assert inst.push()
    assert receiver.writes[-1].value("codomyrmex_analyses_total", status="success") == 1
    inst.close()


def test_a_400_is_not_retried_and_logged_once_with_the_receivers_message(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers = [(400, {}, "out of order sample"), (400, {}, "out of order sample")]
    inst = _inst(receiver.url, push_timeout=10)
    _analyses(inst, 1)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert not inst.push()
        assert len(receiver.writes) == 1
        _analyses(inst, 1)
        assert not inst.push()  # a new write (newer values), refused again: no new warning
    assert len(receiver.writes) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "HTTP 400" in text and "out of order sample" in text and "not retried" in text
    assert _samples(inst, "push_failures_total") == 2
    assert inst.push()  # the receiver takes the next one: the newest cumulative values
    assert receiver.writes[-1].value("codomyrmex_analyses_total", status="success") == 2
    inst.close()


def test_a_receiver_down_then_up_loses_nothing(receiver: Receiver) -> None:
    receiver.default = (502, {}, "bad gateway")
    inst = _inst(receiver.url, push_mode="coalesce", push_interval=0.05, push_timeout=0.3)
    _analyses(inst, 5)
    deadline = time.monotonic() + 20
    while (_samples(inst, "push_failures_total") or 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (_samples(inst, "push_failures_total") or 0) >= 2
    receiver.default = (204, {}, "")
    _analyses(inst, 5)
    assert inst.flush(timeout=10)
    assert receiver.writes[-1].value("codomyrmex_analyses_total", status="success") == 10
    inst.close()


# -- order: never an older sample, never older values -------------------------------------------


def test_overlapping_sync_and_async_writes_never_go_back_in_time_or_value(
    receiver: Receiver,
) -> None:
    inst = _inst(receiver.url, push_timeout=10)
    receiver.hang = 0.01

    def pushes() -> None:
        for _ in range(10):
            _analyses(inst, 1)
            inst.push()

    async def apushes() -> None:
        for _ in range(10):
            _analyses(inst, 1)
            await inst.apush()

    threads = [threading.Thread(target=pushes) for _ in range(3)]
    for thread in threads:
        thread.start()
    asyncio.run(apushes())
    for thread in threads:
        thread.join()
    assert inst.push()
    last: dict[tuple[tuple[str, str], ...], tuple[int, float]] = {}
    for write in receiver.writes:  # in the order they arrived
        for labels, (bits, ts) in write.values().items():
            value = struct.unpack("<d", bits)[0]
            if labels in last:
                assert ts > last[labels][0], "a sample not newer than the one before"
                if dict(labels)["__name__"].endswith("_total"):
                    assert value >= last[labels][1], "a counter went back"
            last[labels] = (ts, value)
    assert receiver.writes[-1].value("codomyrmex_analyses_total", status="success") == 40
    inst.close()


# -- the end of a worker's series ---------------------------------------------------------------


def test_close_writes_the_final_values_then_a_stale_marker_for_every_series(
    receiver: Receiver,
) -> None:
    inst = _inst(receiver.url, push_mode="coalesce", push_interval=30)
    _analyses(inst, 1)
    assert inst.flush()
    _analyses(inst, 2)
    inst.close()
    *_, final, stale = receiver.writes
    assert final.value("codomyrmex_analyses_total", status="success") == 3
    assert set(stale.values()) == set(final.values())
    assert {bits for bits, _ in stale.values().values()} == {STALE_BITS}
    assert min(ts for _, ts in stale.values().values()) > max(
        ts for _, ts in final.values().values()
    )
    assert stale.metadata == []


def test_stale_on_exit_false_leaves_the_series_live(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_mode="coalesce", stale_on_exit=False)
    _analyses(inst, 2)
    inst.close()
    assert [w.value("codomyrmex_analyses_total", status="success") for w in receiver.writes] == [2]


def test_no_stale_marker_hides_final_values_that_never_landed(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_mode="coalesce", push_interval=30, push_timeout=0.3)
    _analyses(inst, 1)
    assert inst.flush()
    receiver.default = (500, {}, "down")
    _analyses(inst, 1)
    inst.close()
    assert all(STALE_BITS not in (b for b, _ in w.values().values()) for w in receiver.writes)
    assert _samples(inst, "push_failures_total") == 1


def test_aclose_ends_the_series_over_aiohttp(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_mode="coalesce", push_interval=30)

    async def main() -> None:
        @inst.monitored_analysis("async_module", "codebase")
        async def work() -> int:
            return 1

        assert await work() == 1
        assert await inst.apush()
        await inst.aclose()

    asyncio.run(main())
    first, stale = receiver.writes
    assert first.value("codomyrmex_analyses_total", module="async_module", status="success") == 1
    assert first.headers["Content-Encoding"] == "snappy"
    assert {bits for bits, _ in stale.values().values()} == {STALE_BITS}


# -- a receiver that hangs never holds the caller past the timeout --------------------------------


def test_a_hanging_receiver_holds_an_each_mode_call_at_most_the_push_timeout() -> None:
    hanging = Receiver(hang=30)
    inst = _inst(hanging.url, push_mode="each", push_timeout=0.5)

    @inst.monitored_analysis("static_analysis", "codebase")
    def work() -> str:
        return "result"

    started = time.monotonic()
    assert work() == "result"
    took = time.monotonic() - started
    assert took < 5, f"the call waited {took:.1f} s on a 0.5 s push timeout"
    assert _samples(inst, "push_failures_total") == 1
    started = time.monotonic()
    inst.close()
    assert time.monotonic() - started < 10
    hanging.close()


def test_a_hanging_receiver_never_holds_a_coalesced_call() -> None:
    hanging = Receiver(hang=30)
    inst = _inst(hanging.url, push_mode="coalesce", push_interval=0.01, push_timeout=2)
    _analyses(inst, 1)
    deadline = time.monotonic() + 10
    while not hanging.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hanging.writes, "the flusher never wrote"
    started = time.monotonic()
    _analyses(inst, 100)  # while the flusher's write hangs
    assert time.monotonic() - started < 2
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_analyses_total",
            {"module": "static_analysis", "analysis_type": "codebase", "status": "success"},
        )
        == 101
    )
    inst.delivery.close(timeout=0.5)  # the final write hangs too: bounded
    hanging.close()


# -- secrets: header values and URL credentials never shown -----------------------------------

TOKEN = "s3cr3t-T0ken-value"
TENANT = "tenant-Secret-42"
PASSWORD = "pa55-W0rd"


def _everything_shown(inst: Instrumentation, caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join([repr(inst), repr(inst.delivery), *(r.getMessage() for r in caplog.records)])


@pytest.mark.parametrize("status", [500, 400, 429, 302])
def test_an_echoing_receiver_never_gets_a_secret_into_logs_or_reprs(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    echo = Receiver(default=(status, {"Location": "{headers}"}, "you sent {headers}"))
    inst = _inst(
        echo.url,
        push_timeout=0.5,
        remote_write_headers={"Authorization": f"Bearer {TOKEN}", "X-Scope-OrgID": TENANT},
    )
    _analyses(inst, 1)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert not inst.push()
        assert not asyncio.run(inst.apush())
    shown = _everything_shown(inst, caplog)
    assert echo.writes and echo.writes[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert "you sent" in shown or status == 302  # the receiver's message is quoted...
    for secret in (TOKEN, TENANT):
        assert secret not in shown and secret.lower() not in shown.lower()  # ...scrubbed
    echo.close()


def test_url_credentials_become_basic_auth_and_are_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import base64

    echo = Receiver(default=(500, {}, "echo {headers}"))
    url = echo.url.replace("http://", f"http://writer:{PASSWORD}@")
    # Time for the first answer under load: a timeout that ran out first shows no echo.
    inst = _inst(url, push_timeout=2.0)
    _analyses(inst, 1)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert not inst.push()
    encoded = base64.b64encode(f"writer:{PASSWORD}".encode()).decode()
    assert echo.writes[0].headers["Authorization"] == f"Basic {encoded}"
    shown = _everything_shown(inst, caplog)
    assert PASSWORD not in shown and encoded not in shown
    assert "echo" in shown
    echo.close()


def test_the_environment_gives_url_and_headers_and_never_shows_a_value() -> None:
    env = {
        "INSTRUMENT_REMOTE_WRITE_URL": "http://u:p@127.0.0.1:9090/api/v1/write",
        "INSTRUMENT_REMOTE_WRITE_HEADERS": f"X-Scope-OrgID={TENANT}, Authorization=Basic YWI6Y2Q=",
    }
    found = from_environment(env)
    assert found["remote_write"] == env["INSTRUMENT_REMOTE_WRITE_URL"]
    assert found["remote_write_headers"] == {
        "X-Scope-OrgID": TENANT,
        "Authorization": "Basic YWI6Y2Q=",
    }
    bad = {"INSTRUMENT_REMOTE_WRITE_HEADERS": f"X-Scope-OrgID={TENANT}\x01,oops"}
    with pytest.raises(ValueError, match="INSTRUMENT_REMOTE_WRITE_HEADERS") as info:
        from_environment(bad)
    assert TENANT not in str(info.value)
    with pytest.raises(ValueError, match="Name=value pairs"):
        from_environment({"INSTRUMENT_REMOTE_WRITE_HEADERS": "no-equals-sign"})
    with pytest.raises(ValueError, match="INSTRUMENT_REMOTE_WRITE_URL") as info:
        from_environment({"INSTRUMENT_REMOTE_WRITE_URL": f"ftp://u:{PASSWORD}@host/x"})
    assert PASSWORD not in str(info.value)


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
    lambda n: n.lower() not in _remote_write_checks._PROTOCOL_HEADERS
)
header_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=40,
)


@given(st.dictionaries(header_names, header_values, max_size=4))
@settings(max_examples=100, deadline=None)
def test_any_valid_headers_go_through_the_environment_form_unchanged(
    headers: dict[str, str],
) -> None:
    if len({n.lower() for n in headers}) != len(headers):
        return  # names differing only in case: refused, tested below
    text = ",".join(f"{name}={value}" for name, value in headers.items())
    got = from_environment({"INSTRUMENT_REMOTE_WRITE_HEADERS": text})
    assert got["remote_write_headers"] == {n: v.strip() for n, v in headers.items()}
    url = "http://127.0.0.1:9/api/v1/write"
    target = _remote_write.RemoteWriteTarget(url, headers=got["remote_write_headers"], labels={})
    # What the repr shows besides the URL and the header names: never a value.
    shown = repr(target).replace(repr(url), "").replace(repr(list(headers)), "")
    for value in headers.values():
        if len(value) >= 4:
            assert value not in shown
        assert target.scrubber.scrub(value) == "***"


@given(
    header_names,
    st.text(min_size=1, max_size=20).filter(
        lambda v: any(ord(c) < 0x20 or ord(c) == 0x7F for c in v.strip())
    ),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_a_header_value_with_a_control_character_is_refused_without_showing_it(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError) as info:
        Instrumentation(remote_write="http://127.0.0.1:9/w", remote_write_headers={name: value})
    assert value.strip() not in str(info.value)
    assert name in str(info.value)


@given(
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="@/?#[]"),
        min_size=1,
        max_size=20,
    )
)
@settings(max_examples=100, deadline=None)
def test_a_password_in_any_url_never_reaches_a_repr_or_an_error(password: str) -> None:
    from urllib.parse import quote

    url = f"http://user:{quote(password, safe='')}@127.0.0.1:9/api/v1/write"
    inst = Instrumentation(
        registry=CollectorRegistry(), remote_write=url, push_mode="off", stale_on_exit=False
    )
    shown = repr(inst)
    assert "'http://127.0.0.1:9/api/v1/write'" in shown
    assert "user:" not in shown and "@" not in shown
    inst.close()
    with pytest.raises(ValueError) as info:
        Instrumentation(remote_write=url.replace("/api", " /api"))
    assert "***@127.0.0.1" in str(info.value) and "user:" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"external_labels": {"module": "x"}}, ValueError, "label of the toolkit's own metrics"),
        ({"external_labels": {"job": "x"}}, ValueError, "pass job= instead"),
        ({"external_labels": {"instance": "x"}}, ValueError, "instance= adds it too"),
        ({"external_labels": {"__x": "x"}}, ValueError, "reserved"),
        ({"external_labels": {"1x": "x"}}, ValueError, "not a valid label name"),
        ({"external_labels": {"cluster": ""}}, ValueError, "is empty"),
        ({"external_labels": {"cluster": 3}}, TypeError, "must be a string"),
        ({"external_labels": ["cluster"]}, TypeError, "must be a mapping"),
        (
            {"external_labels": {"team": "a"}, "grouping_key": {"team": "b"}},
            ValueError,
            "both hold 'team'",
        ),
        ({"grouping_key": {"instance": "x"}}, ValueError, "pass instance="),
        ({"remote_write_headers": {"Content-Type": "text/plain"}}, ValueError, "protocol sets"),
        ({"remote_write_headers": {"Bad Name": "x"}}, ValueError, "not an HTTP header name"),
        ({"remote_write_headers": {"X-A": "1", "x-a": "2"}}, ValueError, "twice"),
        ({"remote_write_headers": {"X-A": ""}}, ValueError, "is empty"),
        ({"remote_write_headers": "X-A=1"}, TypeError, "must be a mapping"),
        ({"stale_on_exit": "no"}, TypeError, "stale_on_exit"),
    ],
)
def test_bad_remote_write_settings_are_refused_at_configure_time(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(error, match=match):
        Instrumentation(registry=registry, remote_write="http://127.0.0.1:9/w", **options)
    assert list(registry.collect()) == []  # refused before anything was registered


def test_settings_that_need_remote_write_are_refused_without_it() -> None:
    with pytest.raises(ValueError, match="external_labels is set but remote_write is not"):
        Instrumentation(external_labels={"cluster": "eu"})
    with pytest.raises(ValueError, match="remote_write_headers is set but remote_write is not"):
        Instrumentation(remote_write_headers={"X-Scope-OrgID": "a"})
    with pytest.raises(ValueError, match="pass only one"):
        Instrumentation(
            remote_write=f"http://u:{PASSWORD}@127.0.0.1:9/w",
            remote_write_headers={"authorization": "Bearer x"},
        )
    with pytest.raises(ValueError, match="remote write URL"):
        Instrumentation(remote_write="127.0.0.1:9090")


def test_a_label_of_a_users_own_metric_that_remote_write_adds_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("orders", "Orders", ["cluster"], registry=registry).labels("a").inc()
    with pytest.raises(ValueError, match="'orders_total' already has the label 'cluster'"):
        Instrumentation(
            registry=registry, remote_write="http://127.0.0.1:9/w", external_labels={"cluster": "x"}
        )
    Counter("jobs", "Jobs", ["instance"], registry=registry).labels("a").inc()
    with pytest.raises(ValueError, match="already has the label 'instance'"):
        Instrumentation(registry=registry, remote_write="http://127.0.0.1:9/w")


def test_the_encoders_load_only_with_remote_write() -> None:
    probe = (
        "import sys, instrument\n"
        "from instrument import Instrumentation, configure\n"
        "names = ('instrument.delivery._remote_write', 'instrument.delivery._prompb', "
        "'instrument.delivery._snappy')\n"
        "i = Instrumentation(pushgateway='http://127.0.0.1:9', textfile=None, push_mode='off')\n"
        "i.push(); configure()\n"
        "print([n for n in names if n in sys.modules])\n"
        "Instrumentation(remote_write='http://127.0.0.1:9/w', push_mode='off', "
        "stale_on_exit=False)\n"
        "print([n for n in names if n in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    without, with_remote = result.stdout.splitlines()
    assert without == "[]"
    assert with_remote == repr(
        ["instrument.delivery._remote_write", "instrument.delivery._prompb",
         "instrument.delivery._snappy"]
    )  # fmt: skip


# -- the real receiver: Prometheus 2.42 with --web.enable-remote-write-receiver -----------------

WORKER = """
import sys, time
from instrument import Instrumentation

url, job, calls, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
options = {"pushgateway": sys.argv[5], "instance": True} if len(sys.argv) > 5 else {}
inst = Instrumentation(remote_write=url, job=job, push_interval=0.2, **options)

@inst.monitored_analysis("static_analysis", "codebase")
def work(i):
    return i

for i in range(calls):
    work(i)
if mode == "hang":  # flushed, then killed by the test
    assert inst.flush(10)
    print("flushed", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def _run_workers(worker: Path, args: list[list[str]], at_once: int = 5) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    for start in range(0, len(args), at_once):
        procs = [
            subprocess.Popen([sys.executable, str(worker), *a], env=env, stderr=subprocess.PIPE)
            for a in args[start : start + at_once]
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()


def _scalar(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def _wait_value(
    prometheus: Prometheus, expr: str, want: float, timeout: float = 20
) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        got = _scalar(prometheus, expr)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_twenty_short_lived_workers_sum_exactly_and_end_stale(
    remote_write_prometheus: Prometheus, worker: Path
) -> None:
    job = f"rw-{uuid.uuid4().hex[:8]}"
    url = f"{remote_write_prometheus.url}/api/v1/write"
    _run_workers(worker, [[url, job, "50", "exit"] for _ in range(20)])
    selector = f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
    total = _wait_value(remote_write_prometheus, f"sum(last_over_time({selector}[10m]))", 1000)
    assert total == 1000
    # One series per worker (its host-pid instance), each ended by a staleness marker.
    assert _scalar(remote_write_prometheus, f"count(last_over_time({selector}[10m]))") == 20
    assert remote_write_prometheus.query(selector) == []
    assert remote_write_prometheus.query(f'{{job="{job}"}}') == []
    count = f'codomyrmex_analysis_duration_seconds_count{{job="{job}"}}'
    assert _scalar(remote_write_prometheus, f"sum(last_over_time({count}[10m]))") == 1000


@pytest.mark.integration
def test_a_receiver_down_at_the_start_then_up_loses_nothing() -> None:
    receiver = Prometheus(Pushgateway(), flags=("--web.enable-remote-write-receiver",))
    job = f"rw-{uuid.uuid4().hex[:8]}"
    inst = Instrumentation(
        registry=CollectorRegistry(),
        remote_write=f"{receiver.url}/api/v1/write",
        job=job,
        push_interval=0.1,
        push_timeout=0.5,
    )
    try:
        _analyses(inst, 30)
        deadline = time.monotonic() + 20
        while (_samples(inst, "push_failures_total") or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (_samples(inst, "push_failures_total") or 0) >= 1
        receiver.start()
        _analyses(inst, 12)
        assert inst.flush(timeout=10)
        selector = f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
        assert _wait_value(receiver, f"sum({selector})", 42) == 42
        inst.close()
        assert receiver.query(selector) == []
        assert _scalar(receiver, f"sum(last_over_time({selector}[10m]))") == 42
    finally:
        inst.close()
        receiver.stop()


def test_a_killed_workers_last_written_values_stay_queryable(
    remote_write_prometheus: Prometheus, worker: Path
) -> None:
    job = f"rw-{uuid.uuid4().hex[:8]}"
    url = f"{remote_write_prometheus.url}/api/v1/write"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    proc = subprocess.Popen(
        [sys.executable, str(worker), url, job, "17", "hang"], env=env, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"flushed\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    selector = f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
    # No staleness marker from a killed process: even an instant query still returns it.
    assert _wait_value(remote_write_prometheus, f"sum({selector})", 17) == 17
    assert _scalar(remote_write_prometheus, f"sum(last_over_time({selector}[10m]))") == 17


def test_a_worker_with_both_targets_gives_the_same_totals_in_both(
    remote_write_prometheus: Prometheus, pushgateway: Pushgateway, worker: Path
) -> None:
    job = f"rw-{uuid.uuid4().hex[:8]}"
    url = f"{remote_write_prometheus.url}/api/v1/write"
    _run_workers(worker, [[url, job, str(n), "exit", pushgateway.url] for n in (7, 11, 13)])
    on_gateway = sum(
        value
        for name, labels, value in pushgateway.samples()
        if name == "codomyrmex_analyses_total"
        and labels.get("job") == job
        and labels.get("status") == "success"
    )
    assert on_gateway == 31
    selector = f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
    assert _wait_value(remote_write_prometheus, f"sum(last_over_time({selector}[10m]))", 31) == 31
    gateway_instances = {
        labels["instance"]
        for name, labels, _ in pushgateway.samples()
        if name == "codomyrmex_analyses_total" and labels.get("job") == job
    }
    written = remote_write_prometheus.query(
        f"count by (instance) (last_over_time({selector}[10m]))"
    )
    assert {r["metric"]["instance"] for r in written} == gateway_instances
    assert len(gateway_instances) == 3


DEPLOY = ROOT / "deploy"


@pytest.mark.integration
def test_the_deploy_example_writes_into_a_receiver_started_as_compose_starts_it(
    tmp_path: Path,
) -> None:
    import yaml

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    flags = [
        flag
        for flag in compose["services"]["prometheus"]["command"]
        if not flag.startswith(("--config.file", "--storage.tsdb.path"))  # the launcher's own
    ]
    assert "--web.enable-remote-write-receiver" in flags
    receiver = Prometheus(Pushgateway(), flags=tuple(flags)).start()
    try:
        for name, lines in (("a.py", 3), ("b.py", 5)):
            (tmp_path / name).write_text("x = 1\n" * lines)
        job = f"deploy-{uuid.uuid4().hex[:6]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
        env |= {
            "INSTRUMENT_REMOTE_WRITE_URL": f"{receiver.url}/api/v1/write",
            "INSTRUMENT_JOB": job,
        }
        for _ in range(2):  # two workers, one after the other
            result = subprocess.run(
                [sys.executable, str(DEPLOY / "remote-write" / "worker.py"), str(tmp_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"analysed {tmp_path}: 8 lines\n"
        selector = f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
        assert _scalar(receiver, f"sum(last_over_time({selector}[1h]))") == 4
        assert receiver.query(selector) == []  # both ended their series at exit
    finally:
        receiver.stop()


# -- more hostile cases -----------------------------------------------------------------------


def test_a_receiver_that_refuses_connections_fails_an_each_mode_call_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    inst = _inst(f"http://127.0.0.1:{port}/api/v1/write", push_mode="each", push_timeout=20)
    started = time.monotonic()
    _analyses(inst, 3)
    took = time.monotonic() - started
    assert took < 10, f"3 calls took {took:.1f} s: a refused connection was retried in the call"
    assert _samples(inst, "push_failures_total") == 3
    inst.close()


def test_a_series_the_registry_drops_ends_with_the_next_write(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    orders = Counter("orders", "Orders", ["kind"], registry=registry)
    orders.labels("a").inc()
    orders.labels("b").inc(2)
    inst = _inst(receiver.url, registry=registry)
    assert inst.push()
    orders.remove("a")
    orders.labels("b").inc()
    assert inst.push()
    first, second = receiver.writes
    assert first.value("orders_total", kind="a") == 1
    ended = [bits for key, (bits, _) in second.values().items() if ("kind", "a") in key]
    assert ended == [STALE_BITS]
    assert second.value("orders_total", kind="b") == 3
    inst.close()
    stale = receiver.writes[-1]
    assert not any(("kind", "a") in key for key in stale.values())  # ended once, not twice
    assert {bits for bits, _ in stale.values().values()} == {STALE_BITS}


def test_a_forked_child_writes_its_own_series_under_its_own_pid(receiver: Receiver) -> None:
    import multiprocessing

    inst = _inst(receiver.url, push_mode="coalesce", push_interval=30)
    assert inst.push()  # the parent's series, before the fork

    def child() -> None:
        _analyses(inst, 4, module="in_child")  # the finalizer closes it: final values, markers

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0
    host = socket.gethostname()
    child_writes = [
        w for w in receiver.writes if w.value("codomyrmex_analyses_total", module="in_child",
                                              status="success") is not None
    ]  # fmt: skip
    assert child_writes, "the child wrote nothing"
    instances = {dict(k)["instance"] for w in child_writes for k in w.values()}
    assert instances == {f"{host}-{process.pid}"}
    assert child_writes[-1].value("codomyrmex_analyses_total", module="in_child", status="success")
    parent = inst.delivery.remote_write
    assert parent is not None and parent.labels["instance"] == f"{host}-{os.getpid()}"
    inst.close()


label_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=16)


@pytest.mark.integration
@given(st.dictionaries(st.sampled_from(["cluster", "region", "tier"]), label_text, max_size=3))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_label_value_reaches_prometheus_as_given(
    remote_write_prometheus: Prometheus, labels: dict[str, str]
) -> None:
    job = f"prop-{uuid.uuid4().hex[:8]}"
    inst = _inst(
        f"{remote_write_prometheus.url}/api/v1/write",
        job=job,
        external_labels=labels,
        instance="inst-ü/x y",
    )
    _analyses(inst, 2)
    assert inst.push()
    found = remote_write_prometheus.query(
        f'codomyrmex_analyses_total{{job="{job}",status="success"}}'
    )
    assert [r["metric"] for r in found] == [
        {
            "__name__": "codomyrmex_analyses_total",
            "job": job,
            "instance": "inst-ü/x y",
            "module": "static_analysis",
            "analysis_type": "codebase",
            "status": "success",
            **labels,
        }
    ]
    assert float(found[0]["value"][1]) == 2
    inst.close()
    assert remote_write_prometheus.query(f'{{job="{job}"}}') == []


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=12))
@settings(max_examples=50, deadline=None)
def test_cached_label_encodings_give_the_same_bytes(names: list[str]) -> None:
    from instrument.delivery._prompb import Sample, Series, encode_write_request

    cache: dict[tuple[tuple[str, str], ...], bytes] = {}
    for ts, name in enumerate(names):  # writes that repeat, drop and bring back series
        series = [Series((("__name__", n), ("job", "j")), (Sample(ts, ts),)) for n in {name, "a"}]
        assert encode_write_request(series, (), cache) == encode_write_request(series)


def test_a_hanging_receiver_holds_an_async_each_mode_call_at_most_the_push_timeout() -> None:
    hanging = Receiver(hang=30)
    inst = _inst(hanging.url, push_mode="each", push_timeout=0.5, stale_on_exit=False)

    @inst.monitored_analysis("async_module", "codebase")
    async def work() -> str:
        return "result"

    async def main() -> float:
        started = time.monotonic()
        assert await work() == "result"
        return time.monotonic() - started

    took = asyncio.run(main())
    assert took < 5, f"the awaited call waited {took:.1f} s on a 0.5 s push timeout"
    assert _samples(inst, "push_failures_total") == 1
    inst.delivery.close(timeout=0.5)
    hanging.close()


def test_a_cancelled_write_is_not_followed_by_stale_markers(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_timeout=10)
    _analyses(inst, 1)
    assert inst.push()
    receiver.hang = 30
    _analyses(inst, 1)

    async def cancelled() -> None:
        task = asyncio.ensure_future(inst.apush())
        while len(receiver.writes) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    receiver.hang = 0
    inst.delivery.close(timeout=0.5)  # push_mode="off": no final write, only the markers' turn
    assert all(STALE_BITS not in (b for b, _ in w.values().values()) for w in receiver.writes)
    assert _samples(inst, "push_failures_total") == 1  # the cancelled write


def test_a_query_in_the_url_is_sent_but_never_shown(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{receiver.url}?extra_label=site%3Dlab&api_key=Query-Secret-7"
    inst = _inst(url, push_timeout=0.5)
    _analyses(inst, 1)
    assert inst.push()
    assert asyncio.run(inst.apush())
    assert [w.path for w in receiver.writes] == [
        "/api/v1/write?extra_label=site%3Dlab&api_key=Query-Secret-7"
    ] * 2
    receiver.default = (500, {}, "you sent {headers} to api_key=Query-Secret-7")
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert not inst.push()
    shown = _everything_shown(inst, caplog)
    assert "you sent" in shown and "Query-Secret-7" not in shown and "api_key" not in repr(inst)
    inst.delivery.close(timeout=0.5)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No INSTRUMENT_* variable from outside, and the default restored afterwards."""
    from instrument.defaults import replace_default

    for name in list(os.environ):
        if name.startswith("INSTRUMENT_"):
            monkeypatch.delenv(name)
    saved = replace_default(None)
    try:
        yield monkeypatch
    finally:
        current = replace_default(saved)
        if current is not None and current is not saved:
            current.close()


def test_configure_and_the_implicit_default_read_remote_write_from_the_environment(
    receiver: Receiver, clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import instrument
    from instrument import configure, get_instrumentation

    env = clean_environment
    env.setenv("INSTRUMENT_REMOTE_WRITE_URL", receiver.url)
    env.setenv("INSTRUMENT_REMOTE_WRITE_HEADERS", f"X-Scope-OrgID={TENANT}")
    env.setenv("INSTRUMENT_PUSH_MODE", "off")
    inst = configure(registry=CollectorRegistry(), job="from-env")
    _analyses(inst, 2)
    assert instrument.push()
    assert receiver.writes[-1].headers["X-Scope-OrgID"] == TENANT
    assert receiver.writes[-1].value("codomyrmex_analyses_total", job="from-env", status="success")
    env.setenv("INSTRUMENT_REMOTE_WRITE_HEADERS", f"X-Scope-OrgID={TENANT}\x7f")
    with pytest.raises(ValueError, match="INSTRUMENT_REMOTE_WRITE_HEADERS") as info:
        configure()
    assert TENANT not in str(info.value)
    # The implicit default logs the bad variable once, leaves it out, and still writes.
    from instrument.defaults import replace_default

    replaced = replace_default(None)
    assert replaced is not None
    replaced.close()
    with caplog.at_level(logging.ERROR, logger="instrument"):
        default = get_instrumentation()
    assert [
        r.getMessage()
        for r in caplog.records
        if "INSTRUMENT_REMOTE_WRITE_HEADERS" in r.getMessage()
    ]
    assert all(TENANT not in r.getMessage() for r in caplog.records)
    assert default.delivery.remote_write is not None
    assert default.delivery.remote_write.header_names == ()


def test_retry_after_as_an_http_date_is_honoured_and_garbage_ignored(receiver: Receiver) -> None:
    import email.utils

    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    receiver.answers = [(503, {"Retry-After": soon}, "maintenance")]
    inst = _inst(receiver.url, push_timeout=0.5)
    _analyses(inst, 1)
    assert not inst.push()
    assert not inst.push()  # held back until the date: nothing sent
    assert len(receiver.writes) == 1
    receiver.answers = [(429, {"Retry-After": "soon, maybe"}, "slow down")]
    inst.delivery.remote_write._not_before = 0.0  # type: ignore[union-attr]  # the date passed
    slow = _inst(receiver.url, push_timeout=5, instance="slow")  # a writer of its own
    _analyses(slow, 1)
    assert slow.push()  # garbage: retried after the backoff alone
    assert receiver.writes[-1].value("codomyrmex_analyses_total", status="success") == 1
    slow.close()
    inst.delivery.close(timeout=0.5)


def test_aclose_with_nothing_to_write_opens_no_session() -> None:
    probe = (
        "import asyncio, sys\n"
        "from instrument import Instrumentation\n"
        "inst = Instrumentation(remote_write='http://127.0.0.1:9/w', push_mode='coalesce')\n"
        "asyncio.run(inst.aclose())\n"
        "print('aiohttp' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False\n"
