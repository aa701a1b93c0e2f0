"""The coalescing flusher's schedule: a push whose CPU work is large stretches the wait after
it, so that pushing never takes more than a tenth of the time (said once in the log); one
failed attempt is one backoff step, however many targets failed in it; and pushes keep
their schedule while the main thread does frequent short I/O.

Against the ``GatewayStandIn`` (what a gateway received is read back from its bodies) and a
collector that burns a known amount of the flusher's CPU on each collect.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from instrument import Instrumentation
from instrument._scrub import Scrubber
from instrument.delivery import PushFailed
from instrument.delivery._flusher_thread import SERIALIZE_SHARE, stretched_gap
from instrument.delivery._http import request

from ..servers import GatewayStandIn, Pushgateway

ANALYSIS = {"module": "m", "analysis_type": "t"}


class CpuBurner(Collector):
    """A collector whose collect() costs ``seconds`` of the collecting thread's CPU, as a
    registry of many series does; it counts the CPU it burnt in the flusher."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.burnt = 0.0
        self.collects = 0

    def collect(self) -> Iterator[Metric]:
        if threading.current_thread().name == "instrument-flusher":
            end = time.thread_time() + self.seconds
            while time.thread_time() < end:
                pass
            self.burnt += self.seconds
            self.collects += 1
        return iter(())


def pushed_states(server: GatewayStandIn) -> list[bytes]:
    return [body for body in server.bodies if body]


def short_io_step(small: Path) -> str:
    """What the issue's main thread does: CPU for about 2.5 ms, then a small read, which
    drops the GIL and retakes it at once."""
    end = time.perf_counter() + 0.0025
    while time.perf_counter() < end:
        pass
    with open(small) as handle:
        return handle.read()


def landed_pushes(inst: Instrumentation) -> float:
    pushes = inst.registry.get_sample_value("codomyrmex_pushes_total") or 0.0
    return pushes - (inst.registry.get_sample_value("codomyrmex_push_failures_total") or 0.0)


# -- the stretch: at most SERIALIZE_SHARE of the time pushing ------------------------------


@given(
    gap=st.floats(min_value=1e-3, max_value=3600, allow_nan=False),
    cpu=st.floats(min_value=0, max_value=600, allow_nan=False),
)
def test_a_stretched_gap_keeps_pushing_within_its_share(gap: float, cpu: float) -> None:
    wait = stretched_gap(gap, cpu)
    assert wait >= gap
    assert cpu <= SERIALIZE_SHARE * (cpu + wait) * (1 + 1e-9)
    if cpu * (1 - SERIALIZE_SHARE) / SERIALIZE_SHARE <= gap:
        assert wait == gap  # a cheap push keeps the configured interval


def test_an_expensive_push_stretches_the_interval_and_says_so_once(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    burner = CpuBurner(0.04)
    registry.register(burner)
    inst = Instrumentation(registry=registry, pushgateway=stand_in.url, push_interval=0.02)

    @inst.monitored_analysis("m", "t")
    def work() -> int:
        return 7

    caplog.set_level(logging.INFO, logger="instrument")
    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < 2.0:
        assert work() == 7
        calls += 1
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    inst.close()
    # Unstretched, it would push every 0.02 s + 0.04 s of CPU: two thirds of the time.
    assert burner.collects >= 2, "the flusher never pushed"
    assert burner.burnt / elapsed <= SERIALIZE_SHARE * 1.5
    stretched = [r for r in caplog.records if "instead of push_interval" in r.getMessage()]
    assert len(stretched) == 1
    assert "push_interval=0.02 s" in stretched[0].getMessage()
    # Nothing lost by pushing less often: the final state holds every call.
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_analyses_total", {**ANALYSIS, "status": "success"}
        )
        == calls
    )
    assert pushed_states(stand_in), "nothing reached the gateway"
    assert f'status="success"}} {float(calls)}'.encode() in pushed_states(stand_in)[-1]


def test_a_cheap_push_keeps_the_interval_and_logs_nothing(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.5
    )

    @inst.monitored_analysis("m", "t")
    def work() -> None:
        time.sleep(0.005)

    caplog.set_level(logging.INFO, logger="instrument")
    start = time.monotonic()
    while time.monotonic() - start < 1.6:
        work()
    inst.close()
    # A registry this small costs far under 10 % of 0.5 s even on a loaded machine (at
    # 0.05 s the test depended on the machine's load); about 3 pushes, and the final one.
    assert len(pushed_states(stand_in)) >= 2
    assert not [r for r in caplog.records if "instead of push_interval" in r.getMessage()]


def test_time_on_the_network_does_not_stretch_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = GatewayStandIn(mode="slow", hang=0.4)  # each answer 0.4 s late, then 200
    try:
        inst = Instrumentation(
            registry=CollectorRegistry(), pushgateway=slow.url, push_interval=0.05
        )

        @inst.monitored_analysis("m", "t")
        def work() -> None:
            time.sleep(0.005)

        caplog.set_level(logging.INFO, logger="instrument")
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            work()
        inst.close()
        # About one push per 0.45 s (0.4 s waiting for the answer, then the interval); had
        # the wait counted, the flusher would wait 7.6 s after each.
        assert len(pushed_states(slow)) >= 3
        # A loaded machine may take a few milliseconds to serialize even this registry, and
        # a stretch for that is right; what must never be counted is the 0.4 s answer.
        counted = [
            r.args[0]
            for r in caplog.records
            if "instead of push_interval" in r.getMessage() and isinstance(r.args, tuple)
        ]
        assert all(isinstance(s, float) and s < 0.1 for s in counted), counted
    finally:
        slow.close()


# -- backoff: one failed attempt is one step, whatever failed in it ---------------------------


def test_one_attempt_failing_at_every_target_is_one_backoff_step(
    stand_in: GatewayStandIn, tmp_path: Path
) -> None:
    stand_in.mode = "error"
    directory = tmp_path / "textfiles"
    directory.mkdir()
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=stand_in.url,
        textfile=str(directory / "job.prom"),
        push_mode="off",
    )
    shutil.rmtree(directory)  # the textfile cannot be written any more either
    for attempt in range(1, 4):
        assert inst.push() is False
        assert inst.registry.get_sample_value("codomyrmex_pushes_total") == attempt
        # Each target's failure is counted...
        assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 2 * attempt
        # ...but the attempt is one step of the backoff: after the first failure the next
        # try is at most 1 s away (0.5 s doubled once, with jitter), not 2 s.
        assert inst.delivery._failures == attempt
    inst.delivery._failures = 0
    assert inst.push() is False
    inst.delivery._schedule(False)
    wait = inst.delivery._next_attempt - time.monotonic()
    assert 0.4 <= wait <= 1.0
    inst.close()


def test_the_flusher_backs_off_per_attempt_with_two_failing_targets(
    stand_in: GatewayStandIn, tmp_path: Path
) -> None:
    stand_in.mode = "error"
    directory = tmp_path / "out"
    directory.mkdir()
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=stand_in.url,
        textfile=str(directory / "job.prom"),
        push_interval=0.05,
    )
    shutil.rmtree(directory)

    @inst.monitored_analysis("m", "t")
    def work() -> None:
        pass

    work()
    # Backoffs of one step per attempt: at most 1, 2, 4 s after attempts 1, 2, 3 (with
    # jitter at least half), so by 3.6 s the flusher has tried at least three times; two
    # steps per attempt (2, 8 s at most) would leave it at two.
    deadline = time.monotonic() + 3.6
    while time.monotonic() < deadline:
        time.sleep(0.05)
    attempts = inst.registry.get_sample_value("codomyrmex_pushes_total")
    inst.delivery._stop_flusher()
    assert attempts is not None and attempts >= 3
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 2 * attempts
    inst.close()


# -- starvation: pushes on schedule while the main thread does short I/O ----------------------


def test_pushes_keep_their_schedule_while_the_main_thread_does_frequent_short_io(
    stand_in: GatewayStandIn, tmp_path: Path
) -> None:
    small = tmp_path / "small.txt"
    small.write_text("x" * 100)
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.05
    )
    step = inst.monitored_analysis("m", "t")(short_io_step)

    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < 3.0:
        assert step(small) == "x" * 100
        calls += 1
    pushes = len(pushed_states(stand_in))
    inst.close()
    # About 60 slots of 0.05 s in 3 s: generously, at least a fifth of them were used.
    assert pushes >= 12, f"{pushes} pushes in 3 s with push_interval=0.05"
    assert f'status="success"}} {float(calls)}'.encode() in pushed_states(stand_in)[-1]
    assert os.getpid() == inst.delivery._owner_pid


def test_a_push_hands_the_gil_over_no_more_than_its_own_io_needs(
    stand_in: GatewayStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A main thread that drops the GIL for short I/O more often than the switch interval
    restarts the wait of every thread waiting for it, so such a thread gets the GIL only
    when it wins a race: each time a push waits for the GIL is a chance to stall. The push
    runs its request in the flusher, with no thread started and joined per push (which
    added a start, a bootstrap and a join to every push: three more waits)."""
    started: list[str] = []
    start_thread = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self.name)
        start_thread(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    small = tmp_path / "small.txt"
    small.write_text("x" * 100)
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=stand_in.url, push_interval=0.05
    )
    step = inst.monitored_analysis("m", "t")(short_io_step)
    begin = time.monotonic()
    calls = 0
    while time.monotonic() - begin < 2.0:
        assert step(small) == "x" * 100
        calls += 1
    pushes = landed_pushes(inst)
    inst.close()
    assert pushes >= 8, f"{pushes} pushes in 2 s with push_interval=0.05"
    assert [name for name in started if name.startswith("instrument-")] == ["instrument-flusher"]
    assert f'status="success"}} {float(calls)}'.encode() in pushed_states(stand_in)[-1]


@pytest.mark.integration
@pytest.mark.parametrize("interval", [0.1, 1.0])
def test_a_real_gateway_gets_pushes_on_schedule_while_the_main_thread_does_short_io(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path, interval: float
) -> None:
    small = tmp_path / "small.txt"
    small.write_text("x" * 100)
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=pushgateway.url,
        job=job_name,
        push_interval=interval,
    )
    step = inst.monitored_analysis("m", "t")(short_io_step)
    window = 10 * interval + 1.0
    begin = time.monotonic()
    calls = 0
    while time.monotonic() - begin < window:
        assert step(small) == "x" * 100
        calls += 1
    pushes = landed_pushes(inst)
    last_push = inst.registry.get_sample_value("codomyrmex_last_push_success_timestamp_seconds")
    inst.close()
    # At least 10 slots in the window; generously, half of them were used.
    assert pushes >= 5, f"{pushes} pushes in {window:g} s with push_interval={interval:g}"
    assert last_push is not None and last_push > time.time() - window / 2
    assert pushgateway.value("codomyrmex_analyses_total", job=job_name, status="success") == calls


# -- the inline request keeps its promises ------------------------------------------------------


def test_a_request_to_a_host_name_still_lands_and_one_by_address_looks_nothing_up(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    start_thread = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self.name)
        start_thread(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    stand_in.answer(200, body="by name")
    named = f"http://localhost:{stand_in.port}/x"
    assert request(named, "GET", [], b"", 5.0, None, Scrubber(())) == b"by name"
    assert "instrument-name-lookup" in started  # a lookup has no timeout of its own
    started.clear()
    stand_in.answer(200, body="by address")
    assert request(stand_in.url + "/x", "GET", [], b"", 5.0, None, Scrubber(())) == b"by address"
    assert not [name for name in started if name.startswith("instrument-")]


def test_a_host_name_no_lookup_can_encode_fails_at_once_and_says_so() -> None:
    host = "a" * 70 + ".example"  # a label longer than IDNA allows: the lookup raises
    with pytest.raises(PushFailed) as caught:
        request(f"http://{host}:9091/x", "PUT", [], b"", 30.0, None, Scrubber(()))
    # Not a lookup that seemed to hang until the deadline: the error it raised.
    assert str(caught.value) == "UnicodeError while sending the request"


URL_TEXT = string.ascii_letters + string.digits + "-._~%/=&+:@!$'()*,;"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.text(URL_TEXT, max_size=40), query=st.text(URL_TEXT + "?", max_size=30))
def test_any_path_and_query_reach_the_gateway_as_written(
    stand_in: GatewayStandIn, path: str, query: str
) -> None:
    target = f"/{path}" + (f"?{query}" if query else "")
    body = f"pushed to {target}".encode()
    assert request(stand_in.url + target, "PUT", [], body, 5.0, None, Scrubber(())) == b""
    method, seen, headers = stand_in.requests[-1]
    assert (method, seen) == ("PUT", target)
    assert headers["content-length"] == str(len(body))
    assert stand_in.bodies[-1] == body


# -- TLS through the same inline request ----------------------------------------------------------


class TlsGateway:
    """An HTTPS gateway on loopback with a certificate of its own (for 127.0.0.1 and
    localhost), recording each body it was sent."""

    def __init__(self, directory: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("needs the openssl command to make a certificate")
        self.cert, key = directory / "cert.pem", directory / "key.pem"
        names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
        command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        command += ["-subj", "/CN=localhost", "-addext", names]
        command += ["-keyout", str(key), "-out", str(self.cert)]
        subprocess.run(
            command,
            check=True,
            capture_output=True,
        )
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[TlsGateway]:
    server = TlsGateway(tmp_path)
    yield server
    server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_push_over_tls_lands_when_the_certificate_checks_out(
    tls_gateway: TlsGateway, host: str
) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=f"https://{host}:{tls_gateway.port}",
        ca_file=str(tls_gateway.cert),
        push_mode="off",
    )
    inst.record_analysis("m", "t", 0.25)
    assert inst.push() is True
    assert (
        b'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"} 1.0'
        in (tls_gateway.bodies[-1])
    )
    inst.close()


def test_a_push_over_tls_to_a_certificate_nobody_vouches_for_fails_clearly(
    tls_gateway: TlsGateway, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=f"https://127.0.0.1:{tls_gateway.port}",
        bearer_token="tls-s3cret",
        push_mode="off",
    )
    inst.record_analysis("m", "t", 0.25)
    caplog.set_level(logging.WARNING, logger="instrument")
    assert inst.push() is False
    assert not tls_gateway.bodies
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "tls-s3cret" not in caplog.text
    inst.close()


def test_a_tls_handshake_that_never_comes_ends_at_the_push_timeout(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # The stand-in reads the ClientHello as the start of an HTTP head and waits for its
    # end, holding the connection about 10 s: the handshake never completes.
    inst = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=f"https://127.0.0.1:{stand_in.port}",
        push_timeout=0.5,
        push_mode="off",
    )
    caplog.set_level(logging.WARNING, logger="instrument")
    begin = time.monotonic()
    assert inst.push() is False
    elapsed = time.monotonic() - begin
    assert elapsed < 5.0, f"{elapsed:.1f} s: the push outlived its timeout by far"
    assert "no complete answer within 0.4" in caplog.text  # what was left of 0.5 s
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 1
    inst.close()
