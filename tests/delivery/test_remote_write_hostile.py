"""Remote write under a hostile review: forked children with a fixed instance, a Retry-After
at exit, secrets in malformed settings, encoding time, UTF-8 names, two writers of one
series, lost staleness markers, ``off`` mode's close, late label clashes, failing
collectors. Every test reads back what the stand-in receiver got, or the registry."""

from __future__ import annotations

import logging
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from instrument import Instrumentation, configure
from instrument.config import from_environment
from instrument.delivery._remote_write import parse_headers
from instrument.delivery._snapshot import Snapshot

from .test_remote_write import STALE_BITS, Receiver, Write, _analyses, _inst

SUCCESS = {"module": "static_analysis", "status": "success"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    stand_in = Receiver()
    yield stand_in
    stand_in.close()


def _instances(writes: list[Write]) -> list[tuple[str, bytes]]:
    """Each write's (instance, raw value bits) of the analyses counter."""
    out = []
    for write in writes:
        for key, (bits, _) in write.values().items():
            labels = dict(key)
            if labels["__name__"] == "codomyrmex_analyses_total" and labels["status"] == "success":
                out.append((labels["instance"], bits))
    return out


# -- 1. a forked child with instance="w-3" ------------------------------------------------------


def test_a_forked_child_with_a_given_instance_never_writes_or_ends_its_parents_series(
    receiver: Receiver,
) -> None:
    inst = _inst(receiver.url, push_mode="coalesce", push_interval=30, instance="w-3")
    _analyses(inst, 1)
    assert inst.push()

    def child() -> None:
        _analyses(inst, 5)  # the finalizer closes it: final values, markers

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0
    seen = _instances(receiver.writes)
    child_instance = f"w-3-{process.pid}"
    assert {name for name, _ in seen} == {"w-3", child_instance}
    # The parent's series saw only the parent's values, and no marker from the child.
    assert [bits for name, bits in seen if name == "w-3"] == [struct.pack("<d", 1.0)]
    assert [bits for name, bits in seen if name == child_instance][-1] == STALE_BITS
    _analyses(inst, 2)
    assert inst.push()
    assert _instances(receiver.writes[-1:]) == [("w-3", struct.pack("<d", 3.0))]
    inst.close()
    assert _instances(receiver.writes[-1:]) == [("w-3", STALE_BITS)]


# -- 2. Retry-After at exit --------------------------------------------------------------------


def test_a_retry_after_beyond_the_exit_budget_still_lets_the_final_counts_out(
    receiver: Receiver,
) -> None:
    receiver.answers = [(429, {"Retry-After": "120"}, "slow down")]
    script = textwrap.dedent(f"""
        import time
        from prometheus_client import CollectorRegistry
        from instrument import Instrumentation
        inst = Instrumentation(registry=CollectorRegistry(), remote_write={receiver.url!r},
                               push_mode="coalesce", push_interval=0.2, job="ra")
        @inst.monitored_analysis("m", "codebase")
        def work():
            pass
        for i in range(6):
            work(); time.sleep(0.3)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    values = [w.value("codomyrmex_analyses_total", status="success") for w in receiver.writes]
    assert values[0] == 1  # the write the 429 refused
    assert 6 in values  # the final counts, written at exit despite the Retry-After
    assert receiver.writes[-1].values() and all(
        bits == STALE_BITS for bits, _ in receiver.writes[-1].values().values()
    )


def test_a_final_write_that_fails_at_close_is_a_warning_saying_counts_were_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = Receiver(default=(503, {}, "down"))
    try:
        inst = _inst(down.url, push_mode="coalesce", push_interval=30, push_timeout=0.3)
        _analyses(inst, 1)
        assert not inst.flush(timeout=0.5)  # the outage's first failure: one warning
        _analyses(inst, 1)
        with caplog.at_level(logging.DEBUG, logger="instrument"):
            caplog.clear()
            inst.delivery.close(timeout=1.0)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("final push" in text and "not delivered" in text for text in warnings)
    finally:
        down.close()


# -- 3. secrets in malformed settings ----------------------------------------------------------

secret = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=10, max_size=20
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("INSTRUMENT_"):
            monkeypatch.delenv(name)
    return monkeypatch


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=secret,
    shape=st.sampled_from(
        [
            "Authorization: Bearer {t}",
            "X-Api-Key {t}=abc",
            "Authorization=Bearer {t},X-A",
            "{t}",
            "X-A=1,x-a={t}",
            "Bad Name=x{t}",
            "Content-Type={t}",
            "X-A={t}\x01",
        ]
    ),
)
def test_no_header_value_appears_in_any_error_from_the_environment(
    clean_env: pytest.MonkeyPatch, token: str, shape: str
) -> None:
    text = shape.format(t=token)
    with pytest.raises(ValueError) as caught:
        parse_headers(text)
    assert token not in str(caught.value)
    clean_env.setenv("INSTRUMENT_REMOTE_WRITE_URL", "http://127.0.0.1:9/api/v1/write")
    clean_env.setenv("INSTRUMENT_REMOTE_WRITE_HEADERS", text)
    with pytest.raises(ValueError) as caught:
        configure()
    assert token not in str(caught.value)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=secret,
    shape=st.sampled_from(
        [
            "https://mimir.example:99999/api/v1/push?api_key={t}",
            "https://mimir.example/api/v1/push?api_key={t} x",
            "ftp://mimir.example/push?api_key={t}",
            "https://mimir.example:0/push?a=1&key={t}",
            "https://user:{t}@mimir.example:0/push",
            "https://mimir.example:0/push?{t}",
            "https://mimir.example:0/push#{t}",
            "https://u:{t}@[::1/push",
        ]
    ),
)
def test_no_query_value_or_password_appears_in_any_url_error(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, token: str, shape: str
) -> None:
    url = shape.format(t=token)
    with pytest.raises(ValueError) as caught:
        Instrumentation(registry=CollectorRegistry(), remote_write=url, push_mode="off")
    assert token not in str(caught.value)
    clean_env.setenv("INSTRUMENT_REMOTE_WRITE_URL", url)
    with pytest.raises(ValueError) as caught:
        from_environment(only={"remote_write"})
    assert token not in str(caught.value)
    assert all(token not in r.getMessage() for r in caplog.records)


# -- 4. the flusher's stretch counts remote write's encoding ------------------------------------


def test_the_encoding_of_a_write_counts_in_the_snapshots_seconds(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    big = Counter("big", "h", ["a", "b"], registry=registry)
    for i in range(40):
        for j in range(50):
            big.labels(f"value-{i}", f"other-{j}").inc()
    inst = _inst(receiver.url, registry=registry)
    target = inst.delivery.remote_write
    assert target is not None
    snapshot = Snapshot(registry, 1, 0.0)
    collected = snapshot.seconds
    started = time.monotonic()
    target.push(snapshot)
    wall = time.monotonic() - started
    encoded = snapshot.seconds - collected
    assert receiver.writes[-1].value("big_total", a="value-3", b="other-4") == 1
    # Encoding 2,000 series is the flusher's work as much as collecting them: it is in the
    # snapshot's seconds (which the stretch reads), the time on the network is not.
    assert 0 < encoded <= wall
    inst.close()


# -- 5. UTF-8 names ------------------------------------------------------------------------------


def test_utf8_names_are_written_as_a_scrape_names_them(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    try:
        dotted = Counter("my.metric", "h", ["lab.el"], registry=registry)
    except ValueError:
        pytest.skip("this prometheus_client refuses UTF-8 names")
    dotted.labels("x").inc()
    scraped = [line for line in generate_latest(registry).decode().splitlines() if "{" in line]
    assert scraped[0].startswith('my_metric_total{lab_el="x"}')
    inst = _inst(receiver.url, registry=registry)
    assert inst.push()
    write = receiver.writes[-1]
    assert write.value("my_metric_total", lab_el="x") == 1
    families = {m["family"] for m in write.metadata}
    assert "my_metric_total" in families and "my.metric_total" not in families
    names = {dict(key)["__name__"] for key in write.values()}
    assert "my.metric_total" not in names
    inst.close()


# -- 6. two writers of one series -----------------------------------------------------------------


def test_two_instrumentations_writing_the_same_series_are_refused(receiver: Receiver) -> None:
    first = _inst(receiver.url)
    with pytest.raises(ValueError, match="own instance= or job="):
        _inst(receiver.url)
    other_job = _inst(receiver.url, job="other-job")  # a series of its own: fine
    own_instance = _inst(receiver.url, instance="w-2")
    first.close()
    again = _inst(receiver.url)  # the closed one writes no more
    for inst in (other_job, own_instance, again):
        inst.close()


def test_a_dropped_instrumentation_is_no_writer(receiver: Receiver) -> None:
    _inst(receiver.url)  # never closed, never referenced
    inst = _inst(receiver.url)
    _analyses(inst, 2)
    assert inst.push()
    assert receiver.writes[-1].value("codomyrmex_analyses_total", **SUCCESS) == 2
    inst.close()


# -- 7. a dropped series' marker survives a failed write -------------------------------------------


@pytest.mark.parametrize("failure", [(400, {}, "bad"), (503, {}, "down")])
def test_a_dropped_series_marker_is_sent_again_until_a_write_lands(
    receiver: Receiver, failure: tuple[int, dict[str, str], str]
) -> None:
    registry = CollectorRegistry()
    busy = Gauge("worker_busy", "h", ["w"], registry=registry)
    busy.labels("a").set(1)
    busy.labels("b").set(1)
    inst = _inst(receiver.url, registry=registry, stale_on_exit=False, push_timeout=0.3)
    assert inst.push()
    busy.remove("b")
    receiver.answers = [failure] * 10 if failure[0] >= 500 else [failure]
    assert not inst.push()
    receiver.answers = []
    assert inst.push()
    landed = receiver.writes[-1]
    assert landed.value("worker_busy", w="a") == 1
    marked = [bits for key, (bits, _) in landed.values().items() if ("w", "b") in key]
    assert marked == [STALE_BITS]
    assert inst.push()
    assert not any(("w", "b") in key for key in receiver.writes[-1].values())  # ended once
    inst.close()


def test_a_dropped_series_that_comes_back_is_not_ended(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    busy = Gauge("worker_busy", "h", ["w"], registry=registry)
    busy.labels("b").set(1)
    inst = _inst(receiver.url, registry=registry, stale_on_exit=False)
    assert inst.push()
    busy.remove("b")
    receiver.answers = [(400, {}, "bad")]
    assert not inst.push()
    busy.labels("b").set(7)
    assert inst.push()
    assert receiver.writes[-1].value("worker_busy", w="b") == 7
    inst.close()


# -- 8. off mode's close ------------------------------------------------------------------------------


def test_off_mode_close_writes_the_final_values_before_the_markers(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_mode="off")
    _analyses(inst, 1)
    assert inst.push()
    _analyses(inst, 4)
    inst.close()
    final, stale = receiver.writes[-2:]
    assert final.value("codomyrmex_analyses_total", **SUCCESS) == 5
    assert inst.registry.get_sample_value("codomyrmex_analyses_total", {
        "module": "static_analysis", "analysis_type": "codebase", "status": "success"}) == 5  # fmt: skip
    assert {bits for bits, _ in stale.values().values()} == {STALE_BITS}


def test_off_mode_close_without_any_push_writes_nothing(receiver: Receiver) -> None:
    inst = _inst(receiver.url, push_mode="off")
    _analyses(inst, 3)
    inst.close()
    assert receiver.writes == []


def test_off_mode_close_whose_final_values_fail_writes_no_marker() -> None:
    flaky = Receiver()
    try:
        inst = _inst(flaky.url, push_mode="off", push_timeout=0.3)
        _analyses(inst, 1)
        assert inst.push()
        flaky.default = (400, {}, "refused")
        _analyses(inst, 1)
        inst.close()
        assert len(flaky.writes) == 2  # the final values, refused; no marker after them
        assert flaky.writes[-1].value("codomyrmex_analyses_total", **SUCCESS) == 2
    finally:
        flaky.close()


# -- 9. a late metric's job/instance -------------------------------------------------------------


def test_a_metric_registered_later_with_job_or_instance_never_replaces_ours(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    inst = _inst(receiver.url, registry=registry, job="realjob", instance="i1")
    late = Counter("late", "h", ["job", "instance"], registry=registry)
    late.labels("userjob", "userinst").inc()
    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert inst.push()
        assert inst.push()
    series = [dict(k) for k in receiver.writes[-1].values() if dict(k)["__name__"] == "late_total"]
    assert series == [{"__name__": "late_total", "instance": "i1", "job": "realjob"}]
    said = [r.getMessage() for r in caplog.records if "'late_total'" in r.getMessage()]
    assert len(said) == 1 and "rename the label" in said[0]
    inst.close()


# -- 12. a failing collector at construction --------------------------------------------------


class _Flaky:
    def collect(self) -> Iterator[object]:
        raise ConnectionError("database unavailable")

    def describe(self) -> list[object]:
        return []


def test_a_collector_that_fails_at_construction_fails_a_push_not_the_constructor(
    receiver: Receiver,
) -> None:
    registry = CollectorRegistry()
    registry.register(_Flaky())  # type: ignore[arg-type]
    inst = _inst(receiver.url, registry=registry)
    assert not inst.push()
    assert inst.registry is registry
    (failures,) = inst.delivery.metrics.push_failures.collect()
    assert [s.value for s in failures.samples if s.name.endswith("_total")] == [1.0]
    inst.close()


# -- 13. duplicate headers in the environment form ----------------------------------------------


@pytest.mark.parametrize("text", ["X-A=1,X-A=2", "X-A=1,x-a=2", "Authorization=a,authorization=b"])
def test_a_header_given_twice_in_the_environment_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_headers(text)
