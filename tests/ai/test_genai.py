"""Issue 15: the operation as a dimension, finish reasons and tool calls.

Finish reasons are checked on every successful path of the SDK matrix (the real SDKs
against the local wire-format server); tool calls on the SDKs' own response and chunk
types, validated from the JSON the providers send, and on plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.demo.llm_server import LocalLLMServer

from ..conftest import E2EWorkload
from ..support import counted, require_sdk
from ..test_dashboard import by_labels
from ..test_dashboard import run as run_panel
from .test_sdk_matrix import CASES, Case, Ctx, matrix_server, run

MODEL = "gpt-4o"


def reasons(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    """Every finish_reason of (provider, model) with its count, as a user would list them."""
    found: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != "codomyrmex_ai_finish_reasons":
            continue
        for s in metric.samples:
            if (
                s.name.endswith("_total")
                and s.labels["provider"] == provider
                and s.labels["model"] == model
            ):
                found[s.labels["finish_reason"]] = s.value
    return found


def tools(registry: CollectorRegistry, provider: str = "openai", model: str = MODEL) -> float:
    return counted(registry, "ai_tool_calls_total", provider=provider, model=model)


def operations(registry: CollectorRegistry, operation: str, status: str = "success") -> float:
    return counted(
        registry,
        "ai_operations_total",
        provider="openai",
        model=MODEL,
        operation=operation,
        status=status,
    )


# -- operation= --------------------------------------------------------------------------------


def test_operation_defaults_to_chat_and_splits_only_its_own_counter(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("openai", MODEL)
    def chat() -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    @inst.track_ai_call("openai", MODEL, operation="embeddings")
    def embed() -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 5, "total_tokens": 5}}

    @inst.track_ai_call("openai", MODEL, operation="execute_tool")
    def tool() -> None:
        raise TimeoutError("tool hung")

    chat()
    chat()
    embed()
    with pytest.raises(TimeoutError):
        tool()
    with inst.track_ai_call("openai", MODEL, operation="my_rerank"):  # not a well-known name
        pass
    assert operations(registry, "chat") == 2
    assert operations(registry, "embeddings") == 1
    assert operations(registry, "execute_tool", "error") == 1
    assert operations(registry, "execute_tool") == 0
    assert operations(registry, "my_rerank") == 1
    # The seed's counter keeps its labels: every operation in one series per status.
    labels = {"provider": "openai", "model": MODEL}
    assert counted(registry, "ai_api_calls_total", status="success", **labels) == 4
    assert counted(registry, "ai_api_calls_total", status="error", **labels) == 1
    assert counted(registry, "ai_tokens_used_total", token_type="input", **labels) == 11


def test_operation_is_checked_at_decoration(inst: Instrumentation) -> None:
    with pytest.raises(ValueError, match="operation holds a lone surrogate"):
        inst.track_ai_call("openai", MODEL, operation="chat\udc80")
    with pytest.raises(TypeError, match="operation must be a non-empty string"):
        inst.track_ai_call("openai", MODEL, operation="")


def test_operations_of_threads_and_of_a_cancelled_stream_add_up(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    import threading

    @inst.track_ai_call("openai", MODEL, operation="retrieval")
    def fetch() -> None:
        return None

    threads = [threading.Thread(target=lambda: [fetch() for _ in range(250)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    @inst.track_ai_call("openai", MODEL, operation="chat")
    def stream() -> Iterator[dict[str, Any]]:
        yield {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    chunks = stream()
    next(chunks)
    chunks.close()  # left before the end: cancelled, and no finish reason seen
    assert operations(registry, "retrieval") == 1000
    assert operations(registry, "chat", "cancelled") == 1
    assert reasons(registry, "openai", MODEL) == {}


# -- finish reasons on every SDK path ----------------------------------------------------------


def expected_reason(case: Case) -> str:
    """What the local server says each dialect's answer ended with: its default reply is
    not cut, except where the API requires a limit (Anthropic's max_tokens) or the case
    asks for one."""
    if case.sdk == "litellm" and "anthropic/" in case.call:
        return "length"  # LiteLLM answers in OpenAI's shape, with OpenAI's name for it
    if case.provider == "anthropic":
        return "max_tokens"
    if "responses" in case.call:
        return "max_output_tokens" if "max_output_tokens" in case.call else "completed"
    if case.provider == "cohere":
        return "complete"
    return "stop"


SUCCESSES = [c for c in CASES if c.expect.status == "success"]


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[LocalLLMServer]:
    with matrix_server() as server:
        yield server


@pytest.mark.sdk
@pytest.mark.parametrize("case", SUCCESSES, ids=[c.id for c in SUCCESSES])
def test_every_sdk_path_counts_one_finish_reason_per_choice(
    case: Case, llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk = require_sdk(case.sdk)
    run(case, Ctx(llm_server, inst, sdk))
    assert reasons(registry, case.provider, case.model) == {
        expected_reason(case): case.expect.calls
    }
    assert tools(registry, case.provider, case.model) == 0  # the server asks for no tools


# -- tool calls, on the SDKs' own types --------------------------------------------------------


def openai_chunk(sdk: Any, delta: dict[str, Any], finish: str | None = None) -> Any:
    return sdk.types.chat.ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def opening(index: int, call_id: str) -> dict[str, Any]:
    function = {"name": "lookup", "arguments": ""}
    return {"index": index, "id": call_id, "type": "function", "function": function}


def arguments(index: int, text: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": text}}


def test_openai_stream_tool_calls_count_each_call_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Two parallel tool calls, each opened by a delta with its id and continued by
    argument deltas without one: two calls, one finish reason."""
    sdk = require_sdk("openai")
    chunks = [
        openai_chunk(sdk, {"role": "assistant"}),
        openai_chunk(sdk, {"tool_calls": [opening(0, "call_a")]}),
        openai_chunk(sdk, {"tool_calls": [arguments(0, '{"q": ')]}),
        openai_chunk(sdk, {"tool_calls": [arguments(0, '"x"}')]}),
        openai_chunk(sdk, {"tool_calls": [opening(1, "call_b"), arguments(1, "{}")]}),
        openai_chunk(sdk, {}, "tool_calls"),
    ]

    @inst.track_ai_call("openai", MODEL)
    def ask() -> Iterator[Any]:
        return iter(chunks)

    assert list(ask()) == chunks
    assert tools(registry) == 2
    assert reasons(registry, "openai", MODEL) == {"tool_calls": 1}


def test_openai_response_with_two_choices_and_tool_calls(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk = require_sdk("openai")
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    response = sdk.types.chat.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-2",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "tool_calls": [call, {**call, "id": "c2"}]},
                },
                {
                    "index": 1,
                    "finish_reason": "content_filter",
                    "message": {"role": "assistant", "content": None},
                },
            ],
        }
    )
    with inst.track_ai_call("openai", MODEL) as handle:
        assert handle.record_response(response) is response
    assert tools(registry) == 2
    assert reasons(registry, "openai", MODEL) == {"tool_calls": 1, "content_filter": 1}


def test_anthropic_stream_events_and_message(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk = require_sdk("anthropic")
    types = sdk.types
    usage = {"input_tokens": 9, "output_tokens": 1}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    tool = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
    events = [
        types.RawMessageStartEvent.model_validate({"type": "message_start", "message": message}),
        types.RawContentBlockStartEvent.model_validate(
            {"type": "content_block_start", "index": 0, "content_block": tool}
        ),
        types.RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 0}),
        types.RawMessageDeltaEvent.model_validate(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 6},
            }
        ),
        types.RawMessageStopEvent.model_validate({"type": "message_stop"}),
    ]
    with inst.track_ai_call("anthropic", "claude") as call:
        assert list(call.record_response(iter(events))) == events
    whole = types.Message.model_validate(
        {**message, "content": [tool, {**tool, "id": "toolu_2"}], "stop_reason": "tool_use"}
    )
    with inst.track_ai_call("anthropic", "claude") as call:
        call.record_response(whole)
    assert tools(registry, "anthropic", "claude") == 3
    assert reasons(registry, "anthropic", "claude") == {"tool_use": 2}


def test_gemini_candidates_and_function_calls(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    types = require_sdk("google-genai").types
    response = types.GenerateContentResponse.model_validate(
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"function_call": {"name": "f"}}]},
                    "finish_reason": "STOP",
                },
                {
                    "content": {"role": "model", "parts": [{"text": "hi"}]},
                    "finish_reason": "SAFETY",
                },
            ]
        }
    )
    with inst.track_ai_call("gemini", "gemini-2.0-flash") as call:
        call.record_response(response)
    # REST's camelCase, as a dict
    rest = {
        "candidates": [{"finishReason": "MAX_TOKENS", "content": {"parts": [{"functionCall": {}}]}}]
    }
    with inst.track_ai_call("gemini", "gemini-2.0-flash") as call:
        call.record_response(rest)
    assert reasons(registry, "gemini", "gemini-2.0-flash") == {
        "stop": 1,
        "safety": 1,
        "max_tokens": 1,
    }
    assert tools(registry, "gemini", "gemini-2.0-flash") == 2


def test_responses_cohere_and_mistral_shapes(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [{"type": "function_call"}, {"type": "message"}, {"type": "function_call"}],
    }
    incomplete = {
        "id": "resp_2",
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "content_filter"},
        "output": [],
    }
    completed_event = {"type": "response.completed", "response": response}
    with inst.track_ai_call("openai", MODEL) as call:
        call.record_response(response)
        call.record_response(incomplete)

    # The Responses stream's completed event, then the helper's snapshot of the same
    # response (same id): one response, counted once.
    @inst.track_ai_call("openai", MODEL)
    def relay() -> Iterator[Any]:
        yield {"type": "response.created", "response": {**response, "status": "in_progress"}}
        yield completed_event
        yield response

    assert len(list(relay())) == 3
    assert reasons(registry, "openai", MODEL) == {"completed": 2, "content_filter": 1}
    assert tools(registry) == 4

    cohere = {"id": "c1", "finish_reason": "TOOL_CALL", "message": {"tool_calls": [{}, {}]}}
    with inst.track_ai_call("cohere", "command-r") as call:
        call.record_response(cohere)

    @inst.track_ai_call("cohere", "command-r")
    def cohere_stream() -> Iterator[Any]:
        yield {"type": "message-start", "id": "c2"}
        yield {"type": "tool-call-start", "index": 0}
        yield {"type": "message-end", "delta": {"finish_reason": "MAX_TOKENS"}}

    list(cohere_stream())
    assert reasons(registry, "cohere", "command-r") == {"tool_call": 1, "max_tokens": 1}
    assert tools(registry, "cohere", "command-r") == 3

    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    with inst.track_ai_call("mistral", "mistral-small") as call:
        list(call.record_response(iter([{"data": chunk}])))
    assert reasons(registry, "mistral", "mistral-small") == {"length": 1}


@settings(max_examples=60, deadline=None)
@given(reason=st.one_of(st.text(max_size=80), st.integers(), st.none(), st.binary(max_size=8)))
def test_any_finish_reason_leaves_the_call_alone_and_the_registry_readable(reason: Any) -> None:
    """Whatever a server sends as the reason: the response comes back untouched, the call
    is counted, and the registry still serialises (no unencodable or unbounded label)."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    response = {"choices": [{"index": 0, "message": {}, "finish_reason": reason}]}

    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return response

    assert ask() is response
    assert (
        counted(registry, "ai_api_calls_total", provider="openai", model=MODEL, status="success")
        == 1
    )
    generate_latest(registry)
    found = reasons(registry, "openai", MODEL)
    assert sum(found.values()) == (1 if isinstance(reason, str) and reason else 0)
    assert all(len(label) <= 64 and label.isprintable() for label in found)
    if (
        isinstance(reason, str)
        and reason.isascii()
        and reason.isprintable()
        and len(reason) <= 64
        and reason
    ):
        assert found == {reason.lower(): 1}
    inst.close()


# -- the dashboard's LLM outcome panels, against the real Prometheus ---------------------------


@pytest.mark.integration
def test_outcome_panels_show_the_workload(e2e_workload: E2EWorkload) -> None:
    """Per round gpt-4o answers once with a tool call (tool_calls) and streams once cut at
    its limit (length); claude ends its turn once and is rate limited once."""
    truncated = by_labels(
        run_panel(e2e_workload, "AI truncation rate by model"), "provider", "model"
    )
    assert truncated == {("openai", "gpt-4o"): 0.5, ("anthropic", "claude-sonnet"): 0}
    ended = by_labels(run_panel(e2e_workload, "AI finish reasons per second"), "finish_reason")
    assert set(ended) == {("tool_calls",), ("length",), ("end_turn",)}
    tool_calls = by_labels(run_panel(e2e_workload, "AI tool calls per second"), "provider", "model")
    assert list(tool_calls) == [("openai", "gpt-4o")] and tool_calls[("openai", "gpt-4o")] > 0
    mix = by_labels(run_panel(e2e_workload, "AI operation mix"), "operation")
    assert set(mix) == {("chat",)} and mix[("chat",)] > 0  # every call of the workload
    left = by_labels(
        run_panel(e2e_workload, "AI rate-limit headroom"), "provider", "model", "limit"
    )
    assert left == {
        ("openai", "gpt-4o", "requests"): 4999,
        ("openai", "gpt-4o", "tokens"): 29000,
        ("anthropic", "claude-sonnet", "requests"): 0,
    }
    waits = by_labels(run_panel(e2e_workload, "AI retry-after on 429s"), "provider", "model")
    assert waits == {("anthropic", "claude-sonnet"): 7}
