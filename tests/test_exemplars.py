"""Exemplars (issue 16): the analysis and AI call durations, the time to first token and the
token counts link each observation to the trace (or run) it came from, on OpenMetrics pull
and in remote write; the Pushgateway and multiprocess mode carry none and keep working.

What a test reads is what a user's Prometheus reads: the OpenMetrics exposition (parsed by
prometheus_client's own parser), a remote-write request decoded independently, and a real
Prometheus with exemplar storage (``/api/v1/query_exemplars``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import struct
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from instrument import Instrumentation, run_id
from instrument._tracing import MAX_RUN_ID

from .delivery.test_remote_write import Receiver
from .servers import Prometheus, Pushgateway, free_port, http
from .support import FakeClock, run_script, tracer_provider

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CHAT = {
    "model": "gpt-4o",
    "choices": [{"finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5},
}


@pytest.fixture
def exporter() -> Iterator[Any]:
    with tracer_provider() as found:
        yield found


def exemplars(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    """Every sample's exemplar in an OpenMetrics exposition, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.exemplar is not None:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.exemplar
    return found


def exposed(inst: Instrumentation) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    return exemplars(generate_latest(inst.collect_registry()).decode())


def ids(span: Any) -> dict[str, str]:
    context = span.context if hasattr(span, "context") else span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


# -- which observations carry which exemplar ---------------------------------------------------


def test_an_analysis_duration_links_to_its_span_on_the_bucket_it_fell_in(
    exporter: Any, inst: Instrumentation, clock: FakeClock
) -> None:
    @inst.monitored_analysis("static_analysis", "codebase")
    def analyze() -> None:
        clock.advance(0.3)

    analyze()
    (span,) = exporter.get_finished_spans()
    found = exposed(inst)
    labels = {"module": "static_analysis", "analysis_type": "codebase"}
    bucket = key("codomyrmex_analysis_duration_seconds_bucket", **labels, le="0.5")
    assert list(found) == [bucket]  # only the bucket it fell in
    assert found[bucket].labels == ids(span)
    assert found[bucket].value == pytest.approx(0.3)
    assert abs(float(found[bucket].timestamp) - time.time()) < 60


def test_an_ai_calls_duration_first_token_and_tokens_link_to_its_span(
    exporter: Any, inst: Instrumentation, clock: FakeClock
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def stream() -> Iterator[dict[str, Any]]:
        clock.advance(0.05)
        yield {"choices": [{"delta": {"content": "hi"}}]}
        clock.advance(0.5)
        yield {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}}

    list(stream())
    (span,) = exporter.get_finished_spans()
    found = exposed(inst)
    model = {"provider": "openai", "model": "gpt-4o"}
    expected = {
        key("codomyrmex_ai_call_duration_seconds_bucket", **model, le="0.64"): 0.55,
        key("codomyrmex_ai_time_to_first_token_seconds_bucket", **model, le="0.08"): 0.05,
        key("codomyrmex_ai_tokens_used_total", **model, token_type="input"): 12,
        key("codomyrmex_ai_tokens_used_total", **model, token_type="output"): 5,
    }
    assert set(found) == set(expected)
    for where, value in expected.items():
        assert found[where].labels == ids(span), where
        assert found[where].value == pytest.approx(value), where


def test_without_its_own_span_an_observation_links_to_the_callers(exporter: Any) -> None:
    inst = Instrumentation(tracing=False)

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> dict[str, Any]:
        return CHAT

    with trace.get_tracer("app").start_as_current_span("request") as caller:
        ask()
    found = exposed(inst)
    tokens = key("codomyrmex_ai_tokens_used_total", provider="openai", model="gpt-4o",
                 token_type="input")  # fmt: skip
    assert found[tokens].labels == ids(caller)
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_without_a_span_the_run_id_is_the_exemplar_and_nests(inst: Instrumentation) -> None:
    @inst.monitored_analysis("batch", "nightly")
    def step(name: str) -> None:
        pass

    @inst.monitored_analysis("batch", "other")
    def other() -> None:
        pass

    with run_id("run-1"):
        with run_id("run-1.inner"):
            step("a")
        step("b")  # the outer one again: it was put back
    other()  # outside any run: nothing to link to
    found = exposed(inst)
    assert [e.labels for e in found.values()] == [{"run_id": "run-1"}]
    assert "# {" not in generate_latest(inst.collect_registry()).decode().split("other")[-1]


def test_a_span_wins_over_the_run_id(exporter: Any, inst: Instrumentation) -> None:
    @inst.monitored_analysis("batch", "nightly")
    def step() -> None:
        pass

    with run_id("run-2"):
        step()
    (span,) = exporter.get_finished_spans()
    assert [e.labels for e in exposed(inst).values()] == [ids(span)]


def test_a_run_id_an_exemplar_cannot_carry_is_refused_on_entry() -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        run_id("").__enter__()
    with pytest.raises(TypeError, match="non-empty string"):
        run_id(7).__enter__()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"at most {MAX_RUN_ID}.*shorter id"):
        run_id("x" * (MAX_RUN_ID + 1)).__enter__()
    with pytest.raises(ValueError, match="UTF-8"):
        run_id("bad\udc80").__enter__()
    # NUL: Prometheus refuses the whole scrape with one in an exemplar's label.
    for bad in ('say "hi"', "back\\slash", "two\nlines", "cr\r", "nul\x00x"):
        with pytest.raises(ValueError, match="quote, backslash, line break or NUL"):
            run_id(bad).__enter__()


@settings(max_examples=50)
@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"],
                             exclude_characters='"\\\n\r\x00'),
               min_size=1, max_size=MAX_RUN_ID))  # fmt: skip
def test_any_run_id_that_fits_comes_back_from_the_exposition(value: str) -> None:
    inst = Instrumentation(registry=CollectorRegistry())

    @inst.monitored_analysis("m", "t")
    def job() -> None:
        pass

    with run_id(value):
        job()
    text = generate_latest(inst.collect_registry()).decode()
    (line,) = [line for line in text.split("\n") if " # {" in line]  # not splitlines: \x85
    assert line.split(" # ", 1)[1].startswith(f'{{run_id="{value}"}} ')
    (found,) = exposed(inst).values()
    assert found.labels == {"run_id": value}


def test_a_run_id_block_left_in_another_task_raises_nothing_and_ends_there(
    inst: Instrumentation,
) -> None:
    """The context of a generator's block may change between enter and exit: the task
    that leaves it (its context copied inside the block) no longer carries the run."""

    @inst.monitored_analysis("m", "t")
    def job() -> None:
        pass

    def steps() -> Iterator[int]:
        with run_id("moved"):
            yield 1
        job()  # after the block, in the task that left it

    gen = steps()

    async def elsewhere() -> None:
        with pytest.raises(StopIteration):
            next(gen)

    def enter_here_leave_there() -> None:
        next(gen)
        asyncio.run(elsewhere())  # its task's context is a copy of this one, in the block

    # In a context of its own: the one that entered the block keeps the run (it never
    # left it there), which must not leak into the tests after this one.
    contextvars.copy_context().run(enter_here_leave_there)
    assert exposed(inst) == {}
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}
        )
        == 1
    )


# -- where exemplars go --------------------------------------------------------------------


def _traced_calls(inst: Instrumentation) -> None:
    @inst.monitored_analysis("pull", "scan")
    def scan() -> None:
        pass

    scan()


def _get(url: str, accept: str | None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={} if accept is None else {"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_start_http_server_negotiates_openmetrics_with_exemplars(
    exporter: Any, inst: Instrumentation
) -> None:
    _traced_calls(inst)
    (span,) = exporter.get_finished_spans()
    server = inst.start_http_server(0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        kind, body = _get(url, OPENMETRICS)
        assert kind.startswith(CONTENT_TYPE_LATEST.split(";")[0])
        assert [e.labels for e in exemplars(body).values()] == [ids(span)]
        kind, body = _get(url, None)  # the text format: no exemplars, nothing breaks
        assert kind.startswith("text/plain")
        assert "trace_id" not in body and 'module="pull"' in body
    finally:
        server.shutdown()


def test_the_aiohttp_handler_and_the_asgi_app_negotiate_too(
    exporter: Any, inst: Instrumentation
) -> None:
    from aiohttp import ClientSession, web

    _traced_calls(inst)
    (span,) = exporter.get_finished_spans()

    async def main() -> list[tuple[str, str]]:
        app = web.Application()
        app.router.add_get("/metrics", inst.aiohttp_handler())
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        out = []
        try:
            async with ClientSession() as session:
                for accept in (OPENMETRICS, "text/plain"):
                    async with session.get(
                        f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept}
                    ) as response:
                        out.append((response.headers["Content-Type"], await response.text()))
        finally:
            await runner.cleanup()
        return out

    (om_type, om_body), (text_type, text_body) = asyncio.run(main())
    assert om_type.startswith("application/openmetrics-text")
    assert [e.labels for e in exemplars(om_body).values()] == [ids(span)]
    assert text_type.startswith("text/plain") and "trace_id" not in text_body

    async def asgi(accept: str) -> bytes:
        app = inst.asgi_app()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "query_string": b"",
            "headers": [(b"accept", accept.encode())],
        }
        await app(scope, receive, send)
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    body = asyncio.run(asgi(OPENMETRICS)).decode()
    assert [e.labels for e in exemplars(body).values()] == [ids(span)]
    assert b"trace_id" not in asyncio.run(asgi("text/plain"))


def test_remote_write_carries_the_exemplars_in_the_time_series(exporter: Any) -> None:
    receiver = Receiver()
    try:
        inst = Instrumentation(
            registry=CollectorRegistry(), remote_write=receiver.url, push_mode="off", job="rw"
        )
        _traced_calls(inst)
        (span,) = exporter.get_finished_spans()
        assert inst.push()
        inst.close()  # a final write, then the stale markers
    finally:
        receiver.close()
    first, *_, stale = receiver.writes
    carrying = [
        (dict(entry["labels"]), entry["exemplars"]) for entry in first.series if entry["exemplars"]
    ]
    assert len(carrying) == 1
    labels, ((exemplar_labels, value_bits, at_ms),) = carrying[0]
    assert 0 < struct.unpack("<d", value_bits)[0] < 0.1  # the observed seconds
    assert labels["__name__"] == "codomyrmex_analysis_duration_seconds_bucket"
    assert labels["module"] == "pull" and labels["le"] == "0.1"
    assert dict(exemplar_labels) == ids(span)
    assert abs(at_ms / 1000 - time.time()) < 60
    assert not any(entry["exemplars"] for entry in stale.series)  # none on a stale marker


@pytest.mark.integration
def test_a_push_to_the_pushgateway_carries_none_and_still_lands(
    exporter: Any, pushgateway: Pushgateway
) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=pushgateway.url, push_mode="off", job="ex"
    )
    _traced_calls(inst)
    assert exporter.get_finished_spans()
    assert exposed(inst)  # it has one to drop
    assert inst.push()
    assert (
        pushgateway.value(
            "codomyrmex_analyses_total", module="pull", analysis_type="scan", status="success"
        )
        == 1
    )
    inst.close()


def test_multiprocess_mode_records_without_exemplars(tmp_path: Path) -> None:
    code = """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.openmetrics.exposition import generate_latest
        import instrument
        inst = instrument.Instrumentation()
        @inst.track_ai_call("openai", "gpt-4o")
        def stream():
            yield {"choices": [{"delta": {"content": "hi"}}]}
            yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        @inst.monitored_analysis("m", "t")
        def job():
            return list(stream())
        job()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        text = generate_latest(registry).decode()
        print(registry.get_sample_value(
            "codomyrmex_ai_tokens_used_total",
            {"provider": "openai", "model": "gpt-4o", "token_type": "input"}), "trace_id" in text)
    """
    # The script beside the workers' files: the collector reads only *.db.
    result = run_script(tmp_path / "script.py", code, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3.0", "False"]


# -- a real Prometheus with exemplar storage -------------------------------------------------


class _Exemplars:
    """A Prometheus storing exemplars, scraping one app in pull mode and receiving remote
    writes from another."""

    def __init__(self) -> None:
        self.pulled = Instrumentation(registry=CollectorRegistry())
        self.port = free_port()
        self.server = self.pulled.start_http_server(self.port)
        self.prometheus = Prometheus(
            Pushgateway(),
            extra_targets=(f"127.0.0.1:{self.port}",),
            flags=("--enable-feature=exemplar-storage", "--web.enable-remote-write-receiver"),
        ).start()

    def query_exemplars(self, query: str) -> list[dict[str, Any]]:
        now = time.time()
        params = {"query": query, "start": str(now - 600), "end": str(now + 60)}
        url = f"{self.prometheus.url}/api/v1/query_exemplars?" + urllib.parse.urlencode(params)
        body = json.loads(http("GET", url))
        assert body["status"] == "success", body
        data: list[dict[str, Any]] = body["data"]
        return data

    def wait_exemplars(self, query: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while True:
            found = self.query_exemplars(query)
            if sum(len(s["exemplars"]) for s in found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.25)

    def close(self) -> None:
        self.server.shutdown()
        self.prometheus.stop()
        self.pulled.close()


@pytest.fixture(scope="module")
def exemplar_prometheus() -> Iterator[_Exemplars]:
    servers = _Exemplars()
    yield servers
    servers.close()


def _where(series: dict[str, str]) -> tuple[str, str, str]:
    """A series of the scrape test: its name, analysis type, and bucket or token type."""
    bucket_or_type = series.get("le", series.get("token_type", ""))
    return series["__name__"], series.get("analysis_type", ""), bucket_or_type


@pytest.mark.integration
def test_prometheus_scrapes_the_trace_ids_the_exporter_saw_on_the_right_series(
    exporter: Any, exemplar_prometheus: _Exemplars
) -> None:
    inst = exemplar_prometheus.pulled

    @inst.monitored_analysis("scraped", "fast")
    def fast() -> None:
        pass

    @inst.track_ai_call("openai", "gpt-scraped")
    def ask() -> dict[str, Any]:
        return CHAT

    @inst.monitored_analysis("scraped", "slow")
    def slow() -> None:
        ask()
        time.sleep(0.15)

    fast()
    slow()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    found = exemplar_prometheus.wait_exemplars(
        '{__name__=~"codomyrmex_analysis_duration_seconds_bucket|'
        'codomyrmex_ai_tokens_used_total", module=~"scraped|", model=~"gpt-scraped|"}',
        count=4,
    )
    by_series = {_where(s["seriesLabels"]): [e["labels"] for e in s["exemplars"]] for s in found}
    assert by_series == {
        ("codomyrmex_analysis_duration_seconds_bucket", "fast", "0.1"): [
            ids(spans["scraped fast"])
        ],
        ("codomyrmex_analysis_duration_seconds_bucket", "slow", "0.5"): [
            ids(spans["scraped slow"])
        ],
        ("codomyrmex_ai_tokens_used_total", "", "input"): [ids(spans["chat gpt-scraped"])],
        ("codomyrmex_ai_tokens_used_total", "", "output"): [ids(spans["chat gpt-scraped"])],
    }
    # The AI call's span is the analysis' child: one trace from the slow bucket to the call.
    assert spans["chat gpt-scraped"].context.trace_id == spans["scraped slow"].context.trace_id


@pytest.mark.integration
def test_prometheus_receives_remote_written_exemplars(
    exporter: Any, exemplar_prometheus: _Exemplars
) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(),
        remote_write=f"{exemplar_prometheus.prometheus.url}/api/v1/write",
        push_mode="off",
        job="rw-exemplars",
    )

    @inst.monitored_analysis("written", "scan")
    def scan() -> None:
        pass

    with run_id("batch-17"):
        inst.monitored_analysis("written", "batch")(lambda: None)()
    scan()
    assert inst.push()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "written scan"]
    found = exemplar_prometheus.wait_exemplars(
        'codomyrmex_analysis_duration_seconds_bucket{module="written"}', count=2
    )
    by_type = {
        s["seriesLabels"]["analysis_type"]: [e["labels"] for e in s["exemplars"]] for s in found
    }
    # With a tracer provider set, the batch job has its own span too: its ids, not the run's.
    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "written batch"]
    assert by_type == {"scan": [ids(span)], "batch": [ids(batch)]}
    inst.close()


# -- the dashboard ---------------------------------------------------------------------------


def test_the_latency_panels_show_exemplars_linking_to_the_traces_data_source() -> None:
    from instrument.dashboard import build_dashboard

    dashboard = build_dashboard("codomyrmex")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    shown = {p["title"]: p for p in panels if any(t.get("exemplar") for t in p["targets"])}
    assert set(shown) == {
        "Analysis duration p50 / p95 / p99",
        "AI call latency p95",
        "Time to first token p95",
    }
    carrying = (
        "codomyrmex_analysis_duration_seconds_bucket",
        "codomyrmex_ai_call_duration_seconds_bucket",
        "codomyrmex_ai_time_to_first_token_seconds_bucket",
    )
    for title, panel in shown.items():
        assert all(t["exemplar"] is True for t in panel["targets"]), title
        # Exemplars come with the series a query selects: those that carry them.
        assert all(any(name in t["expr"] for name in carrying) for t in panel["targets"]), title
        (override,) = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byName", "options": "trace_id"}
        (link,) = override["properties"][0]["value"]
        assert link["internal"]["datasourceUid"] == "${traces}"
        assert link["internal"]["query"] == {"query": "${__value.raw}"}
    for panel in panels:
        if panel["title"] not in shown:
            assert "exemplar" not in json.dumps(panel["targets"]), panel["title"]
            assert panel["fieldConfig"]["overrides"] == []
    (traces,) = [v for v in dashboard["templating"]["list"] if v["name"] == "traces"]
    assert traces["type"] == "datasource" and traces["query"] == "tempo"
    # Each dashboard has its own copy: editing one leaves the next one as generated.
    traces["query"] = "jaeger"
    shown["AI call latency p95"]["fieldConfig"]["overrides"][0]["matcher"]["options"] = "x"
    again = build_dashboard("codomyrmex")
    assert next(v for v in again["templating"]["list"] if v["name"] == "traces")["query"] == "tempo"
    assert json.dumps(again) == json.dumps(build_dashboard("codomyrmex"))
    assert '"options": "x"' not in json.dumps(again)


@pytest.mark.integration
def test_prometheus_scrapes_a_run_id_of_any_letters_and_punctuation_intact(
    exemplar_prometheus: _Exemplars,
) -> None:
    inst = exemplar_prometheus.pulled
    value = "batch-7 ü/ñ: {ok} #1 'q' é\u2028"

    @inst.monitored_analysis("scraped", "run")
    def job() -> None:
        pass

    with run_id(value):
        job()
    found = exemplar_prometheus.wait_exemplars(
        'codomyrmex_analysis_duration_seconds_bucket{analysis_type="run"}', count=1
    )
    assert [e["labels"] for s in found for e in s["exemplars"]] == [{"run_id": value}]


def test_threads_each_link_their_own_calls_and_every_call_is_counted(exporter: Any) -> None:
    import threading

    inst = Instrumentation(registry=CollectorRegistry())

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> dict[str, Any]:
        return CHAT

    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            ask()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    spans = {ids(span)["span_id"]: span for span in exporter.get_finished_spans()}
    assert len(spans) == 400
    found = exposed(inst)
    model = {"provider": "openai", "model": "gpt-4o"}
    tokens = found[key("codomyrmex_ai_tokens_used_total", **model, token_type="output")]
    assert tokens.value == 5 and tokens.labels["span_id"] in spans  # one of the calls'
    assert ids(spans[tokens.labels["span_id"]]) == tokens.labels
    assert (
        inst.registry.get_sample_value(
            "codomyrmex_ai_tokens_used_total", {**model, "token_type": "output"}
        )
        == 2000
    )
