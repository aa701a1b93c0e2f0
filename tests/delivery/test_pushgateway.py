"""Delivery against a real Pushgateway: push modes, transport, faults, exit, fork, auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._urls import mask_url
from instrument.delivery import grouping_path

from ..servers import GatewayStandIn, Pushgateway, free_port
from ..support import ROOT, gateway_inst, push_once, pushed_analyses

pytestmark = pytest.mark.integration


# -- each mode: push in the finally block -------------------------------------------------------


def test_each_mode_sync_lands_exact_values(pushgateway: Pushgateway, job_name: str) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="each")

    @inst.monitored_analysis("m", "t", quality=lambda r: r)
    def analyze(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    for x in (70, 80, -1):
        with contextlib.suppress(ValueError):
            analyze(x)
        # Each call pushed before returning: the gateway already has it.
    assert pushed_analyses(pushgateway, job=job_name) == 2
    assert pushed_analyses(pushgateway, "error", job=job_name) == 1
    assert (
        pushgateway.value(
            "codomyrmex_analysis_duration_seconds_count",
            module="m",
            analysis_type="t",
            job=job_name,
        )
        == 3
    )
    assert pushgateway.value("codomyrmex_active_jobs", job_type="m", job=job_name) == 0
    assert (
        pushgateway.value("codomyrmex_code_quality_score", project="m", module="m", job=job_name)
        == 80
    )
    assert (
        pushgateway.value("codomyrmex_analysis_errors_total", error_type="ValueError", job=job_name)
        == 1
    )
    assert pushgateway.value("codomyrmex_pushes_total", job=job_name) == 3
    inst.close()


async def test_each_mode_async_awaits_aiohttp_push_on_one_session(
    pushgateway: Pushgateway, job_name: str
) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="each")

    @inst.monitored_analysis("m", "t")
    async def analyze() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await analyze() == "done"
    session = inst.delivery._sessions[id(asyncio.get_running_loop())].session
    assert await analyze() == "done"
    async with inst.monitored_analysis("m", "t"):
        pass
    assert inst.delivery._sessions[id(asyncio.get_running_loop())].session is session
    assert pushed_analyses(pushgateway, job=job_name) == 3
    await inst.aclose()
    assert session.closed


async def test_push_and_push_metrics_return_bools_and_never_raise(
    pushgateway: Pushgateway, job_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="off")
    inst.record_analysis("m", "t", 1.0)
    assert inst.push() is True
    assert pushed_analyses(pushgateway, job=job_name) == 1
    inst.record_analysis("m", "t", 1.0)
    assert await inst.push_metrics() is True
    assert pushed_analyses(pushgateway, job=job_name) == 2
    await inst.aclose()

    dead = f"http://admin:s3cret@127.0.0.1:{free_port()}"
    broken = gateway_inst(dead, push_mode="off", push_timeout=1)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert broken.push() is False
        assert await broken.push_metrics() is False
    assert "s3cret" not in caplog.text and "admin" not in caplog.text
    assert "push to http://127.0.0.1:" in caplog.text  # the credentials became a header
    assert "s3cret" not in repr(broken) and "s3cret" not in repr(broken.delivery)
    await broken.aclose()


def test_put_replaces_the_group_post_replaces_same_names(
    pushgateway: Pushgateway, job_name: str
) -> None:
    first = Instrumentation(
        registry=CollectorRegistry(),
        namespace="alpha",
        pushgateway=pushgateway.url,
        job=job_name,
        push_mode="off",
    )
    second = Instrumentation(
        registry=CollectorRegistry(),
        namespace="beta",
        pushgateway=pushgateway.url,
        job=job_name,
        push_mode="off",
        push_method="post",
    )
    first.record_quality_score("p", "m", 1)
    second.record_quality_score("p", "m", 2)
    assert first.push() and second.push()
    # POST kept alpha's metrics beside beta's.
    assert pushgateway.value("alpha_code_quality_score", job=job_name) == 1
    assert pushgateway.value("beta_code_quality_score", job=job_name) == 2
    assert first.push()  # PUT replaces the whole group: beta's metrics are gone
    assert pushgateway.value("alpha_code_quality_score", job=job_name) == 1
    assert pushgateway.value("beta_code_quality_score", job=job_name) is None
    first.close()
    second.close()


def test_grouping_key_with_slash_and_empty_value_and_delete(
    pushgateway: Pushgateway, job_name: str
) -> None:
    key = {"path": "src/app/main.py", "empty": "", "team": "a b"}
    inst = gateway_inst(
        pushgateway,
        job=job_name,
        grouping_key=key,
        push_mode="off",
    )
    inst.record_analysis("m", "t", 0.5)
    assert inst.push()
    groups = [g["labels"] for g in pushgateway.groups() if g["labels"].get("job") == job_name]
    assert groups == [{"job": job_name, "path": "src/app/main.py", "team": "a b"}] or groups == [
        {"job": job_name, "path": "src/app/main.py", "empty": "", "team": "a b"}
    ]
    assert pushed_analyses(pushgateway, job=job_name, path="src/app/main.py") == 1

    inst.record_analysis("m", "t", 0.5)
    assert push_once(inst, "async")  # the aiohttp path lands in the same group
    assert pushed_analyses(pushgateway, job=job_name, path="src/app/main.py") == 2
    assert inst.delete_from_gateway()
    assert pushed_analyses(pushgateway, job=job_name) is None


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text(max_size=20), max_size=4
    ),
    st.text(min_size=1, max_size=20),
)
def test_grouping_path_round_trips(key: dict[str, str], job: str) -> None:
    path = grouping_path(job, key)
    parts = path.split("/")[2:]  # drop "" and "metrics"
    decoded: dict[str, str] = {}
    from urllib.parse import unquote_plus

    for name, raw in zip(parts[::2], parts[1::2], strict=True):
        if name.endswith("@base64"):
            decoded[name[: -len("@base64")]] = (
                base64.urlsafe_b64decode(raw).decode() if raw != "=" else ""
            )
        else:
            assert "/" not in raw
            decoded[name] = unquote_plus(raw)
    assert decoded == {"job": job, **key}


@given(st.text(min_size=1, max_size=12))
def test_mask_url_hides_any_password(password: str) -> None:
    masked = mask_url(f"https://user:{password}@gw.example:9091/path")
    assert masked == "https://***@gw.example:9091/path"


# -- coalesce mode ---------------------------------------------------------------------------------


def test_coalesce_ten_thousand_calls_from_threads_and_tasks(
    pushgateway: Pushgateway, job_name: str
) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_interval=0.2)

    @inst.monitored_analysis("m", "t")
    def work(i: int) -> int:
        return i

    @inst.monitored_analysis("m", "t")
    async def awork(i: int) -> int:
        return i

    def thread_body() -> None:
        for i in range(625):
            work(i)

    async def tasks() -> None:
        async def task_body() -> None:
            for i in range(625):
                await awork(i)
                if i % 50 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(task_body() for _ in range(8)))

    started = time.monotonic()
    threads = [threading.Thread(target=thread_body) for _ in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert inst.flush(timeout=10)
    assert pushed_analyses(pushgateway, job=job_name) == 10_000
    assert pushgateway.value("codomyrmex_active_jobs", job_type="m", job=job_name) == 0
    pushes = inst.registry.get_sample_value("codomyrmex_pushes_total")
    assert pushes is not None and 1 <= pushes <= elapsed / 0.2 + 3
    inst.close()


def test_gateway_down_then_up_ends_with_exact_totals(
    job_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = Pushgateway()  # not started yet: its port refuses connections
    inst = gateway_inst(
        gateway,
        job=job_name,
        push_interval=0.1,
        push_timeout=1,
    )

    @inst.monitored_analysis("m", "t")
    def work(i: int) -> int:
        return i

    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert [work(i) for i in range(500)] == list(range(500))
        deadline = time.monotonic() + 10
        while inst.registry.get_sample_value("codomyrmex_push_failures_total") < 3:
            assert time.monotonic() < deadline, "the flusher never retried"
            time.sleep(0.05)
        gateway.start()
        try:
            assert [work(i) for i in range(500)] == list(range(500))
            # The flusher is backing off (1 s or more after 3 failures); flush does not wait.
            assert inst.delivery._next_attempt > time.monotonic()
            assert inst.flush(timeout=10)
            assert pushed_analyses(gateway, job=job_name) == 1000
            failures = gateway.value("codomyrmex_push_failures_total", job=job_name)
            assert failures is not None and failures >= 2
        finally:
            inst.close()
            gateway.stop()
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1, "one warning per outage, not one per failure"
    assert any("recovered" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.parametrize("fault", ["slow", "error", "reset", "garbage"])
def test_faulty_gateway_never_slows_calls(stand_in: GatewayStandIn, fault: str) -> None:
    """p95 call latency in coalesce mode against a push_mode='off' baseline, same run."""
    stand_in.mode = fault
    stand_in.hang = 3.0
    faulty = gateway_inst(stand_in, push_interval=0.05, push_timeout=5)
    baseline = Instrumentation(registry=CollectorRegistry(), push_mode="off")

    def measure(inst: Instrumentation) -> list[float]:
        @inst.monitored_analysis("m", "t")
        def work() -> int:
            return sum(range(50))

        samples = []
        for _ in range(2000):
            t0 = time.perf_counter()
            work()
            samples.append(time.perf_counter() - t0)
        return samples

    faulty_samples: list[float] = []
    base_samples: list[float] = []
    for _ in range(3):  # interleaved rounds
        base_samples += measure(baseline)
        faulty_samples += measure(faulty)

    def p95(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=20)[-1]

    assert p95(faulty_samples) < 3 * p95(base_samples)
    deadline = time.monotonic() + 10
    while not stand_in.requests:  # the flusher does try to push
        assert time.monotonic() < deadline, "the flusher never tried to push"
        time.sleep(0.01)

    async def loop_lag() -> float:
        @faulty.monitored_analysis("m", "t")
        async def work() -> None:
            await asyncio.sleep(0)

        worst = 0.0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            t0 = time.monotonic()
            await work()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - t0 - 0.005)
        return worst

    assert asyncio.run(loop_lag()) < 0.1 * stand_in.hang
    # A healthy gateway gets the whole state once it answers.
    stand_in.mode = "ok"
    assert faulty.flush(timeout=10)
    recorded = faulty.registry.get_sample_value(
        "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
    )
    assert recorded is not None and recorded > 6000  # the sync calls plus the async ones
    assert pushed_analyses(stand_in) == recorded
    faulty.close()
    baseline.close()


# -- auth -------------------------------------------------------------------------------------------------


def test_basic_auth_from_url_and_bearer_token_reach_the_gateway(stand_in: GatewayStandIn) -> None:
    url = stand_in.url.replace("http://", "http://alice:pa55@")
    inst = gateway_inst(url, push_mode="off")
    assert inst.push()
    expected = "Basic " + base64.b64encode(b"alice:pa55").decode()
    assert stand_in.requests[-1][2]["authorization"] == expected
    assert "pa55" not in repr(inst)

    token = gateway_inst(
        stand_in,
        bearer_token="tok-123",
        push_mode="off",
    )
    assert push_once(token, "async")
    assert stand_in.requests[-1][2]["authorization"] == "Bearer tok-123"
    assert "tok-123" not in repr(token) and "tok-123" not in repr(token.delivery.gateway)
    with pytest.raises(ValueError, match="either bearer_token or basic_auth, not both"):
        Instrumentation(pushgateway=url, bearer_token="x")


def test_https_verification_is_on_by_default() -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway="https://gw.example", push_mode="off"
    )
    context = inst.delivery.gateway._ssl  # type: ignore[union-attr]
    assert context is not None and context.check_hostname
    off = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway="https://gw.example",
        tls_verify=False,
        push_mode="off",
    )
    assert not off.delivery.gateway._ssl.check_hostname  # type: ignore[union-attr]


# -- closing, exit, fork ------------------------------------------------------------------------------------


def test_aclose_leaves_no_unclosed_session_warning(pushgateway: Pushgateway, job_name: str) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="each")

    @inst.monitored_analysis("m", "t")
    async def analyze() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        await analyze()
        await inst.aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        # A second loop whose session is never closed by hand: close() handles it.
        inst2 = gateway_inst(
            pushgateway,
            job=job_name + "-2",
            push_mode="each",
        )
        asyncio.run(inst2.push_metrics())
        inst2.close()
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)]
    assert pushed_analyses(pushgateway, job=job_name) == 1


def run_child(
    code: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_child_exiting_normally_leaves_final_totals(
    pushgateway: Pushgateway, job_name: str
) -> None:
    result = run_child(
        f"""
        from instrument import Instrumentation
        inst = Instrumentation(pushgateway={pushgateway.url!r}, job={job_name!r}, push_interval=60)

        @inst.monitored_analysis("m", "t")
        def work(i):
            return i

        for i in range(1234):
            work(i)
        # no flush, no close: the atexit handler delivers the final state
        """
    )
    assert result.returncode == 0, result.stderr
    assert pushed_analyses(pushgateway, job=job_name) == 1234


def test_child_killed_with_sigterm_leaves_final_totals_when_opted_in(
    pushgateway: Pushgateway, job_name: str
) -> None:
    code = f"""
        import sys, time
        from instrument import Instrumentation
        inst = Instrumentation(pushgateway={pushgateway.url!r}, job={job_name!r}, push_interval=60)
        inst.install_sigterm_handler()

        @inst.monitored_analysis("m", "t")
        def work(i):
            return i

        for i in range(321):
            work(i)
        print("ready", flush=True)
        # Short sleeps: a signal landing just before one long sleep's system call waits
        # out the whole sleep in any CPython program (its own race, not the toolkit's).
        for _ in range(1200):
            time.sleep(0.05)
        """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(30) == 128 + 15
    assert pushed_analyses(pushgateway, job=job_name) == 321


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_working_flusher_and_its_own_group(
    pushgateway: Pushgateway, job_name: str
) -> None:
    inst = gateway_inst(
        pushgateway,
        job=job_name,
        instance=True,
        push_interval=0.1,
    )

    @inst.monitored_analysis("m", "t")
    def work() -> None:
        return None

    work()
    assert inst.flush(timeout=10)
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            for _ in range(7):
                work()
            deadline = time.monotonic() + 10
            # The child's own flusher (not the parent's thread, which did not survive) pushes.
            while (
                inst.registry.get_sample_value("codomyrmex_pushes_total") < 2
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            status = 0 if inst.flush(timeout=10) else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    groups = {
        g["labels"]["instance"] for g in pushgateway.groups() if g["labels"].get("job") == job_name
    }
    assert len(groups) == 2
    child_instance = next(i for i in groups if i.endswith(f"-{pid}"))
    # The child started from the registry as it was at the fork (1 call) and added 7; the
    # README's scaling section says so (sum over instances counts pre-fork calls twice).
    assert pushed_analyses(pushgateway, job=job_name, instance=child_instance) == 8
    assert (
        pushed_analyses(pushgateway, job=job_name, instance=next(iter(groups - {child_instance})))
        == 1
    )
    inst.close()


def test_delete_on_exit_removes_the_group(pushgateway: Pushgateway, job_name: str) -> None:
    result = run_child(
        f"""
        from instrument import Instrumentation
        inst = Instrumentation(pushgateway={pushgateway.url!r}, job={job_name!r}, instance="w1", delete_on_exit=True)
        inst.record_analysis("m", "t", 1.0)
        assert inst.flush(timeout=10)
        import urllib.request
        text = urllib.request.urlopen({pushgateway.url!r} + "/metrics").read().decode()
        assert 'instance="w1"' in text, text
        """
    )
    assert result.returncode == 0, result.stderr
    assert pushed_analyses(pushgateway, job=job_name) is None


# -- multiprocess mode ---------------------------------------------------------------------------------------


def test_multiprocess_workers_are_collected_and_only_the_owner_pushes(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    port = free_port()
    result = run_child(
        f"""
        import multiprocessing, urllib.request
        from prometheus_client import multiprocess
        from instrument import Instrumentation

        inst = Instrumentation(pushgateway={pushgateway.url!r}, job={job_name!r}, push_interval=0.2)

        @inst.monitored_analysis("m", "t")
        def work(i):
            return i

        def worker(n):
            for i in range(250):
                work(i)
            pushes = inst.registry.get_sample_value("codomyrmex_pushes_total")
            assert not pushes, f"a worker pushed: {{pushes}}"

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            procs = [ctx.Process(target=worker, args=(n,)) for n in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
                assert p.exitcode == 0
                multiprocess.mark_process_dead(p.pid)
            server = inst.start_http_server({port})
            text = urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode()
            line = [l for l in text.splitlines() if l.startswith("codomyrmex_analyses_total{{") and 'status="success"' in l]
            print(line[0])
            assert inst.flush(timeout=10)
            server.shutdown()
        """,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(" 1000.0")
    assert pushed_analyses(pushgateway, job=job_name) == 1000
    assert pushgateway.value("codomyrmex_active_jobs", job_type="m", job=job_name) == 0


# -- pull mode and textfile -------------------------------------------------------------------------------------


def test_pull_mode_http_server_with_content_negotiation(inst: Instrumentation) -> None:
    import urllib.request

    inst.record_analysis("m", "t", 0.2)
    port = free_port()
    server = inst.start_http_server(port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert (
            'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"} 1.0' in text
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(request) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert resp.read().decode().rstrip().endswith("# EOF")
    finally:
        server.shutdown()


async def test_aiohttp_handler_and_asgi_app(inst: Instrumentation) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    inst.record_quality_score("p", "m", 42)
    app = web.Application()
    app.router.add_get("/metrics", inst.aiohttp_handler())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert 'codomyrmex_code_quality_score{module="m",project="p"} 42.0' in await resp.text()

    asgi = inst.asgi_app()
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    await asgi(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert b'codomyrmex_code_quality_score{module="m",project="p"} 42.0' in body


def test_textfile_target(tmp_path: Path) -> None:
    path = tmp_path / "codomyrmex.prom"
    inst = Instrumentation(registry=CollectorRegistry(), textfile=str(path), push_interval=0.05)

    @inst.monitored_analysis("m", "t")
    def work() -> None:
        return None

    for _ in range(5):
        work()
    assert inst.push_mode == "coalesce"
    assert inst.flush(timeout=5)
    text = path.read_text()
    assert 'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"} 5.0' in text
    assert not list(tmp_path.glob("*.tmp*")), "written atomically through a temporary file"
    inst.close()


def test_pushed_state_says_when_it_was_pushed(pushgateway: Pushgateway, job_name: str) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="off")
    before = time.time()
    assert inst.push()
    stamp = pushgateway.value("codomyrmex_last_push_success_timestamp_seconds", job=job_name)
    assert stamp is not None and before <= stamp <= time.time()
    pushed_at = pushgateway.value("push_time_seconds", job=job_name)
    assert pushed_at is not None and abs(pushed_at - stamp) < 5

    # A failed attempt leaves the last success as it was, locally too.
    dead = Instrumentation(
        registry=CollectorRegistry(),
        pushgateway=f"http://127.0.0.1:{free_port()}",
        push_mode="off",
        push_timeout=1,
    )
    assert dead.push() is False
    assert dead.registry.get_sample_value("codomyrmex_last_push_success_timestamp_seconds") == 0
    assert dead.registry.get_sample_value("codomyrmex_push_failures_total") == 1
    inst.close()
    dead.close()


def test_password_with_a_slash_never_shows_and_encoded_one_works(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="must be percent-encoded") as info:
        Instrumentation(pushgateway="http://u:s3cr/et@gw.example")
    assert "s3cr" not in str(info.value) and "et@" not in str(info.value)
    assert mask_url("http://u:123/x@host:9091/p") == "http://***@host:9091/p"

    url = stand_in.url.replace("http://", "http://u:s3cr%2Fet@")
    inst = gateway_inst(url, push_mode="off")
    assert inst.push()
    expected = "Basic " + base64.b64encode(b"u:s3cr/et").decode()
    assert stand_in.requests[-1][2]["authorization"] == expected
    inst.close()


def test_disabled_instrumentation_sends_nothing(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(
        stand_in,
        enabled=False,
        delete_on_exit=True,
        instance="w1",
    )
    inst.record_analysis("m", "t", 1.0)
    assert inst.push() is False
    assert asyncio.run(inst.push_metrics()) is False
    assert inst.flush() is True  # nothing to deliver
    assert inst.delete_from_gateway() is False
    inst.close()
    assert stand_in.requests == []


TRICKLE_SECONDS = 30  # the stand-in's whole answer, one byte every half second


@pytest.mark.parametrize("transport", ["sync", "async"])
def test_push_timeout_bounds_the_whole_push(stand_in: GatewayStandIn, transport: str) -> None:
    """A gateway answering a byte at a time cannot hold a push past push_timeout."""
    stand_in.mode = "trickle"
    inst = gateway_inst(stand_in, push_mode="off", push_timeout=1)
    started = time.monotonic()
    ok = push_once(inst, transport)
    elapsed = time.monotonic() - started
    assert ok is False
    assert elapsed < TRICKLE_SECONDS / 5  # bounded by push_timeout, not by the trickle
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 1
    inst.close()


def test_exit_flush_is_bounded_however_many_instrumentations(stand_in: GatewayStandIn) -> None:
    stand_in.mode = "slow"
    stand_in.hang = 60.0
    started = time.monotonic()
    result = run_child(
        f"""
        from instrument import Instrumentation
        insts = [Instrumentation(pushgateway={stand_in.url!r}, job=f"j{{i}}", push_timeout=30)
                 for i in range(3)]
        for inst in insts:
            inst.record_analysis("m", "t", 1.0)
        """
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # atexit's final flush: 5 s for all three together, against a gateway hanging 60 s.
    assert elapsed < stand_in.hang / 4


def test_an_instrumentation_dropped_without_close_lets_its_flusher_end(
    stand_in: GatewayStandIn,
) -> None:
    inst = gateway_inst(stand_in)
    inst.record_analysis("m", "t", 1.0)
    assert inst.flush(timeout=5)
    thread = inst.delivery._thread
    assert thread is not None and thread.is_alive()
    del inst
    # The instrumentation and its delivery form a cycle, so only the garbage collector
    # frees them; a collection that ran while the flusher still held the delivery (its own
    # push in flight) left the cycle for the next one.
    deadline = time.monotonic() + 5
    while thread.is_alive() and time.monotonic() < deadline:
        gc.collect()
        thread.join(0.05)
    assert not thread.is_alive()


def test_original_push_metrics_takes_a_job_name(pushgateway: Pushgateway, job_name: str) -> None:
    from instrument import PrometheusIntegration

    monitoring = PrometheusIntegration(pushgateway.url, registry=CollectorRegistry())
    monitoring.record_analysis("m", "t", 1.0)
    assert push_once(monitoring, "async", job_name) is True
    assert pushed_analyses(pushgateway, job=job_name) == 1
    assert pushed_analyses(pushgateway, job="codomyrmex") is None
    assert asyncio.run(PrometheusIntegration(registry=CollectorRegistry()).push_metrics()) is False


@pytest.mark.parametrize("newer_from", ["another thread", "the loop's own thread"])
async def test_an_older_state_landing_after_a_newer_one_is_pushed_again(
    stand_in: GatewayStandIn, newer_from: str
) -> None:
    """A sync push never waits for an async one, so the two can overlap and the older state
    land last. The newest state still ends on the gateway, with exact totals."""
    stand_in.mode = "slow"
    stand_in.hang = 1.0
    inst = gateway_inst(stand_in, push_mode="each")

    @inst.monitored_analysis("m", "t")
    async def analyze_async() -> None:
        await asyncio.sleep(0)

    @inst.monitored_analysis("m", "t")
    def analyze_sync() -> None:
        return None

    older = asyncio.create_task(analyze_async())  # pushes 1 analysis; the gateway holds it
    deadline = time.monotonic() + 10
    while not stand_in.requests:
        assert time.monotonic() < deadline, "the async push never reached the gateway"
        await asyncio.sleep(0.01)
    stand_in.mode = "ok"
    if newer_from == "another thread":
        await asyncio.to_thread(analyze_sync)
    else:
        analyze_sync()
    assert pushed_analyses(stand_in) == 2  # the newer state landed first
    await older
    assert pushed_analyses(stand_in) == 1  # then the older one, over it
    await inst.aclose()
    assert pushed_analyses(stand_in) == 2
    assert stand_in.last_value("codomyrmex_pushes_total") == 3
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") == 0
    assert len(stand_in.bodies) == 3


async def test_sync_push_inside_an_event_loop_does_not_wait_for_an_async_one(
    stand_in: GatewayStandIn,
) -> None:
    stand_in.mode = "slow"
    stand_in.hang = 1.0
    inst = gateway_inst(stand_in, push_mode="each", push_timeout=8)

    @inst.monitored_analysis("m", "async")
    async def analyze_async() -> None:
        await asyncio.sleep(0)

    @inst.monitored_analysis("m", "sync")
    def analyze_sync() -> None:
        return None

    task = asyncio.create_task(analyze_async())
    await asyncio.sleep(0.2)  # its push is now in flight, waiting on the slow gateway
    started = time.monotonic()
    analyze_sync()  # pushes too (each mode), from the loop's own thread
    blocked = time.monotonic() - started
    await task
    # It waited for its own push (about one hang), never for the other one as well.
    assert blocked < stand_in.hang * 1.9
    assert len(stand_in.bodies) == 2
    final = stand_in.last_value(
        "codomyrmex_analyses_total", module="m", analysis_type="sync", status="success"
    )
    assert final == 1
    await inst.aclose()


async def test_a_cancelled_push_leaves_the_state_for_the_next_one(stand_in: GatewayStandIn) -> None:
    stand_in.mode = "trickle"
    inst = gateway_inst(stand_in, push_interval=60)
    for _ in range(10):
        inst.record_analysis("m", "t", 0.1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(inst.aflush(), 0.3)
    assert inst.delivery._dirty is True
    assert inst.registry.get_sample_value("codomyrmex_push_failures_total") >= 1
    stand_in.mode = "ok"
    await inst.aclose()
    assert pushed_analyses(stand_in) == 10


def test_an_instrumentation_dropped_while_dirty_still_delivers(
    pushgateway: Pushgateway, job_name: str
) -> None:
    result = run_child(
        f"""
        import gc
        from instrument import Instrumentation

        def batch():
            inst = Instrumentation(pushgateway={pushgateway.url!r}, job={job_name!r}, push_interval=60)

            @inst.monitored_analysis("m", "t")
            def work(i):
                return i

            for i in range(10):
                work(i)

        batch()   # the instrumentation is dropped, never closed, its state not yet pushed
        gc.collect()
        """
    )
    assert result.returncode == 0, result.stderr
    assert pushed_analyses(pushgateway, job=job_name) == 10


def test_credentials_are_cleaned_and_never_echoed(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(
        stand_in,
        bearer_token="tok-from-a-file\n",
        push_mode="off",
    )
    assert inst.push()
    assert stand_in.requests[-1][2]["authorization"] == "Bearer tok-from-a-file"
    inst.close()
    for bad in ({"bearer_token": "zq9\nxv7"}, {"basic_auth": ("user", "zq9\x00xv7")}):
        with pytest.raises(ValueError, match="contains a control character") as info:
            Instrumentation(pushgateway=stand_in.url, **bad)  # type: ignore[arg-type]
        assert "zq9" not in str(info.value) and "xv7" not in str(info.value)
