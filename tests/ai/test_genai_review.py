"""Issue 15's hostile review, each confirmed defect's regression test: finish reasons and
attribution values bounded, tool calls counted once per call, streamed rounds kept beside
whole answers, attribution values that never lose a call, signals from attribution
callables, rate-limit headroom through stream managers and LiteLLM, label clashes refused
at configuration, mocks and self-referencing results read in bounded time, custom tool
calls, and the attribution cap across multiprocess workers."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation
from instrument.demo.llm_server import LocalLLMServer

from ..support import counted, require_sdk, run_script, sample
from .test_sdk_matrix import CLAUDE, GPT, KEYS, MESSAGES, matrix_server

MODEL = "gpt-4o"
ASK = {"prompt_tokens": 3, "completion_tokens": 1}


def response(reason: Any = "stop", tools: int = 0) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if tools:
        message["tool_calls"] = [{"id": f"c{i}", "type": "function"} for i in range(tools)]
    return {
        "id": "r1",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": reason, "message": message}],
        "usage": ASK,
    }


def chunk(
    delta: dict[str, Any], finish: str | None = None, index: int = 0, rid: str = "c1"
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def labelled(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` by the value of ``label``, summed over the rest."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and s.value:  # a series bound early reads 0: nothing said
                found[s.labels[label]] = found.get(s.labels[label], 0) + s.value
    return found


def reasons(registry: CollectorRegistry) -> dict[str, float]:
    return labelled(registry, "codomyrmex_ai_finish_reasons_total", "finish_reason")


def tools(registry: CollectorRegistry, model: str = MODEL) -> float:
    return counted(registry, "ai_tool_calls_total", provider="openai", model=model)


def tenants(registry: CollectorRegistry) -> dict[str, float]:
    return labelled(registry, "codomyrmex_ai_api_calls_total", "tenant")


@pytest.fixture
def attributed(registry: CollectorRegistry) -> Iterator[Instrumentation]:
    inst = Instrumentation(registry=registry, attribution=("tenant",), max_attribution_values=3)
    yield inst
    inst.close()


# -- 1. finish reasons, bounded ----------------------------------------------------------------


def test_foreign_finish_reasons_are_capped_per_provider(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """An OpenAI-compatible server sending a new reason on every call made a series each:
    5000 calls, 5000 series. The providers' reasons keep their own; 16 others do, then
    "other" with one warning, for every model of the provider."""

    @inst.track_ai_call("openai", None)
    def ask(model: str, reason: str) -> dict[str, Any]:
        return response(reason)

    with caplog.at_level(logging.WARNING, logger="instrument"):
        for i in range(2000):
            ask(f"m{i % 2}", f"reason-{i}")
        ask("m0", "LENGTH")
        ask("m1", "content_filter")
    got = reasons(registry)
    assert len(got) == 16 + 3
    assert got["other"] == 2000 - 16
    assert got["length"] == 1 and got["content_filter"] == 1
    assert sum(got.values()) == 2002
    warned = [r for r in caplog.records if "finish reasons" in r.getMessage()]
    assert len(warned) == 1
    assert "reason-" not in warned[0].getMessage()


# -- 2. tool calls whose id repeats on every delta ------------------------------------------


def tool_delta(index: int, call_id: str | None, args: str) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id is not None:
        delta["id"] = call_id
    return {"tool_calls": [delta]}


def test_a_call_whose_id_repeats_on_every_delta_counts_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Fireworks and LocalAI repeat the call's id on every argument delta: one call in
    three chunks counted three times."""

    @inst.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        return iter(
            [
                chunk(tool_delta(0, "call_a", "")),
                chunk(tool_delta(0, "call_a", '{"q":')),
                chunk(tool_delta(0, "call_a", "1}")),
                chunk(tool_delta(1, "call_b", "{}")),  # a second call, its own index
                chunk(tool_delta(1, "call_b", "")),
                chunk(tool_delta(0, "call_c", "{}")),  # index 0 again, a new id: a new call
                chunk({}, "tool_calls"),
            ]
        )

    assert len(list(stream())) == 7
    assert tools(registry) == 3
    assert reasons(registry) == {"tool_calls": 1}


def test_a_legacy_function_call_repeating_its_name_counts_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        for args in ("", '{"a":', "1}"):
            yield chunk({"function_call": {"name": "lookup", "arguments": args}})
        # Another choice of the same chunk stream opens its own call.
        yield chunk({"function_call": {"name": "lookup", "arguments": "{}"}}, index=1)
        yield chunk({}, "function_call")

    list(stream())
    assert tools(registry) == 2


def test_the_same_call_id_in_another_response_counts_again(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Two rounds of an agent, each streaming a call at index 0 with the same id (a
    server numbering ids per response): two calls."""

    @inst.track_ai_call("openai", MODEL)
    def agent() -> Iterator[dict[str, Any]]:
        for rid in ("r1", "r2"):
            yield chunk(tool_delta(0, "call_0", "{}"), rid=rid)
            yield chunk(tool_delta(0, "call_0", ""), rid=rid)
            yield chunk({}, "tool_calls", rid=rid)

    list(agent())
    assert tools(registry) == 2
    assert reasons(registry) == {"tool_calls": 2}


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.integers(0, 2),  # the choice
            st.integers(0, 3),  # the tool index
            st.integers(1, 4),  # how many deltas the call takes
            st.booleans(),  # whether every delta repeats the id
        ),
        max_size=8,
    )
)
def test_each_streamed_call_counts_once_however_its_deltas_come(
    calls: list[tuple[int, int, int, bool]],
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    chunks: list[dict[str, Any]] = []
    for number, (choice, at, deltas, repeat) in enumerate(calls):
        for d in range(deltas):
            call_id = f"call_{number}" if d == 0 or repeat else None
            chunks.append(chunk(tool_delta(at, call_id, "x"), index=choice))

    @inst.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        return iter(chunks)

    assert len(list(stream())) == len(chunks)
    got = tools(registry)
    inst.close()
    assert got == len(calls)


class FireworksLike(BaseHTTPRequestHandler):
    """A chat completions endpoint streaming one tool call whose id repeats on every
    delta, as Fireworks does."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        call = {"index": 0, "id": "chatcmpl-tool-aa62", "type": "function"}
        deltas = [
            {"role": "assistant", "tool_calls": [{**call, "function": {"name": "f"}}]},
            {"tool_calls": [{**call, "function": {"arguments": '{"a":'}}]},
            {"tool_calls": [{**call, "function": {"arguments": "1}"}}]},
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
        chunks.append(
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        )
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for c in chunks:
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.mark.sdk
def test_a_repeated_call_id_through_the_openai_sdk_counts_once(
    offline: None, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    openai = require_sdk("openai")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FireworksLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(
            api_key="sk-local", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1"
        )

        @inst.track_ai_call("openai", MODEL)
        def ask() -> Any:
            return client.chat.completions.create(model=MODEL, messages=[], stream=True)

        assert len(list(ask())) == 4
    finally:
        server.shutdown()
        server.server_close()
    assert tools(registry) == 1
    assert reasons(registry) == {"tool_calls": 1}


# -- 3. a streamed round beside a whole answer ------------------------------------------------


def test_a_streamed_tool_round_then_a_whole_answer_both_count(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """An agent generator: round 1 streamed with a tool call, round 2 a plain create().
    The whole answer superseded every chunk, its own or not: the tool round vanished."""

    @inst.track_ai_call("openai", MODEL)
    def agent() -> Iterator[Any]:
        yield chunk(tool_delta(0, "call_a", "{}"), rid="r1")
        yield chunk({}, "tool_calls", rid="r1")
        yield response("stop") | {"id": "r2"}

    list(agent())
    assert reasons(registry) == {"tool_calls": 1, "stop": 1}
    assert tools(registry) == 1


def test_a_whole_response_still_supersedes_its_own_chunks(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """The chunks of a response and its accumulated whole (a stream helper's snapshot)
    tell one story: counted once."""

    @inst.track_ai_call("openai", MODEL)
    def agent() -> Iterator[Any]:
        yield chunk(tool_delta(0, "call_a", "{}"), rid="r1")
        yield chunk({}, "tool_calls", rid="r1")
        yield response("tool_calls", tools=1)  # id r1: the same response, whole

    list(agent())
    assert reasons(registry) == {"tool_calls": 1}
    assert tools(registry) == 1


def test_id_less_chunks_and_their_snapshot_count_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """A server that sends no chunk ids, read through a helper that yields its snapshot
    (with an id of its own) at the end: one story, told twice."""

    def bare(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    @inst.track_ai_call("openai", MODEL)
    def helper() -> Iterator[Any]:
        yield bare(tool_delta(0, "call_a", "{}"))
        yield bare({}, "tool_calls")
        yield response("tool_calls", tools=1) | {"id": "snapshot"}

    list(helper())
    assert reasons(registry) == {"tool_calls": 1}
    assert tools(registry) == 1


# -- 4. attribution values that cannot break a call -------------------------------------------


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_value_whose_str_raises_keeps_the_call(
    attributed: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """str() raising in the guard lost the whole record: calls, tokens, duration,
    operations, errors."""

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: BadStr()})
    def ask(fail: bool) -> dict[str, Any]:
        if fail:
            raise ValueError("upstream")
        return response()

    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert ask(False) == response()
        with pytest.raises(ValueError, match="upstream"):
            ask(True)
    assert tenants(registry) == {"": 2}
    labels = {"provider": "openai", "model": MODEL, "tenant": ""}
    assert counted(registry, "ai_tokens_used_total", token_type="input", **labels) == 3
    assert counted(registry, "ai_call_duration_seconds_count", provider="openai", model=MODEL) == 2
    ops = labelled(registry, "codomyrmex_ai_operations_total", "status")
    assert ops == {"success": 1, "error": 1}
    errors = counted(
        registry,
        "ai_api_errors_total",
        provider="openai",
        model=MODEL,
        error_type="ValueError",
        http_status="",
    )
    assert errors == 1
    assert sum("str() of a BadStr value raised" in r.getMessage() for r in caplog.records) == 1


def test_values_become_label_values_without_raising(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["t"]})
    def ask(t: Any) -> dict[str, Any]:
        return response()

    for value in (b"acme", "\udc80x", 42):
        ask(value)
    with attributed.track_ai_call("openai", MODEL) as call:
        call.attribute(tenant="\udc80y")  # a header decoded with surrogateescape
        call.record_response(response())
    with attributed.track_ai_call("openai", MODEL) as call:
        call.attribute(tenant=b"acme")
        call.record_response(response())
    generate_latest(registry)  # every value encodes
    assert tenants(registry) == {"acme": 2, "\\udc80x": 1, "42": 1, "other": 1}


def test_long_values_are_other_and_warnings_never_show_a_value(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(registry=registry, attribution=("tenant",), max_attribution_values=2)

    @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["t"]})
    def ask(t: str) -> dict[str, Any]:
        return response()

    with caplog.at_level(logging.WARNING, logger="instrument"):
        ask("u" * 1_000_000)
        for t in ("other", "alice@example.com", "bob@example.com", "carol@example.com"):
            ask(t)
    got = tenants(registry)
    inst.close()
    # A real tenant named "other" fills a slot; the cap's warning still comes, once.
    assert got == {"other": 4, "alice@example.com": 1}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert sum("more than 2 values" in r.getMessage() for r in caplog.records) == 1
    assert sum("1000000 characters" in r.getMessage() for r in caplog.records) == 1
    assert "example.com" not in text and "uuuu" not in text
    assert len(generate_latest(registry)) < 100_000


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.booleans()))
def test_any_value_records_the_call_and_encodes(value: Any) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, attribution=("tenant",))

    @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: value})
    def ask() -> dict[str, Any]:
        return response()

    assert ask() == response()
    generate_latest(registry)
    got = tenants(registry)
    inst.close()
    assert sum(got.values()) == 1
    (label,) = got
    assert len(label) <= 128 or label == "other"


# -- 5. signals from an attribution callable -----------------------------------------------


def test_a_callables_own_base_exception_does_not_stop_the_function(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    class Custom(BaseException):
        pass

    def boom(args: Any) -> str:
        raise Custom

    ran: list[int] = []

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": boom})
    def ask() -> dict[str, Any]:
        ran.append(1)
        return response()

    assert ask() == response()
    assert ran == [1]
    assert tenants(registry) == {"": 1}


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_interrupts_and_cancellations_propagate(
    attributed: Instrumentation, registry: CollectorRegistry, signal: type[BaseException]
) -> None:
    """A Ctrl-C or a cancellation arriving in the callable is not the callable's bug:
    swallowed, the program would not stop. It propagates as from the function."""

    def interrupted(args: Any) -> str:
        raise signal

    ran: list[int] = []

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": interrupted})
    def ask() -> dict[str, Any]:
        ran.append(1)
        return response()

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": interrupted})
    async def ask_async() -> dict[str, Any]:
        ran.append(1)
        return response()

    with pytest.raises(signal):
        ask()
    with pytest.raises(signal):
        asyncio.run(ask_async())
    assert ran == []
    assert tenants(registry) == {}
    # Nothing was left in flight either.
    assert labelled(registry, "codomyrmex_active_jobs", "job_type") == {}


# -- 6. rate-limit headroom through stream managers and LiteLLM -----------------------------


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[LocalLLMServer]:
    with matrix_server() as server:
        yield server


def headroom(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    return {
        s.labels["limit"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "codomyrmex_ai_rate_limit_remaining"
        and s.labels["provider"] == provider
        and s.labels["model"] == model
    }


OPENAI_LEFT = {"requests": 59, "tokens": 149000}


@pytest.mark.sdk
def test_anthropic_messages_stream_records_headroom(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk = require_sdk("anthropic")
    client = sdk.Anthropic(api_key=KEYS["anthropic"], base_url=llm_server.url, max_retries=0)

    @inst.track_ai_call("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.stream(model=CLAUDE, max_tokens=5, messages=MESSAGES[1:])

    with ask() as stream:
        assert "".join(stream.text_stream)
    assert headroom(registry, "anthropic", CLAUDE) == {
        "requests": 49,
        "tokens": 49,
        "input_tokens": 49,
        "output_tokens": 49,
    }


@pytest.mark.sdk
@pytest.mark.parametrize("helper", ["chat_stream", "responses_stream", "streaming_response"])
def test_openai_stream_managers_record_headroom(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry, helper: str
) -> None:
    sdk = require_sdk("openai")
    client = sdk.OpenAI(api_key=KEYS["openai"], base_url=llm_server.base_url, max_retries=0)

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        if helper == "chat_stream":
            return client.chat.completions.stream(model=GPT, messages=MESSAGES)
        if helper == "responses_stream":
            return client.responses.stream(model=GPT, input="hi")
        return client.chat.completions.with_streaming_response.create(model=GPT, messages=MESSAGES)

    with ask() as entered:
        if helper == "streaming_response":
            entered.parse()
        else:
            for _ in entered:
                pass
    assert headroom(registry, "openai", GPT) == OPENAI_LEFT
    assert labelled(registry, "codomyrmex_ai_api_calls_total", "status") == {"success": 1}


@pytest.mark.sdk
def test_litellm_completion_records_headroom(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    litellm = require_sdk("litellm")

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        return litellm.completion(
            model=f"openai/{GPT}",
            api_base=llm_server.base_url,
            api_key=KEYS["openai"],
            messages=MESSAGES,
            max_retries=0,
            num_retries=0,
        )

    ask()
    assert headroom(registry, "openai", GPT) == OPENAI_LEFT


def test_litellm_additional_headers_are_read() -> None:
    """The copy LiteLLM keeps when it has no raw headers: a provider's own under its
    ``llm_provider-`` prefix."""
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    result = SimpleNamespace(
        _hidden_params={
            "additional_headers": {"llm_provider-anthropic-ratelimit-requests-remaining": "7"}
        },
        usage=ASK,
    )

    @inst.track_ai_call("anthropic", CLAUDE)
    def ask() -> Any:
        return result

    ask()
    got = headroom(registry, "anthropic", CLAUDE)
    inst.close()
    assert got == {"requests": 7}


def test_a_returned_429_records_its_retry_after(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    httpx = pytest.importorskip("httpx")
    limited = httpx.Response(
        429,
        headers={"retry-after": "5", "x-ratelimit-remaining-requests": "0"},
        json={"error": "slow down"},
    )
    with inst.track_ai_call("openai", MODEL) as call:
        call.record_response(limited)
    assert sample(registry, "ai_retry_after_seconds", provider="openai", model=MODEL) == 5
    assert headroom(registry, "openai", MODEL) == {"requests": 0}
    # A 200's retry-after (some proxies send one) is no rate limit.
    ok = httpx.Response(200, headers={"retry-after": "9"}, json=response())
    with inst.track_ai_call("openai", MODEL) as call:
        call.record_response(ok)
    assert sample(registry, "ai_retry_after_seconds", provider="openai", model=MODEL) == 5


# -- 7. clashes refused, undeclared labels warned --------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"pushgateway": "http://127.0.0.1:9", "grouping_key": {"tenant": "eu"}},
        {"remote_write": "http://127.0.0.1:9/api/v1/write", "external_labels": {"tenant": "eu"}},
    ],
)
def test_an_attribution_label_named_like_a_delivery_label_is_refused(
    options: dict[str, Any],
) -> None:
    """The gateway answers 400 to every push whose samples hold a grouping label; remote
    write would give every tenant the external label's value."""
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="'tenant' is also an attribution label"):
        Instrumentation(registry=registry, attribution=("tenant",), **options)
    assert list(registry.collect()) == []  # refused before the registry was touched


def test_undeclared_attribution_is_warned_once_each(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    plain = Instrumentation(registry=registry)
    with caplog.at_level(logging.WARNING, logger="instrument"):

        @plain.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: "acme"})
        def ask() -> dict[str, Any]:
            return response()

        ask()
        ask()
        block = plain.track_ai_call("openai", MODEL)
        with block as call:
            call.attribute(tenat="acme")
            call.record_response(response())
        with block as call:
            call.attribute(tenat="acme")
    plain.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'tenant' is not among" in m for m in messages) == 1
    assert sum("'tenat' is not among" in m for m in messages) == 1
    assert labelled(registry, "codomyrmex_ai_api_calls_total", "status") == {"success": 4}


def test_a_trackers_attribution_applies_in_a_with_block(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    tracker = attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: "acme"})
    with tracker as call:
        call.record_response(response())
    with tracker as call:
        call.attribute(tenant="globex")  # the block's own value wins
        call.record_response(response())
    assert tenants(registry) == {"acme": 1, "globex": 1}


# -- 9. mocks and self-referencing results -------------------------------------------------


def test_a_mock_result_is_read_in_bounded_time(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """A mock makes every attribute: ``data`` and ``chunk`` were followed to the
    recursion limit, about a second per call. Compared with a plain object's cost."""

    @inst.track_ai_call("openai", MODEL)
    def ask(result: Any) -> Any:
        return result

    plain = SimpleNamespace()
    ask(Mock())
    ask(plain)

    def cost(result: Any) -> float:
        start = time.perf_counter()
        for _ in range(20):
            ask(result)
        return time.perf_counter() - start

    assert cost(Mock()) < 50 * cost(plain) + 0.05
    assert labelled(registry, "codomyrmex_ai_api_calls_total", "status") == {"success": 42}


def test_a_self_referencing_holder_is_read_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    holder = SimpleNamespace(usage=ASK)
    holder.data = holder

    @inst.track_ai_call("openai", MODEL)
    def ask() -> Any:
        return holder

    assert ask() is holder
    assert labelled(registry, "codomyrmex_ai_tokens_used_total", "token_type") == {
        "input": 3,
        "output": 1,
    }


# -- 10. custom tool calls ---------------------------------------------------------------


def test_responses_custom_tool_calls_count(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [
                {"type": "custom_tool_call", "call_id": "c1", "name": "grep", "input": "x"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "message", "content": []},
            ],
        }

    ask()
    assert tools(registry) == 2


# -- 11. the cap across multiprocess workers ----------------------------------------------


@pytest.mark.subprocess
def test_recycled_workers_share_the_attribution_cap(tmp_path: Path) -> None:
    """Each worker had its own guard: three worker lifetimes (gunicorn's max_requests)
    with a cap of 2 gave 6 tenants. A guard now starts from the directory's values."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    worker = """
        from prometheus_client import CollectorRegistry
        from instrument import Instrumentation

        inst = Instrumentation(
            registry=CollectorRegistry(), attribution=("tenant",), max_attribution_values=2
        )

        @inst.track_ai_call("openai", "gpt-4o", attribution={"tenant": lambda a: a["t"]})
        def ask(t):
            return {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}

        for i in range(5):
            ask(f"w{WORKER}-{i}")
        inst.close()
    """
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    for n in range(3):
        done = run_script(tmp_path / f"worker{n}.py", worker.replace("WORKER", str(n)), env)
        assert done.returncode == 0, done.stderr
    collect = """
        import json
        from prometheus_client import CollectorRegistry, multiprocess

        out = CollectorRegistry()
        multiprocess.MultiProcessCollector(out)
        found = {}
        for m in out.collect():
            for s in m.samples:
                if s.name == "codomyrmex_ai_api_calls_total" and s.value:
                    found[s.labels["tenant"]] = found.get(s.labels["tenant"], 0) + s.value
        print(json.dumps(found))
    """
    done = run_script(tmp_path / "collect.py", collect, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"w0-0": 1, "w0-1": 1, "other": 13}
