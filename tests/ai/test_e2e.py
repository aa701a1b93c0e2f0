"""End to end: decorated functions call the local OpenAI-compatible server over HTTP, and
the tokens, calls and errors land on a real Pushgateway with exact values."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.demo.llm_server import (
    DEFAULT_COMPLETION_TOKENS,
    DEMO_FAILING_MODEL,
    DEMO_MODELS,
    DEMO_PROMPTS,
    LocalLLMServer,
    count_tokens,
    iter_chunks,
    run_demo_calls,
)

from ..servers import Pushgateway

pytestmark = pytest.mark.integration

PROMPT = "Summarise the complexity report of module indexer in one line"  # 11 tokens


def request(model: str, max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},  # 3 tokens
            {"role": "user", "content": PROMPT},
        ],
        "max_completion_tokens": max_tokens,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


PROMPT_TOKENS = 3 + count_tokens(PROMPT)


async def test_plain_and_streamed_calls_reach_the_pushgateway(
    registry: CollectorRegistry, pushgateway: Pushgateway, job_name: str
) -> None:
    inst = Instrumentation(
        registry=registry, pushgateway=pushgateway.url, job=job_name, push_mode="each"
    )
    track = inst.track_ai_call("openai", None)
    try:
        async with LocalLLMServer() as server, aiohttp.ClientSession() as session:

            @track
            async def complete(model: str, max_tokens: int) -> dict[str, Any]:
                async with session.post(
                    server.completions_url, json=request(model, max_tokens)
                ) as response:
                    response.raise_for_status()
                    answer: dict[str, Any] = await response.json()
                    return answer

            @track
            async def stream(model: str, max_tokens: int) -> AsyncIterator[dict[str, Any]]:
                async with session.post(
                    server.completions_url, json=request(model, max_tokens, stream=True)
                ) as response:
                    response.raise_for_status()
                    async for chunk in iter_chunks(response):
                        yield chunk

            answer = await complete("gpt-4o-mini", 5)
            assert answer["usage"]["prompt_tokens"] == PROMPT_TOKENS
            assert len(answer["choices"][0]["message"]["content"].split()) == 5
            chunks = [c async for c in stream("gpt-4o-mini", 7)]
            assert chunks[-1]["choices"] == []
            assert chunks[-1]["usage"]["completion_tokens"] == 7
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
            assert len(text.split()) == 7
            await complete("gpt-4o", 3)
            with pytest.raises(aiohttp.ClientResponseError):
                await complete("", 3)  # the server rejects it: 400

        def value(name: str, **labels: str) -> float | None:
            return pushgateway.value(
                f"codomyrmex_{name}", job=job_name, provider="openai", **labels
            )

        assert value("ai_tokens_used_total", model="gpt-4o-mini", token_type="input") == (
            2 * PROMPT_TOKENS
        )
        assert value("ai_tokens_used_total", model="gpt-4o-mini", token_type="output") == 12
        assert value("ai_tokens_used_total", model="gpt-4o", token_type="output") == 3
        assert value("ai_api_calls_total", model="gpt-4o-mini", status="success") == 2
        assert value("ai_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
        assert value("ai_call_duration_seconds_count", model="gpt-4o-mini") == 2
        assert value("ai_api_calls_total", model="unknown", status="error") == 1
        assert (
            value(
                "ai_api_errors_total",
                model="unknown",
                error_type="ClientResponseError",
                http_status="400",
            )
            == 1
        )
        assert pushgateway.value("codomyrmex_active_jobs", job=job_name, job_type="ai_call") == 0
    finally:
        await inst.aclose()


async def test_a_returned_stream_is_pushed_when_it_ends(
    registry: CollectorRegistry, pushgateway: Pushgateway, job_name: str
) -> None:
    inst = Instrumentation(
        registry=registry, pushgateway=pushgateway.url, job=job_name, push_mode="each"
    )
    failing = "gpt-4o-overloaded"
    try:
        async with (
            LocalLLMServer(chunk_delay=0.001, failures={failing: 429}) as server,
            aiohttp.ClientSession() as session,
        ):

            @inst.track_ai_call("local", None)
            async def open_stream(model: str) -> AsyncIterator[dict[str, Any]]:
                response = await session.post(
                    server.completions_url, json=request(model, 4, stream=True)
                )
                response.raise_for_status()
                return iter_chunks(response)  # handed back: the call ends with the stream

            chunks = await open_stream("llama-3.1-8b")
            # Returned, not yet read: the call is still in flight on the gateway too.
            assert (
                pushgateway.value("codomyrmex_active_jobs", job=job_name, job_type="ai_call")
                is None
            )
            received = [c async for c in chunks]
            assert received[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS
            with pytest.raises(aiohttp.ClientResponseError) as raised:
                await open_stream(failing)
            assert raised.value.status == 429

        def value(name: str, **labels: str) -> float | None:
            return pushgateway.value(f"codomyrmex_{name}", job=job_name, provider="local", **labels)

        model = "llama-3.1-8b"
        assert value("ai_tokens_used_total", model=model, token_type="input") == PROMPT_TOKENS
        assert value("ai_tokens_used_total", model=model, token_type="output") == 4
        assert value("ai_api_calls_total", model=model, status="success") == 1
        assert value("ai_time_to_first_token_seconds_count", model=model) == 1
        errors = value(
            "ai_api_errors_total",
            model=failing,
            error_type="ClientResponseError",
            http_status="429",
        )
        assert errors == 1
    finally:
        await inst.aclose()


def test_sync_caller_with_the_server_in_a_thread(
    registry: CollectorRegistry, pushgateway: Pushgateway, job_name: str
) -> None:
    inst = Instrumentation(registry=registry, pushgateway=pushgateway.url, job=job_name)
    try:
        with LocalLLMServer() as server:

            @inst.track_ai_call("openai", "gpt-4o")
            def complete(max_tokens: int) -> dict[str, Any]:
                body = json.dumps(request("gpt-4o", max_tokens)).encode()
                http = urllib.request.Request(
                    server.completions_url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(http, timeout=5) as response:
                    answer: dict[str, Any] = json.loads(response.read())
                    return answer

            complete(2)
            complete(9)
        assert inst.push()
        tokens = "codomyrmex_ai_tokens_used_total"
        labels = {"job": job_name, "provider": "openai", "model": "gpt-4o"}
        assert pushgateway.value(tokens, token_type="input", **labels) == 2 * PROMPT_TOKENS
        assert pushgateway.value(tokens, token_type="output", **labels) == 11
        assert pushgateway.value("codomyrmex_ai_api_calls_total", status="success", **labels) == 2
        assert (
            registry.get_sample_value(
                "codomyrmex_ai_api_calls_total",
                {"provider": "openai", "model": "gpt-4o", "status": "success"},
            )
            == 2
        )
    finally:
        inst.close()


def test_the_demo_calls(registry: CollectorRegistry) -> None:
    inst = Instrumentation(registry=registry)
    run_demo_calls(inst)
    prompt_tokens = sum(count_tokens(prompt) for prompt, _ in DEMO_PROMPTS)
    reply_tokens = sum(max_tokens for _, max_tokens in DEMO_PROMPTS)
    for model in DEMO_MODELS:
        labels = {"provider": "openai", "model": model}
        calls = registry.get_sample_value(
            "codomyrmex_ai_api_calls_total", {**labels, "status": "success"}
        )
        assert calls == 2 * len(DEMO_PROMPTS)
        for token_type, count in (("input", prompt_tokens), ("output", reply_tokens)):
            assert (
                registry.get_sample_value(
                    "codomyrmex_ai_tokens_used_total", {**labels, "token_type": token_type}
                )
                == 2 * count
            )
        assert registry.get_sample_value(
            "codomyrmex_ai_time_to_first_token_seconds_count", labels
        ) == len(DEMO_PROMPTS)
    errors = registry.get_sample_value(
        "codomyrmex_ai_api_errors_total",
        {
            "provider": "openai",
            "model": DEMO_FAILING_MODEL,
            "error_type": "ClientResponseError",
            "http_status": "429",
        },
    )
    assert errors == 1
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0
    inst.close()


async def test_the_server_answers_bad_requests_like_openai(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    async with LocalLLMServer() as server, aiohttp.ClientSession() as session:

        @inst.track_ai_call("openai", "gpt-4o")
        async def post(body: Any) -> dict[str, Any]:
            async with session.post(server.completions_url, data=body) as response:
                answer: dict[str, Any] = await response.json()
                if response.status != 200:
                    assert answer["error"]["type"] == "invalid_request_error"
                response.raise_for_status()
                return answer

        for bad in (
            b"{not json",
            b"[1, 2]",
            json.dumps({"model": "gpt-4o", "messages": []}),
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            json.dumps({"model": "gpt-4o", "messages": ["hi"]}),
            json.dumps({"model": "gpt-4o", "messages": [{"content": "a"}], "max_tokens": 0}),
        ):
            with pytest.raises(aiohttp.ClientResponseError):
                await post(bad)
        parts = {"role": "user", "content": [{"type": "text", "text": "two words"}, {"x": 1}]}
        answer = await post(json.dumps({"model": "gpt-4o", "messages": [parts]}))
        assert answer["usage"]["prompt_tokens"] == 2
        assert answer["usage"]["completion_tokens"] == DEFAULT_COMPLETION_TOKENS
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert len(server.requests) == 5  # the two that are not JSON objects are not kept
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert (
        registry.get_sample_value(
            "codomyrmex_ai_api_errors_total",
            {**labels, "error_type": "ClientResponseError", "http_status": "400"},
        )
        == 6
    )
    assert (
        registry.get_sample_value(
            "codomyrmex_ai_tokens_used_total", {**labels, "token_type": "input"}
        )
        == 2
    )
