"""Spans (issue 16): with opentelemetry-api and a real tracer provider, every decorated call
runs in a span, named and attributed by its decorator (the GenAI conventions for AI calls),
current inside the wrapped code, nested under the caller's span; none without a provider,
with ``tracing=False`` or ``INSTRUMENT_TRACING=0``; nothing imported without opentelemetry.

Every test reads the spans a real SDK exported (an in-memory exporter) and, where a number
is at stake, the registry.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from instrument import Instrumentation, configure
from instrument.ai import record_abandoned_streams

from .support import analyses, calls, counted, run_script, tokens_used, tracer_provider

CHAT = {
    "model": "gpt-4o-2024-08-06",
    "choices": [{"finish_reason": "stop", "message": {"content": "SECRET-COMPLETION"}}],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}
ANTHROPIC = {
    "type": "message",
    "model": "claude-x-20250101",
    "stop_reason": "end_turn",
    "content": [{"type": "text", "text": "SECRET-COMPLETION"}],
    "usage": {
        "input_tokens": 10,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 2,
        "output_tokens": 7,
    },
}


@pytest.fixture
def exporter() -> Iterator[Any]:
    with tracer_provider() as found:
        yield found


def finished(exporter: Any) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [span.name for span in spans]
    return by_name


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


# -- analyses ---------------------------------------------------------------------------------


def test_a_sync_analysis_runs_in_its_own_span_under_the_callers(
    exporter: Any, inst: Instrumentation
) -> None:
    inside: list[int] = []

    @inst.monitored_analysis("static_analysis", "codebase", project="repo")
    def analyze(path: str) -> str:
        inside.append(current_span_id())
        return path.upper()

    tracer = trace.get_tracer("caller")
    with tracer.start_as_current_span("request") as caller:
        assert analyze("src") == "SRC"
        assert current_span_id() == caller.get_span_context().span_id  # given back

    spans = finished(exporter)
    span = spans["static_analysis codebase"]
    assert span.kind is SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {
        "analysis.module": "static_analysis",
        "analysis.type": "codebase",
        "analysis.project": "repo",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert inside == [span.context.span_id]
    assert parent_id(span) == spans["request"].context.span_id
    assert span.context.trace_id == spans["request"].context.trace_id
    assert analyses(inst.registry, "success", "static_analysis", "codebase") == 1


def test_an_ai_call_inside_an_analysis_is_its_child_with_the_genai_attributes(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def ask(prompt: str) -> dict[str, Any]:
        return CHAT

    @inst.monitored_analysis("review", "diff")
    def review() -> dict[str, Any]:
        return ask("SECRET-PROMPT")

    review()
    spans = finished(exporter)
    call, outer = spans["chat gpt-4o"], spans["review diff"]
    assert call.kind is SpanKind.CLIENT
    assert dict(call.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 4,
        "gen_ai.response.finish_reasons": ("stop",),
    }
    assert call.status.status_code is StatusCode.UNSET
    assert parent_id(call) == outer.context.span_id
    assert parent_id(outer) is None
    assert tokens_used(inst.registry, "openai", "gpt-4o", "input") == 12


def test_anthropic_cache_counts_and_the_operation_name_the_call(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("anthropic", model=None, operation="text_completion")
    def complete(model: str) -> dict[str, Any]:
        return ANTHROPIC

    complete(model="claude-x")
    span = finished(exporter)["text_completion claude-x"]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "claude-x"
    assert attributes["gen_ai.response.model"] == "claude-x-20250101"
    assert attributes["gen_ai.usage.input_tokens"] == 15  # the conventions count cache in
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 3
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 2
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)


def test_a_model_known_only_from_the_response_names_the_span(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("openai")
    def ask() -> dict[str, Any]:
        return CHAT

    ask()
    span = finished(exporter)["chat gpt-4o-2024-08-06"]
    attributes = dict(span.attributes or {})
    assert "gen_ai.request.model" not in attributes  # not what was asked for
    assert attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"


def test_the_span_is_current_inside_a_coroutine_and_ai_calls_nest_under_it(
    exporter: Any, inst: Instrumentation
) -> None:
    seen: dict[str, int] = {}

    @inst.track_ai_call("anthropic", "claude")
    async def ask() -> dict[str, Any]:
        seen["ask"] = current_span_id()
        await asyncio.sleep(0)
        seen["ask after await"] = current_span_id()
        return ANTHROPIC

    @inst.monitored_analysis("agent", "plan")
    async def plan() -> None:
        seen["plan"] = current_span_id()
        await asyncio.gather(ask(), ask())
        seen["plan after"] = current_span_id()

    asyncio.run(plan())
    spans = exporter.get_finished_spans()
    outer = next(s for s in spans if s.name == "agent plan")
    children = [s for s in spans if s.name == "chat claude"]
    assert len(children) == 2
    assert {parent_id(child) for child in children} == {outer.context.span_id}
    assert seen["plan"] == seen["plan after"] == outer.context.span_id
    assert seen["ask"] == seen["ask after await"]
    assert seen["ask"] in {child.context.span_id for child in children}


def test_a_generators_span_is_current_in_each_step_not_between_them(
    exporter: Any, inst: Instrumentation
) -> None:
    inside: list[int] = []

    @inst.monitored_analysis("discovery", "walk")
    def walk(n: int) -> Iterator[int]:
        for i in range(n):
            inside.append(current_span_id())
            yield i

    tracer = trace.get_tracer("caller")
    between: list[int] = []
    with tracer.start_as_current_span("loop") as caller:
        for _ in walk(3):
            between.append(current_span_id())
    span = finished(exporter)["discovery walk"]
    assert inside == [span.context.span_id] * 3
    assert between == [caller.get_span_context().span_id] * 3
    assert parent_id(span) == caller.get_span_context().span_id
    assert span.end_time is not None and span.start_time is not None


def test_an_async_generators_span_is_current_in_each_step_not_between_them(
    exporter: Any, inst: Instrumentation
) -> None:
    inside: list[int] = []
    between: list[int] = []

    @inst.monitored_analysis("discovery", "scan")
    async def scan(n: int) -> AsyncIterator[int]:
        for i in range(n):
            inside.append(current_span_id())
            await asyncio.sleep(0)
            inside.append(current_span_id())
            yield i

    async def main() -> None:
        async for _ in scan(2):
            between.append(current_span_id())

    asyncio.run(main())
    span = finished(exporter)["discovery scan"]
    assert inside == [span.context.span_id] * 4
    assert between == [0, 0]  # no span around the loop: the invalid span's id


def test_a_with_block_is_a_span_carrying_its_quality_score(
    exporter: Any, inst: Instrumentation
) -> None:
    with inst.monitored_analysis("indexer", "reindex") as job:
        inside = current_span_id()
        job.record_quality(91.5, project="mono")
    assert current_span_id() == 0
    span = finished(exporter)["indexer reindex"]
    assert inside == span.context.span_id
    assert dict(span.attributes or {}) == {
        "analysis.module": "indexer",
        "analysis.type": "reindex",
        "analysis.project": "mono",
        "analysis.quality_score": 91.5,
    }


def test_a_scored_decorated_call_carries_the_score_its_quality_callable_gave(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.monitored_analysis("lint", "repo", quality=lambda r: r["score"], project="acme")
    def lint() -> dict[str, float]:
        return {"score": 77.0}

    lint()
    attributes = dict(finished(exporter)["lint repo"].attributes or {})
    assert attributes["analysis.quality_score"] == 77.0
    assert attributes["analysis.project"] == "acme"


def test_an_ai_with_block_is_a_client_span(exporter: Any, inst: Instrumentation) -> None:
    with inst.track_ai_call("anthropic", "claude", operation="embeddings") as call:
        call.add_usage(input_tokens=8)
    span = finished(exporter)["embeddings claude"]
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {})["gen_ai.usage.input_tokens"] == 8


# -- how a span ends -----------------------------------------------------------------------


class ProviderDown(Exception):
    pass


def test_an_exception_ends_the_span_in_error_with_its_type_and_an_event(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> None:
        raise ProviderDown("status 503")

    @inst.monitored_analysis("m", "t")
    def job() -> None:
        ask()

    with pytest.raises(ProviderDown, match="status 503"):
        job()
    spans = finished(exporter)
    for name in ("chat gpt-4o", "m t"):
        span = spans[name]
        assert span.status.status_code is StatusCode.ERROR, name
        assert span.status.description == "ProviderDown"
        assert dict(span.attributes or {})["error.type"] == "ProviderDown"
        (event,) = span.events
        assert event.name == "exception"
        assert dict(event.attributes or {})["exception.type"].endswith("ProviderDown")
    assert calls(inst.registry, "openai", "gpt-4o")["error"] == 1
    assert analyses(inst.registry, "error") == 1


def test_a_cancelled_job_leaves_the_status_unset_and_says_it_was_cancelled(
    exporter: Any, inst: Instrumentation
) -> None:
    started = asyncio.Event()

    @inst.monitored_analysis("m", "t")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    span = finished(exporter)["m t"]
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {})["instrument.cancelled"] is True
    assert span.events == ()
    assert analyses(inst.registry, "cancelled") == 1


def test_a_generator_closed_early_is_a_cancelled_span(exporter: Any, inst: Instrumentation) -> None:
    @inst.monitored_analysis("m", "t")
    def items() -> Iterator[int]:
        yield from range(10)

    gen = items()
    next(gen)
    gen.close()
    span = finished(exporter)["m t"]
    assert dict(span.attributes or {})["instrument.cancelled"] is True


# -- streams --------------------------------------------------------------------------------


def chunks() -> list[dict[str, Any]]:
    return [
        {"model": "gpt-4o", "choices": [{"delta": {"content": "SECRET-COMPLETION"}}]},
        {"model": "gpt-4o", "choices": [{"delta": {}, "finish_reason": "length"}]},
        {"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2}},
    ]


def test_a_generator_functions_stream_span_ends_when_the_stream_does(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def stream() -> Iterator[dict[str, Any]]:
        yield from chunks()

    it = stream()
    first = next(it)
    time.sleep(0.01)
    rest = list(it)
    ended = time.time_ns()
    assert [first, *rest] == chunks()
    span = finished(exporter)["chat gpt-4o"]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] < 0.01
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time >= 10_000_000  # the sleep is inside
    assert span.end_time <= ended


@pytest.mark.sdk
def test_a_real_sdk_streams_span_ends_when_its_stream_ends(
    exporter: Any, inst: Instrumentation
) -> None:
    openai = pytest.importorskip("openai")
    from instrument.demo.llm_server import LocalLLMServer

    with LocalLLMServer(first_content_delay=0.05, chunk_delay=0.01) as server:
        client = openai.OpenAI(api_key="sk-test-0123", base_url=server.base_url, max_retries=0)

        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> Any:
            return client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "SECRET-PROMPT"}],
                stream=True,
                stream_options={"include_usage": True},
            )

        stream = ask()
        assert exporter.get_finished_spans() == ()  # open while the stream is
        before_end = time.time_ns()
        for _ in stream:
            before_end = time.time_ns()
        after_end = time.time_ns()
    span = finished(exporter)["chat gpt-4o"]
    assert span.end_time is not None
    assert before_end <= span.end_time <= after_end  # the stream's end, not the call's
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.response.time_to_first_chunk"] >= 0.05
    assert attributes["gen_ai.usage.output_tokens"] == counted(
        inst.registry, "ai_tokens_used_total", provider="openai", model="gpt-4o",
        token_type="output",
    )  # fmt: skip
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    for value in attributes.values():
        assert "SECRET" not in str(value)


def test_an_abandoned_streams_span_ends_when_it_is_recorded(
    exporter: Any, inst: Instrumentation
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def stream() -> Iterator[dict[str, Any]]:
        return iter(chunks())

    it = stream()
    next(it)
    del it
    gc.collect()
    before = time.time_ns()
    record_abandoned_streams()
    span = finished(exporter)["chat gpt-4o"]
    assert span.end_time is not None and span.end_time >= before
    assert dict(span.attributes or {})["instrument.cancelled"] is True
    assert calls(inst.registry, "openai", "gpt-4o")["cancelled"] == 1


# -- never content, never in the way ----------------------------------------------------------


def test_no_prompt_or_completion_ever_reaches_a_span(exporter: Any, inst: Instrumentation) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def ask(prompt: str) -> dict[str, Any]:
        return CHAT

    @inst.track_ai_call("openai", "gpt-4o")
    def stream(prompt: str) -> Iterator[dict[str, Any]]:
        yield from chunks()

    ask("SECRET-PROMPT")
    list(stream("SECRET-PROMPT"))
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        text = json.dumps({**dict(span.attributes or {}), "name": span.name}, default=str)
        assert "SECRET" not in text
        assert span.events == ()


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


def test_an_exceptions_message_never_reaches_its_span_and_a_bad_str_still_ends_it(
    exporter: Any, inst: Instrumentation
) -> None:
    """The exception event carries the type only (the message may quote the prompt), and
    an exception whose ``str()`` raises still ends its span in ERROR."""

    @inst.track_ai_call("openai", "gpt-4o")
    def ask(prompt: str) -> None:
        raise ValueError(f"bad request for prompt {prompt!r}")

    @inst.monitored_analysis("m", "t")
    def job() -> None:
        raise _Unprintable

    with pytest.raises(ValueError, match="SECRET-PROMPT"):
        ask("SECRET-PROMPT")
    with pytest.raises(_Unprintable):
        job()
    spans = finished(exporter)
    for name, kind in (("chat gpt-4o", "ValueError"), ("m t", "_Unprintable")):
        span = spans[name]
        assert span.end_time is not None
        assert span.status.status_code is StatusCode.ERROR, name
        assert dict(span.attributes or {})["error.type"] == kind
        (event,) = span.events
        assert event.name == "exception"
        attributes = dict(event.attributes or {})
        assert set(attributes) == {"exception.type"}
        assert attributes["exception.type"].endswith(kind)
        assert "SECRET" not in json.dumps({**attributes, **dict(span.attributes or {})})
    assert calls(inst.registry, "openai", "gpt-4o")["error"] == 1
    assert analyses(inst.registry, "error") == 1


class _BrokenTracer:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer down")


def test_a_failing_tracer_costs_the_span_never_the_call_or_its_counts(
    exporter: Any, inst: Instrumentation, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from instrument import _tracing

    monkeypatch.setattr(_tracing, "_cache", (trace.get_tracer_provider(), _BrokenTracer()))

    @inst.monitored_analysis("m", "t")
    def job() -> int:
        return 7

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> dict[str, Any]:
        return CHAT

    with caplog.at_level(logging.ERROR, "instrument"):
        assert job() == 7
        assert ask() is CHAT
    assert analyses(inst.registry, "success") == 1
    assert calls(inst.registry, "openai", "gpt-4o")["success"] == 1
    assert "starting a span failed" in caplog.text
    assert exporter.get_finished_spans() == ()


@settings(max_examples=40)
@given(
    module=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1),
    kind=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1),
)
def test_any_label_names_the_analysis_span_exactly(module: str, kind: str) -> None:
    inst = Instrumentation()
    with tracer_provider() as exporter:

        @inst.monitored_analysis(module, kind)
        def job() -> None:
            pass

        job()
        (span,) = exporter.get_finished_spans()
    assert span.name == f"{module} {kind}"
    assert dict(span.attributes or {}) == {"analysis.module": module, "analysis.type": kind}


# -- off ------------------------------------------------------------------------------------


def test_tracing_false_starts_no_span_and_still_records(exporter: Any) -> None:
    inst = Instrumentation(tracing=False)

    @inst.monitored_analysis("m", "t")
    def job() -> int:
        return current_span_id()

    assert job() == 0
    assert exporter.get_finished_spans() == ()
    assert analyses(inst.registry, "success") == 1


def test_INSTRUMENT_TRACING_0_turns_spans_off_and_a_bad_value_is_named(
    exporter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTRUMENT_TRACING", "0")
    inst = configure()
    assert inst.tracing is False

    @inst.monitored_analysis("m", "t")
    def job() -> None:
        pass

    job()
    assert exporter.get_finished_spans() == ()
    monkeypatch.setenv("INSTRUMENT_TRACING", "maybe")
    with pytest.raises(ValueError, match="INSTRUMENT_TRACING='maybe' is not valid"):
        configure()
    with pytest.raises(TypeError, match="tracing must be True or False"):
        Instrumentation(tracing="no")  # type: ignore[arg-type]


def test_without_a_tracer_provider_there_is_no_span(inst: Instrumentation) -> None:
    # The API is imported (this module did), but no provider is set: the default proxy.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> int:
        return current_span_id()

    assert ask() == 0
    assert calls(inst.registry, "openai", "gpt-4o")["success"] == 1


def test_a_provider_set_after_calls_without_one_traces_the_next_call(
    inst: Instrumentation,
) -> None:
    # The calls without a provider skip asking for a tracer (the quiet module is noted);
    # a provider set since is seen at the very next call, and unset again, no longer.
    from instrument._tracing import QUIET

    monitor = inst.monitored_analysis("m", "t")

    @monitor
    def work() -> int:
        return current_span_id()

    assert work() == 0 and work() == 0
    assert QUIET.module is trace
    with tracer_provider() as exporter:
        assert work() != 0
        assert [span.name for span in exporter.get_finished_spans()] == ["m t"]
    assert work() == 0
    assert analyses(inst.registry, "success") == 4


def test_a_trace_module_imported_again_is_asked_about_again(
    inst: Instrumentation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a test suite that purges and re-imports opentelemetry does: the module noted as
    # quiet is no longer the one in sys.modules, and the new one's provider counts.
    import importlib.util

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from instrument._tracing import QUIET

    @inst.monitored_analysis("m", "t")
    def work() -> None:
        return None

    work()
    assert QUIET.module is trace
    spec = importlib.util.find_spec("opentelemetry.trace")
    assert spec is not None and spec.loader is not None
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    again._TRACER_PROVIDER = provider  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", again)
    work()
    assert [span.name for span in exporter.get_finished_spans()] == ["m t"]
    provider.shutdown()


def test_a_provider_named_by_the_environment_traces_the_first_call(tmp_path: Path) -> None:
    # OTEL_PYTHON_TRACER_PROVIDER names the SDK's provider (an entry point): the API loads
    # it when asked, and nothing was set before the first decorated call asks.
    code = """
        import opentelemetry.trace as trace
        from prometheus_client import CollectorRegistry
        from instrument import Instrumentation

        inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")

        @inst.monitored_analysis("m", "t")
        def work():
            return trace.get_current_span().get_span_context().span_id

        print(work() != 0, type(trace.get_tracer_provider()).__module__)
    """
    env = {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}
    done = run_script(tmp_path / "script.py", code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "opentelemetry.sdk.trace"]


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_instrument_never_imports_opentelemetry() -> None:
    out = _python(
        """
        import sys
        import instrument
        inst = instrument.Instrumentation()
        @inst.monitored_analysis("m", "t")
        def job():
            return 1
        job()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert out.strip() == "[]"


def test_without_opentelemetry_every_kind_of_call_works() -> None:
    out = _python(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import instrument
        inst = instrument.Instrumentation()
        @inst.monitored_analysis("m", "t")
        def job():
            return 1
        @inst.monitored_analysis("m", "t")
        async def ajob():
            return 2
        @inst.monitored_analysis("m", "t")
        def gen():
            yield 3
        with instrument.run_id("nightly"):
            total = job() + asyncio.run(ajob()) + sum(gen())
        with inst.monitored_analysis("m", "t"):
            pass
        print(total, inst.registry.get_sample_value(
            "codomyrmex_analyses_total", {"module": "m", "analysis_type": "t", "status": "success"}))
        """
    )
    assert out.split() == ["6", "4.0"]


# -- hostile: contexts that change, threads, a failing span processor ------------------------


def test_a_with_block_left_in_another_task_ends_its_span_and_leaves_no_span_there(
    exporter: Any, inst: Instrumentation, caplog: Any
) -> None:
    after: list[int] = []

    def steps() -> Iterator[int]:
        with inst.monitored_analysis("moved", "block"):
            yield current_span_id()
        after.append(current_span_id())  # in the task that left the block

    gen = steps()
    inside = next(gen)

    async def elsewhere() -> None:
        with pytest.raises(StopIteration):
            next(gen)

    with caplog.at_level(logging.DEBUG, "opentelemetry"):
        asyncio.run(elsewhere())
    span = finished(exporter)["moved block"]
    assert inside == span.context.span_id
    assert after == [0]
    assert "Failed to detach" not in caplog.text
    assert analyses(inst.registry, "success", "moved", "block") == 1


def test_a_stream_made_in_one_thread_and_read_in_another_ends_its_span_there(
    exporter: Any, inst: Instrumentation
) -> None:
    import threading

    @inst.track_ai_call("openai", "gpt-4o")
    def stream() -> Iterator[dict[str, Any]]:
        return iter(chunks())

    handed = stream()
    ended: list[int] = []

    def read() -> None:
        list(handed)
        ended.append(time.time_ns())

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    span = finished(exporter)["chat gpt-4o"]
    assert span.end_time is not None and span.end_time <= ended[0]
    assert dict(span.attributes or {})["gen_ai.usage.input_tokens"] == 6
    assert calls(inst.registry, "openai", "gpt-4o")["success"] == 1


def test_an_async_ai_generator_is_one_span_current_in_its_steps(
    exporter: Any, inst: Instrumentation
) -> None:
    inside: list[int] = []

    @inst.track_ai_call("anthropic", "claude")
    async def stream() -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks():
            inside.append(current_span_id())
            await asyncio.sleep(0)
            yield chunk

    async def main() -> int:
        got = [chunk async for chunk in stream()]
        return len(got)

    assert asyncio.run(main()) == 3
    span = finished(exporter)["chat claude"]
    assert inside == [span.context.span_id] * 3
    assert dict(span.attributes or {})["gen_ai.response.finish_reasons"] == ("length",)


class _Exploding:
    """A span processor that fails on every span, at its start or its end."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "start":
            raise RuntimeError("processor down")

    def on_end(self, span: Any) -> None:
        if self.where == "end":
            raise RuntimeError("processor down")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.mark.parametrize("where", ["start", "end"])
def test_a_failing_span_processor_never_changes_a_result_an_exception_or_a_count(
    where: str, exporter: Any, inst: Instrumentation
) -> None:
    trace.get_tracer_provider().add_span_processor(_Exploding(where))  # type: ignore[attr-defined]
    problem = ProviderDown("as raised")

    @inst.monitored_analysis("m", "t")
    def job(fail: bool) -> int:
        if fail:
            raise problem
        return 7

    @inst.track_ai_call("openai", "gpt-4o")
    async def ask() -> dict[str, Any]:
        return CHAT

    assert job(False) == 7
    with pytest.raises(ProviderDown) as raised:
        job(True)
    assert raised.value is problem
    assert asyncio.run(ask()) is CHAT
    assert analyses(inst.registry, "success") == 1
    assert analyses(inst.registry, "error") == 1
    assert calls(inst.registry, "openai", "gpt-4o")["success"] == 1
    assert tokens_used(inst.registry, "openai", "gpt-4o", "output") == 5


def test_a_plain_def_handing_on_a_coroutine_is_one_span_current_when_it_is_awaited(
    exporter: Any, inst: Instrumentation
) -> None:
    seen: list[int] = []

    async def create() -> dict[str, Any]:
        seen.append(current_span_id())
        await asyncio.sleep(0)
        return CHAT

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> Any:
        return create()  # ``return client.create(...)``: the job is the awaited work

    assert asyncio.run(ask()) is CHAT
    span = finished(exporter)["chat gpt-4o"]
    assert seen == [span.context.span_id]
    assert dict(span.attributes or {})["gen_ai.usage.output_tokens"] == 5


@pytest.mark.sdk
def test_a_real_async_sdk_streams_span_ends_when_its_stream_ends(
    exporter: Any, inst: Instrumentation
) -> None:
    openai = pytest.importorskip("openai")
    from instrument.demo.llm_server import LocalLLMServer

    async def main(server: Any) -> tuple[int, int]:
        client = openai.AsyncOpenAI(api_key="sk-test-0123", base_url=server.base_url,
                                    max_retries=0)  # fmt: skip

        @inst.monitored_analysis("agent", "answer")
        async def answer() -> tuple[int, int]:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "SECRET-PROMPT"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            before = time.time_ns()
            async for _ in stream:
                before = time.time_ns()
            return before, time.time_ns()

        # The SDK's own method, decorated: its result is the stream the tracker watches.
        tracked = inst.track_ai_call("openai", "gpt-4o")(client.chat.completions.create)
        client.chat.completions.create = tracked  # type: ignore[method-assign]
        try:
            return await answer()
        finally:
            await client.close()

    with LocalLLMServer(chunk_delay=0.01) as server:
        before_end, after_end = asyncio.run(main(server))
    spans = finished(exporter)
    call, outer = spans["chat gpt-4o"], spans["agent answer"]
    assert call.end_time is not None and before_end <= call.end_time <= after_end
    assert parent_id(call) == outer.context.span_id
    attributes = dict(call.attributes or {})
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert "gen_ai.response.time_to_first_chunk" in attributes


def test_set_model_renames_the_span_it_ends_with(exporter: Any, inst: Instrumentation) -> None:
    with inst.track_ai_call("openai", "gpt-4o") as call:
        call.set_model("gpt-4o-mini")
        call.record_response(CHAT)
    span = finished(exporter)["chat gpt-4o-mini"]
    assert dict(span.attributes or {})["gen_ai.request.model"] == "gpt-4o-mini"
    assert calls(inst.registry, "openai", "gpt-4o-mini")["success"] == 1
