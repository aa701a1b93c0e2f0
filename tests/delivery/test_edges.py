"""Delivery, exposition and Instrumentation at their edges.

Targets, transports and their failures (against the ``GatewayStandIn``, whose answers a
test switches), sessions closed from outside their loop, the worker-process rule, closing,
exit and fork; then the pull-mode helpers, the SIGTERM handler, multiprocess collection,
argument validation, disabled instrumentation and the default instrumentation.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector

import instrument
from instrument import Instrumentation, get_instrumentation
from instrument import defaults as defaults_module
from instrument._urls import mask_url
from instrument.delivery import PushFailed, PushTarget
from instrument.delivery import _flusher as flusher_module
from instrument.delivery import _lifecycle as lifecycle
from instrument.delivery import _textfile as textfile_module

from ..servers import GatewayStandIn, Pushgateway
from ..support import explode, gateway_inst, local, pushed_analyses

ANALYSIS = {"module": "m", "analysis_type": "t"}


def methods(server: GatewayStandIn) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in server.requests]


# -- PushTarget and mask_url --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "error", "message"),
    [
        (9091, {}, TypeError, "must be a string such as http://127.0.0.1:9091, got int"),
        ("http://gw.example:99999", {}, ValueError, "has an invalid port"),
        ("http://gw.example:port", {}, ValueError, "has an invalid port"),
        ("gw.example", {"method": "get"}, ValueError, "push_method must be 'put' or 'post'"),
        ("gw.example", {"job": ""}, ValueError, "job must be a non-empty string"),
        ("gw.example", {"job": None}, ValueError, "job must be a non-empty string"),
        ("ftp://gw.example", {}, ValueError, "URL; use one such as http://127.0.0.1:9091"),
    ],
)
def test_push_target_rejects_what_cannot_work(
    url: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    settings = {"job": "j", "grouping_key": {}, **options}
    with pytest.raises(error, match=message):
        PushTarget(url, **settings)


@pytest.mark.parametrize(
    "url", ["ftp://admin:s3cret@gw.example", "http://admin:s3cret@gw.example:99999"]
)
def test_push_target_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        PushTarget(url, job="j", grouping_key={})
    assert "s3cret" not in str(info.value)
    assert "***@gw.example" in str(info.value)


def test_push_method_and_job_are_checked_by_instrumentation_too() -> None:
    with pytest.raises(ValueError, match="push_method must be 'put' or 'post', got 'patch'"):
        Instrumentation(pushgateway="http://gw.example", push_method="patch")
    with pytest.raises(ValueError, match="job must be a non-empty string"):
        Instrumentation(pushgateway="http://gw.example", job="")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://[::1]:9091", "http://[::1]:9091"),
        ("[::1]:9091", "http://[::1]:9091"),
        ("https://[2001:db8::7]/base/", "https://[2001:db8::7]/base"),
        ("http://alice:pa55@[fe80::1]:9091", "http://[fe80::1]:9091"),
    ],
)
def test_ipv6_hosts_keep_their_brackets(given: str, url: str) -> None:
    target = PushTarget(given, job="j", grouping_key={"team": "a"})
    assert target.url == url
    assert target.group_url == f"{url}/metrics/job/j/team/a"
    assert "pa55" not in repr(target)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("", ""),
        ("gw.example:9091", "gw.example:9091"),
        ("admin:s3cret@gw.example:9091/x", "***@gw.example:9091/x"),
        # Up to the last "@" is masked: a password may hold a "/" (parsers see a path).
        ("http://gw.example/releases@v2", "http://***@v2"),
        ("https://a:p@ss@gw.example/x", "https://***@gw.example/x"),
        ("http://token@gw.example", "http://***@gw.example"),
        ("http://gw.example:9091", "http://gw.example:9091"),
    ],
    ids=[
        "empty",
        "no-scheme-no-credentials",
        "no-scheme",
        "at-sign-in-path-only",
        "at-sign-in-password",
        "user-only",
        "nothing-to-hide",
    ],
)
def test_mask_url_edges(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("interval", [0, -1.0])
def test_push_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="push_interval must be a positive number of seconds"):
        Instrumentation(pushgateway="http://gw.example", push_interval=interval)


# -- targets and transports ------------------------------------------------------------------------


async def test_without_a_target_push_fails_and_flush_has_nothing_to_wait_for(
    inst: Instrumentation,
) -> None:
    inst.record_analysis("m", "t", 0.1)
    assert inst.push_mode == "off"
    assert inst.push() is False
    assert await inst.push_metrics() is False
    assert inst.flush() is True
    assert await inst.aflush() is True
    assert inst.delete_from_gateway() is False
    assert local(inst, "pushes_total") == 0  # not even an attempt was counted


async def test_off_mode_flush_delivers_nothing_but_push_does(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    inst.record_analysis("m", "t", 0.1)
    assert inst.flush() is True
    assert await inst.aflush() is True
    assert stand_in.requests == []  # off: only an explicit push delivers
    assert inst.push() is True
    assert pushed_analyses(stand_in) == 1
    await inst.aclose()


async def test_textfile_and_gateway_receive_the_same_state_on_both_transports(
    stand_in: GatewayStandIn, tmp_path: Path
) -> None:
    path = tmp_path / "metrics.prom"
    inst = gateway_inst(stand_in, textfile=str(path), push_mode="off")
    line = 'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"}'
    inst.record_analysis("m", "t", 0.1)
    assert inst.push() is True
    assert pushed_analyses(stand_in) == 1
    assert f"{line} 1.0" in path.read_text()
    inst.record_analysis("m", "t", 0.1)
    assert await inst.push_metrics() is True
    assert pushed_analyses(stand_in) == 2
    assert f"{line} 2.0" in path.read_text()
    await inst.aclose()


async def test_textfile_only_delivery_over_the_async_path(tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    inst = Instrumentation(registry=CollectorRegistry(), textfile=str(path), push_mode="off")
    inst.record_quality_score("p", "m", 71)
    assert await inst.push_metrics() is True
    assert 'codomyrmex_code_quality_score{module="m",project="p"} 71.0' in path.read_text()
    await inst.aclose()


class StallingDisk:
    """Writes the real file, but only once the event loop has run a few more beats (or a
    second passed): a disk that stalls, which a write on the loop's thread would stall
    the loop with. ``loop_ran`` says, per write, whether the loop went on meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.beats = 0
        self.loop_ran: list[bool] = []
        real = textfile_module.write_to_textfile

        def write(path: str, registry: Collector) -> None:
            start, deadline = self.beats, time.monotonic() + 1.0
            while self.beats < start + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.loop_ran.append(self.beats >= start + 3)
            real(path, registry)

        monkeypatch.setattr(textfile_module, "write_to_textfile", write)

    async def heartbeat(self) -> None:
        while True:
            self.beats += 1
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["aflush", "aclose", "each-mode call"])
async def test_the_textfile_is_written_while_the_event_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = tmp_path / "metrics.prom"
    mode = "each" if how == "each-mode call" else "coalesce"
    inst = Instrumentation(
        registry=CollectorRegistry(), textfile=str(path), push_mode=mode, push_interval=60
    )

    @inst.monitored_analysis("m", "t")
    async def work() -> str:
        return "done"

    if mode == "coalesce":
        inst.record_analysis("m", "t", 0.1)
        assert inst.flush(timeout=5)  # the flusher's next slot is a minute away now
    disk = StallingDisk(monkeypatch)
    heart = asyncio.create_task(disk.heartbeat())
    await asyncio.sleep(0)
    try:
        if how == "each-mode call":
            assert await work() == "done"
        else:
            inst.record_analysis("m", "t", 0.1)
            if how == "aflush":
                assert await inst.aflush() is True
            else:
                await inst.aclose()
    finally:
        heart.cancel()
    assert disk.loop_ran and all(disk.loop_ran)
    expected = 1 if how == "each-mode call" else 2
    line = 'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"}'
    assert f"{line} {expected:.1f}" in path.read_text()
    await inst.aclose()


def test_textfile_failure_is_reported_with_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone" / "metrics.prom"
    path.parent.mkdir()  # a missing directory is refused at configure time: it goes later
    inst = Instrumentation(registry=CollectorRegistry(), textfile=str(path), push_mode="off")
    path.parent.rmdir()
    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert inst.push() is False
    assert f"push to {path} failed" in caplog.text
    assert local(inst, "push_failures_total") == 1
    inst.close()


@pytest.mark.integration
def test_textfile_and_real_pushgateway_together(
    pushgateway: Pushgateway, job_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "metrics.prom"
    inst = gateway_inst(pushgateway, job=job_name, textfile=str(path), push_interval=60)

    @inst.monitored_analysis("m", "t")
    def work(i: int) -> int:
        return i

    assert [work(i) for i in range(4)] == [0, 1, 2, 3]
    assert inst.push_mode == "coalesce"
    assert inst.flush(timeout=10)
    assert (
        pushgateway.value("codomyrmex_analyses_total", **ANALYSIS, status="success", job=job_name)
        == 4
    )
    assert 'codomyrmex_analyses_total{analysis_type="t",module="m",status="success"} 4.0' in (
        path.read_text()
    )
    inst.close()


@pytest.mark.parametrize("method", ["put", "post"])
async def test_push_method_is_used_by_both_transports(
    stand_in: GatewayStandIn, method: str
) -> None:
    inst = gateway_inst(stand_in, push_method=method, push_mode="off")
    assert inst.push() is True
    assert await inst.push_metrics() is True
    expected = (method.upper(), "/metrics/job/codomyrmex")
    assert methods(stand_in) == [expected, expected]
    content_type = stand_in.requests[-1][2]["content-type"]
    assert content_type.startswith("text/plain")
    await inst.aclose()


async def test_http_error_answers_fail_both_transports_and_recover(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.mode = "error"
    inst = gateway_inst(stand_in, push_mode="off")
    inst.record_analysis("m", "t", 0.1)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        assert inst.push() is False
        assert await inst.push_metrics() is False
        assert local(inst, "push_failures_total") == 2
        assert local(inst, "pushes_total") == 2
        assert local(inst, "last_push_success_timestamp_seconds") == 0
        stand_in.mode = "ok"
        assert await inst.push_metrics() is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0].getMessage()
    assert any("failed again (HTTP 500" in r.getMessage() for r in caplog.records)
    assert any("recovered after 2 failed attempts" in r.getMessage() for r in caplog.records)
    # The state that failed twice arrives whole with the first push that works.
    assert pushed_analyses(stand_in) == 1
    assert stand_in.last_value("codomyrmex_push_failures_total") == 2
    await inst.aclose()


async def test_each_mode_in_async_code_pushes_before_returning_and_survives_errors(
    stand_in: GatewayStandIn,
) -> None:
    inst = gateway_inst(stand_in, push_mode="each")

    @inst.monitored_analysis("m", "t")
    async def analyze(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    for i in range(3):
        assert await analyze(i) == 2 * i
        assert pushed_analyses(stand_in) == i + 1  # already at the gateway
    stand_in.mode = "error"
    assert await analyze(5) == 10  # a failed push never fails the call
    assert local(inst, "analyses_total", **ANALYSIS, status="success") == 4
    assert local(inst, "push_failures_total") == 1
    await inst.aclose()


async def test_aflush_in_a_pushing_mode_delivers_over_aiohttp(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_interval=60)

    @inst.monitored_analysis("m", "t")
    async def work() -> str:
        return "done"

    assert inst.flush(timeout=5)  # the flusher's next slot is a minute away now
    for _ in range(3):
        assert await work() == "done"
    assert await inst.aflush() is True
    assert pushed_analyses(stand_in) == 3
    await inst.aclose()


async def test_a_registry_that_cannot_be_collected_is_a_failed_push_never_raised(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # Was: logged as an "unexpected error" with a traceback on every push. A collect that
    # fails is a failed attempt like any other: counted, logged once per outage, retried.
    inst = gateway_inst(stand_in, push_mode="off")
    inst.delivery._collect = explode  # the registry cannot be collected
    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert inst.push() is False
        assert await inst.push_metrics() is False
    records = [r for r in caplog.records if "collecting the metrics failed" in r.getMessage()]
    assert len(records) == 1
    assert "Boom: injected" in records[0].getMessage()
    assert local(inst, "push_failures_total") == 2
    assert stand_in.requests == []
    await inst.aclose()


def test_flush_reports_a_failed_delivery(stand_in: GatewayStandIn) -> None:
    stand_in.mode = "error"
    inst = gateway_inst(stand_in, push_interval=60)
    assert inst.flush(timeout=5) is False
    stand_in.mode = "ok"
    assert inst.flush(timeout=5) is True
    inst.close()


def test_delete_reports_failure_and_success(
    stand_in: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    inst = gateway_inst(stand_in, push_mode="off", grouping_key={"team": "a"})
    stand_in.mode = "error"
    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert inst.delete_from_gateway() is False
    assert "deleting http://127.0.0.1:" in caplog.text and "HTTP 500" in caplog.text
    stand_in.mode = "ok"
    assert inst.delete_from_gateway() is True
    assert methods(stand_in) == [("DELETE", "/metrics/job/codomyrmex/team/a")] * 2
    inst.close()


@pytest.mark.parametrize("operation", ["push", "push_async", "delete"])
async def test_a_failing_target_raises_push_failed_which_delivery_exports(
    stand_in: GatewayStandIn, operation: str
) -> None:
    import aiohttp

    token = "tk-3e1f0a9c"
    stand_in.answer(503, "Service Unavailable", body="down for {auth}")
    target = PushTarget(stand_in.url, job="j", grouping_key={"w": "1"}, bearer_token=token)
    registry = CollectorRegistry()
    Counter("work_done", "work", registry=registry).inc()
    with pytest.raises(PushFailed) as failed:
        if operation == "push":
            await asyncio.to_thread(target.push, registry)
        elif operation == "push_async":
            async with aiohttp.ClientSession() as session:
                await target.push_async(session, registry)
        else:
            await asyncio.to_thread(target.delete)
    assert str(failed.value) == "HTTP 503 Service Unavailable: down for ***"
    assert token not in repr(failed.value)
    assert methods(stand_in) == [
        ("DELETE" if operation == "delete" else "PUT", "/metrics/job/j/w/1")
    ]


# -- closing -------------------------------------------------------------------------------------


def test_close_delivers_the_final_state_once_then_deletes_and_is_idempotent(
    stand_in: GatewayStandIn,
) -> None:
    inst = gateway_inst(stand_in, push_interval=60, delete_on_exit=True)

    @inst.monitored_analysis("m", "t")
    def work() -> str:
        return "done"

    work()
    assert inst.flush(timeout=5)  # the flusher's next slot is a minute away now
    work()
    work()
    assert inst.delivery.mode == "coalesce" and not inst.delivery._closed
    inst.close()
    assert methods(stand_in)[-2:] == [
        ("PUT", "/metrics/job/codomyrmex"),
        ("DELETE", "/metrics/job/codomyrmex"),
    ]
    assert pushed_analyses(stand_in) == 3  # the final state, delivered by close()
    seen = len(stand_in.requests)
    inst.close()
    assert len(stand_in.requests) == seen
    assert inst.delivery.mode == "off" or inst.delivery._closed or inst.delivery._is_worker()
    # Calls after close still record, but start no flusher and push nothing.
    assert work() == "done"
    assert local(inst, "analyses_total", **ANALYSIS, status="success") == 4
    assert inst.delivery._thread is None
    assert len(stand_in.requests) == seen


async def test_aclose_stops_a_running_flusher_delivers_and_deletes(
    stand_in: GatewayStandIn,
) -> None:
    inst = gateway_inst(stand_in, push_interval=60, delete_on_exit=True)

    @inst.monitored_analysis("m", "t")
    async def work() -> str:
        return "done"

    await work()
    assert inst.flush(timeout=5)
    flusher = inst.delivery._thread
    assert flusher is not None and flusher.is_alive()
    await work()
    await work()  # dirty, waiting for the flusher's next slot
    await inst.aclose()
    assert not flusher.is_alive()
    assert methods(stand_in)[-2:] == [
        ("PUT", "/metrics/job/codomyrmex"),
        ("DELETE", "/metrics/job/codomyrmex"),
    ]
    assert pushed_analyses(stand_in) == 3
    assert inst.delivery._sessions == {}
    seen = len(stand_in.requests)
    await inst.aclose()
    inst.close()
    assert len(stand_in.requests) == seen


def test_session_of_a_closed_loop_is_detached(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(inst.push_metrics())
        session = inst.delivery._sessions[id(loop)].session
    finally:
        loop.close()  # without shutting down its async generators: the session stays open
    assert not session.closed
    inst.close()
    assert session.closed
    assert inst.delivery._sessions == {}


def test_session_of_a_loop_that_is_not_running_is_closed_in_it(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(inst.push_metrics())
        session = inst.delivery._sessions[id(loop)].session
        inst.close()
        assert session.closed
        assert inst.delivery._sessions == {}
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.mark.parametrize("closer", ["close", "aclose from another loop"])
def test_session_of_a_loop_running_in_another_thread(stand_in: GatewayStandIn, closer: str) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(inst.push_metrics(), loop).result(10)
        session = inst.delivery._sessions[id(loop)].session
        if closer == "close":
            inst.close()
        else:
            asyncio.run(inst.aclose())  # this loop has no session of its own
        assert session.closed
        assert inst.delivery._sessions == {}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_session_of_an_idle_loop_closed_from_inside_another_loop(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    idle = asyncio.new_event_loop()
    try:
        assert idle.run_until_complete(inst.push_metrics())
        session = inst.delivery._sessions[id(idle)].session
        asyncio.run(inst.aclose())  # this thread runs a loop now, so the idle one cannot run here
        assert session.closed
        assert inst.delivery._sessions == {}
    finally:
        idle.run_until_complete(idle.shutdown_asyncgens())
        idle.close()


def test_each_of_many_event_loops_gets_its_own_session_closed_with_it(
    stand_in: GatewayStandIn,
) -> None:
    inst = gateway_inst(stand_in, push_mode="each")

    @inst.monitored_analysis("m", "t")
    async def work() -> None:
        await asyncio.sleep(0)

    sessions: list[Any] = []

    async def one_run() -> None:
        await work()
        await work()
        sessions.append(inst.delivery._sessions[id(asyncio.get_running_loop())].session)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            asyncio.run(one_run())  # no aclose(): the loop's end closes its session
        gc.collect()
    assert len({id(session) for session in sessions}) == 12
    assert all(session.closed for session in sessions)
    assert inst.delivery._sessions == {}
    assert not [w for w in caught if "Unclosed" in str(w.message)]
    assert pushed_analyses(stand_in) == 24
    assert local(inst, "pushes_total") == 24 and local(inst, "push_failures_total") == 0
    inst.close()


async def test_sync_close_inside_the_sessions_own_loop(stand_in: GatewayStandIn) -> None:
    inst = gateway_inst(stand_in, push_mode="off")
    assert await inst.push_metrics()
    session = inst.delivery._sessions[id(asyncio.get_running_loop())].session
    inst.close()  # cannot await here: the close is scheduled on this loop
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*pending)
    assert session.closed
    assert inst.delivery._sessions == {}


# -- processes: workers, exit, fork --------------------------------------------------------------


def test_a_worker_process_records_but_never_pushes(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flusher_module, "multiprocess_enabled", lambda: True)
    inst = gateway_inst(stand_in, push_mode="each", delete_on_exit=True)

    @inst.monitored_analysis("m", "t")
    def work() -> str:
        return "sync"

    @inst.monitored_analysis("m", "t")
    async def awork() -> str:
        return "async"

    owner = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: owner + 1)  # now a forked worker
    assert inst.delivery._is_worker()
    assert inst.delivery.mode == "off" or inst.delivery._closed or inst.delivery._is_worker()
    assert work() == "sync"
    assert asyncio.run(awork()) == "async"
    assert local(inst, "analyses_total", **ANALYSIS, status="success") == 2
    assert inst.push() is False
    assert inst.flush() is True  # nothing a worker could wait for
    assert asyncio.run(inst.push_metrics()) is False
    assert asyncio.run(inst.aflush()) is True
    inst.close()
    assert stand_in.requests == []  # not even the delete at exit
    assert local(inst, "pushes_total") == 0


def test_multiprocess_owner_pushes_every_interval_without_calls_of_its_own(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flusher_module, "multiprocess_enabled", lambda: True)
    inst = gateway_inst(stand_in, push_interval=0.05)
    # Workers' records are invisible to the owner's dirty flag: it pushes on its own.
    deadline = time.monotonic() + 10
    while len(stand_in.bodies) < 2:
        assert time.monotonic() < deadline, "the owner never pushed on its own"
        time.sleep(0.01)
    assert local(inst, "analyses_total", **ANALYSIS, status="success") is None
    inst.close()
    assert inst.delivery._thread is None


def test_at_exit_every_live_delivery_is_closed_even_if_one_fails(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = gateway_inst(stand_in, push_mode="off", delete_on_exit=True)
    healthy = gateway_inst(
        stand_in, push_mode="off", delete_on_exit=True, grouping_key={"w": "healthy"}
    )
    monkeypatch.setattr(broken.delivery, "close", explode)
    monkeypatch.setattr(lifecycle, "_live", weakref.WeakSet([broken.delivery, healthy.delivery]))
    with caplog.at_level(logging.ERROR, logger="instrument"):
        lifecycle._close_all_at_exit()
    assert "final flush at exit failed" in caplog.text
    assert methods(stand_in) == [("DELETE", "/metrics/job/codomyrmex/w/healthy")]
    assert healthy.delivery._closed


@pytest.mark.parametrize("notice", ["at-fork hook", "first call in the child"])
def test_a_forked_child_delivers_under_its_own_instance(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch, notice: str
) -> None:
    inst = gateway_inst(stand_in, instance=True, push_interval=60)
    parent = os.getpid()
    assert inst.delivery.gateway is not None
    assert inst.delivery.gateway.grouping_key["instance"].endswith(f"-{parent}")
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # now the child
    if notice == "at-fork hook":
        monkeypatch.setattr(lifecycle, "_live", weakref.WeakSet([inst.delivery]))
        lifecycle._after_fork_in_child()
    else:  # forked without Python's hooks: the first recorded call notices
        inst.record_analysis("m", "t", 0.1)
        assert inst.delivery._thread is not None
    assert inst.flush(timeout=5)
    assert stand_in.requests[-1][1].endswith(f"-{parent + 1}")
    inst.close()


# -- exposition ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [-1, 65536, "9090", 9090.0])
def test_start_http_server_rejects_bad_ports(inst: Instrumentation, port: Any) -> None:
    with pytest.raises(ValueError, match="port must be an integer from 0 to 65535"):
        inst.start_http_server(port)


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    original = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, original if original is not None else signal.SIG_DFL)


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_handler_runs_the_previous_handler_then_exits_143(inst: Instrumentation) -> None:
    calls: list[tuple[int, Any]] = []

    def previous(signum: int, frame: Any) -> None:
        calls.append((signum, frame))

    signal.signal(signal.SIGTERM, previous)
    inst.install_sigterm_handler()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler) and handler is not previous
    frame = object()
    with pytest.raises(SystemExit) as info:
        handler(signal.SIGTERM, frame)  # type: ignore[arg-type]
    assert info.value.code == 143
    assert calls == [(signal.SIGTERM, frame)]


@pytest.mark.usefixtures("sigterm_restored")
def test_sigterm_handler_over_the_default_and_an_ignored_signal(inst: Instrumentation) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    inst.install_sigterm_handler()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(SystemExit) as info:
        handler(signal.SIGTERM, None)
    assert info.value.code == 143

    # A process that chose to ignore SIGTERM keeps ignoring it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inst.install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


# -- Instrumentation ------------------------------------------------------------------------------


def test_multiprocess_mode_collects_what_worker_files_hold(
    stand_in: GatewayStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # The Instrumentation switches prometheus_client to multiprocess values (the variable is
    # set after its import): switched back for the tests after this one.
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    # A worker's counter file, as prometheus_client writes it in a worker process.
    name = "codomyrmex_analyses_total"
    labels = {**ANALYSIS, "status": "success"}
    worker_file = MmapedDict(str(tmp_path / "counter_4242.db"))  # type: ignore[no-untyped-call]
    key = mmap_key(name, name, list(labels), list(labels.values()), "help")
    worker_file.write_value(key, 7.0, 0)  # type: ignore[no-untyped-call]
    worker_file.close()  # type: ignore[no-untyped-call]

    inst = gateway_inst(stand_in, push_mode="off")
    collected = inst.collect_registry()
    assert collected is not inst.registry
    assert inst.collect_registry() is collected  # built once
    assert collected.get_sample_value(name, labels) == 7
    assert inst.registry.get_sample_value(name, labels) is None
    assert inst.push() is True  # what is pushed is the collected state
    assert pushed_analyses(stand_in) == 7
    inst.close()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda i: i.record_quality_score("", "m", 1), TypeError, "project must be"),
        (lambda i: i.record_quality_score("p", None, 1), TypeError, "module must be"),
        (lambda i: i.record_quality_score("p", "m", "high"), TypeError, "score must be a number"),
        (lambda i: i.record_analysis("m", "", 1.0), TypeError, "analysis_type must be"),
        (lambda i: i.record_analysis("m", "t", "1s"), TypeError, "duration must be a number"),
        (lambda i: i.record_analysis("m", "t", float("nan")), ValueError, "must not be NaN"),
        (lambda i: i.update_active_jobs("", 1), TypeError, "job_type must be"),
        (lambda i: i.update_active_jobs("j", True), TypeError, "count must be a number"),
        (lambda i: i.record_ai_api_call("", "gpt"), TypeError, "provider must be"),
        (lambda i: i.record_ai_api_call("openai", ""), TypeError, "model must be"),
        (
            lambda i: i.record_ai_api_call("openai", "gpt", input_tokens=5, output_tokens=-1),
            ValueError,
            "output_tokens must not be negative",
        ),
        (
            lambda i: i.record_ai_api_call("openai", "gpt", input_tokens="5"),
            TypeError,
            "input_tokens must be a number",
        ),
    ],
)
def test_record_methods_reject_bad_arguments_and_record_nothing(
    inst: Instrumentation, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(inst)
    # Nothing was half recorded: no labelled series exists.
    for family in inst.registry.collect():
        assert all(not sample.labels for sample in family.samples), family.name


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_models": 0}, ValueError, "max_models must be a positive integer"),
        ({"max_models": "5"}, ValueError, "max_models must be a positive integer"),
        ({"grouping_key": {"team": 5}}, TypeError, r"grouping_key\['team'\] must be a string"),
        ({"grouping_key": {"": "x"}}, TypeError, "grouping_key label must be a non-empty"),
    ],
)
def test_instrumentation_rejects_bad_settings(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Instrumentation(registry=CollectorRegistry(), **kwargs)


def test_disabled_instrumentation_validates_but_records_nothing() -> None:
    inst = Instrumentation(registry=CollectorRegistry(), enabled=False)
    assert inst.push_mode == "off"
    assert "enabled=False" in repr(inst)
    inst.record_quality_score("p", "m", 1)
    inst.record_analysis("m", "t", 1.0)
    inst.record_ai_api_call("openai", "gpt", input_tokens=3)
    with pytest.warns(RuntimeWarning, match="sets the gauge outright"):
        inst.update_active_jobs("j", 2)
    with pytest.raises(TypeError, match="duration must be a number"):
        inst.record_analysis("m", "t", "slow")  # type: ignore[arg-type]

    @inst.monitored_analysis("m", "t")
    def work(x: int) -> int:
        return x + 1

    assert [work(1), work(2)] == [2, 3]
    with inst.monitored_analysis("m", "t") as job:
        job.record_quality(50)
    for family in inst.registry.collect():
        assert all(not sample.labels for sample in family.samples), family.name
    inst.close()


def test_default_instrumentation_is_built_once_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(defaults_module, "_default", None)  # restored after the test
    monkeypatch.setenv("INSTRUMENT_NAMESPACE", "fromenv")
    monkeypatch.setenv("INSTRUMENT_JOB", "envjob")
    barrier = threading.Barrier(8)
    found: list[Instrumentation] = []

    def first_use() -> None:
        barrier.wait(10)
        found.append(get_instrumentation())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    default = found[0]
    assert len(found) == 8 and all(inst is default for inst in found)
    assert get_instrumentation() is default
    assert (default.namespace, default.job, default.push_mode) == ("fromenv", "envjob", "off")
    instrument.record_quality_score("p", "m", 64)
    assert (
        default.registry.get_sample_value(
            "fromenv_code_quality_score", {"project": "p", "module": "m"}
        )
        == 64
    )
    default.close()
