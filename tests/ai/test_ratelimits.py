"""Issue 15: rate-limit headroom and retry-after, read from the headers of what a call
returns or raises: the real SDKs' raw responses, streams and errors against the local
wire-format server (which sends OpenAI's and Anthropic's rate-limit headers), httpx and
aiohttp responses, and hostile header values."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation
from instrument.demo.llm_server import LocalLLMServer

from ..support import counted, require_sdk, sample
from .test_sdk_matrix import CLAUDE, GPT, KEYS, MESSAGES, RATE_LIMITED, matrix_server

pytestmark = pytest.mark.sdk


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[LocalLLMServer]:
    with matrix_server() as server:
        yield server


def headroom(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    """Every limit of (provider, model) with what is left of it, as a user would list them."""
    found: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "codomyrmex_ai_rate_limit_remaining":
            for s in metric.samples:
                if s.labels["provider"] == provider and s.labels["model"] == model:
                    found[s.labels["limit"]] = s.value
    return found


def retry(registry: CollectorRegistry, provider: str, model: str) -> float | None:
    return sample(registry, "ai_retry_after_seconds", provider=provider, model=model)


def openai(server: LocalLLMServer) -> Any:
    sdk = require_sdk("openai")
    return sdk, sdk.OpenAI(api_key=KEYS["openai"], base_url=server.base_url, max_retries=0)


def test_openai_raw_response_and_stream_report_headroom(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    _, client = openai(llm_server)

    @inst.track_ai_call("openai", GPT)
    def raw() -> Any:
        return client.chat.completions.with_raw_response.create(model=GPT, messages=MESSAGES)

    assert raw().parse().usage.prompt_tokens > 0
    assert headroom(registry, "openai", GPT) == {"requests": 59, "tokens": 149000}

    @inst.track_ai_call("openai", "gpt-4o-mini")
    def stream() -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    assert sum(1 for _ in stream()) > 2
    assert headroom(registry, "openai", "gpt-4o-mini") == {"requests": 59, "tokens": 149000}
    assert retry(registry, "openai", GPT) is None  # no 429: no retry-after series


def test_a_parsed_response_has_no_headers_to_read(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """The SDKs' parsed objects keep no headers: nothing is guessed."""
    _, client = openai(llm_server)

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=GPT, messages=MESSAGES)

    ask()
    assert headroom(registry, "openai", GPT) == {}


def test_openai_429_reports_no_headroom_and_its_retry_after(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk, client = openai(llm_server)

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=RATE_LIMITED, messages=MESSAGES)

    with pytest.raises(sdk.RateLimitError):
        ask()
    assert headroom(registry, "openai", GPT) == {"requests": 0, "tokens": 0}
    assert retry(registry, "openai", GPT) == 1
    labels = {"provider": "openai", "model": GPT}
    assert counted(registry, "ai_api_calls_total", status="error", **labels) == 1


def test_anthropic_raw_response_and_429(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk = require_sdk("anthropic")
    client = sdk.AsyncAnthropic(api_key=KEYS["anthropic"], base_url=llm_server.url, max_retries=0)

    @inst.track_ai_call("anthropic", CLAUDE)
    async def raw() -> Any:
        return await client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=5, messages=MESSAGES[1:]
        )

    @inst.track_ai_call("anthropic", CLAUDE)
    async def limited() -> Any:
        return await client.messages.create(model=RATE_LIMITED, max_tokens=5, messages=MESSAGES[1:])

    async def both() -> None:
        await raw()
        limits = {"requests": 49, "tokens": 49, "input_tokens": 49, "output_tokens": 49}
        assert headroom(registry, "anthropic", CLAUDE) == limits
        with pytest.raises(sdk.RateLimitError):
            await limited()

    asyncio.run(both())
    assert headroom(registry, "anthropic", CLAUDE) == {
        "requests": 0,
        "tokens": 0,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    assert retry(registry, "anthropic", CLAUDE) == 1


def test_httpx_and_aiohttp_responses_recorded_in_a_with_block(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    import aiohttp
    import httpx

    body = {"model": GPT, "messages": MESSAGES}
    with inst.track_ai_call("openai", "via-httpx") as call:
        response = httpx.post(llm_server.completions_url, json=body)
        assert call.record_response(response) is response
        call.record_response(response.json())
    assert headroom(registry, "openai", "via-httpx") == {"requests": 59, "tokens": 149000}

    async def post() -> None:
        async with aiohttp.ClientSession() as session:
            async with (
                inst.track_ai_call("openai", "via-aiohttp") as call,
                session.post(llm_server.completions_url, json=body) as answer,
            ):
                call.record_response(answer)
                call.record_response(await answer.json())
            limited = {**body, "model": RATE_LIMITED}
            async with (
                inst.track_ai_call("openai", "via-aiohttp") as call,
                session.post(llm_server.completions_url, json=limited) as answer,
            ):
                try:
                    answer.raise_for_status()
                except aiohttp.ClientResponseError as exc:
                    # aiohttp's error keeps the headers, not the response.
                    assert exc.headers is not None
                    call.record_response(exc)

    asyncio.run(post())
    assert headroom(registry, "openai", "via-aiohttp") == {"requests": 0, "tokens": 0}


def test_retry_after_as_an_http_date(inst: Instrumentation, registry: CollectorRegistry) -> None:
    class RateLimited(Exception):
        status_code = 429

        def __init__(self, headers: dict[str, str]) -> None:
            super().__init__("slow down")
            self.response = SimpleNamespace(headers=headers)

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    with pytest.raises(RateLimited), inst.track_ai_call("openai", GPT):
        raise RateLimited({"Retry-After": later})
    assert 100 < (retry(registry, "openai", GPT) or 0) <= 120
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    with pytest.raises(RateLimited), inst.track_ai_call("openai", GPT):
        raise RateLimited({"retry-after": past})
    assert retry(registry, "openai", GPT) == 0
    # Not a 429: its retry-after (a 503's) is not a rate limit's.
    unavailable = RateLimited({"retry-after": "30"})
    unavailable.status_code = 503  # type: ignore[misc]
    with pytest.raises(RateLimited), inst.track_ai_call("openai", GPT):
        raise unavailable
    assert retry(registry, "openai", GPT) == 0


HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["-1", "nan", "inf", "1e400", "0x10", " 12 ", "١٢", "12.5"]),
    st.binary(max_size=8),
    st.integers(),
    st.none(),
)


@settings(max_examples=80, deadline=None)
@given(requests=HOSTILE, retry_after=HOSTILE)
def test_any_header_value_leaves_the_call_alone(requests: Any, retry_after: Any) -> None:
    """Whatever a server sends: the result and the exception pass untouched, the call is
    counted, only finite non-negative numbers become gauges, and the registry serialises."""
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    headers = {"x-ratelimit-remaining-requests": requests, "retry-after": retry_after}
    response = SimpleNamespace(headers=headers, usage={"prompt_tokens": 1, "completion_tokens": 1})

    class Limited(Exception):
        status_code = 429

    error = Limited()
    error.response = SimpleNamespace(headers=headers)  # type: ignore[attr-defined]

    @inst.track_ai_call("openai", GPT)
    def ask(fail: bool) -> Any:
        if fail:
            raise error
        return response

    assert ask(False) is response
    with pytest.raises(Limited) as raised:
        ask(True)
    assert raised.value is error
    labels = {"provider": "openai", "model": GPT}
    assert counted(registry, "ai_api_calls_total", status="success", **labels) == 1
    assert counted(registry, "ai_api_calls_total", status="error", **labels) == 1
    generate_latest(registry)
    left = headroom(registry, "openai", GPT)
    for value in (*left.values(), retry(registry, "openai", GPT) or 0):
        assert value >= 0 and value != float("inf")
    text = requests.decode("latin-1") if isinstance(requests, bytes) else requests
    if isinstance(text, str):
        try:
            expected = float(text.strip())
        except ValueError:
            expected = None
        if expected is not None and 0 <= expected < float("inf") and len(text) <= 32:
            assert left == {"requests": expected}
            return
    assert left == {}
    inst.close()


def test_headers_that_raise_never_break_the_call(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class Hostile:
        def get(self, name: str) -> str:
            raise RuntimeError("header store gone")

    class Response:
        def __init__(self) -> None:
            self.usage = {"prompt_tokens": 2, "completion_tokens": 1}

        @property
        def headers(self) -> Any:
            return Hostile()

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        return Response()

    assert isinstance(ask(), Response)
    labels = {"provider": "openai", "model": GPT}
    assert counted(registry, "ai_tokens_used_total", token_type="input", **labels) == 2
    assert headroom(registry, "openai", GPT) == {}
