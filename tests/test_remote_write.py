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
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import cramjam
import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.delivery import _remote_write

from .test_remote_write_codec import decode_request

STALE_BITS = struct.pack("<Q", 0x7FF0000000000002)


# -- a receiver that does what a test tells it ------------------------------------------------


class Write:
    """One request the stand-in received, decoded with an independent snappy (cramjam)."""

    def __init__(self, headers: dict[str, str], body: bytes, at: float) -> None:
        self.headers = headers
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
                    receiver.writes.append(Write(headers, body, time.monotonic()))
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
    assert write.headers["User-Agent"]
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
    stale = receiver.writes[-1]
    assert {ts for _, ts in stale.values().values()} == {1_000_004}


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
