"""track_ai_call against responses and streams that fight back.

Regression tests for issue 10 item 4 (a response that raises when read leaked the job) and
issue 11 defects 1-7 (SDK paths recorded with 0 tokens or a first-event TTFT), then
hostile cases: objects that raise on every kind of access, usage values of every wrong
type, streams abandoned, closed, shared between threads, read after the call ended, and
property tests over usage dicts. Every value is read back from the registry.

The fakes have the SDKs' shapes (attribute names, methods, protocols), not their classes:
the real SDKs are driven against a local server in test_sdk_matrix.py (this directory).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument import ai as ai_module
from instrument.ai import record_abandoned_streams
from instrument.usage import MAX_TOKENS, carries_content

from ..ai_fakes import (
    FakeAsyncStream,
    FakeStream,
    RateLimitError,
    anthropic_events,
    anthropic_message,
    as_object,
    openai_chat,
    openai_chat_chunks,
    openai_response_events,
)
from ..support import (
    FakeClock,
    active,
    ai_duration,
    ai_errors,
    calls,
    in_threads,
    sample,
    token_counts,
    ttft,
)


def missing(registry: CollectorRegistry, provider: str, model: str) -> float | None:
    return sample(registry, "ai_usage_missing_total", provider=provider, model=model)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(autouse=True)
def _no_leftovers() -> None:
    record_abandoned_streams()  # streams other tests left behind


# -- issue 10 item 4: a response that raises when read ---------------------------------------


class RaisingMapping(Mapping[str, Any]):
    """A Mapping whose every read raises: what a lazy SDK mapping does on a dropped
    connection."""

    def __getitem__(self, key: str) -> Any:
        raise ConnectionError("lost while reading " + key)

    def __iter__(self) -> Iterator[str]:
        raise ConnectionError("lost")

    def __len__(self) -> int:
        return 1


class RaisingEverything:
    """Raises on every kind of access a reader could make."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} today")

    def __getitem__(self, key: Any) -> Any:
        raise RuntimeError("no items")

    def __len__(self) -> int:
        raise RuntimeError("no length")

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no equality")

    __hash__ = object.__hash__


class RaisingModelProperty:
    usage = None

    @property
    def model(self) -> str:
        raise RuntimeError("model not loaded")


@pytest.mark.parametrize(
    "make", [RaisingMapping, RaisingEverything, RaisingModelProperty], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("model", ["gpt-4o", None])
def test_a_response_that_raises_when_read_ends_the_job_and_is_counted(
    inst: Instrumentation,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    make: type,
    model: str | None,
) -> None:
    """Regression (issue 10 item 4): active_jobs stayed 1 and the call was never counted."""
    response = make()

    @inst.track_ai_call("openai", model)
    def ask() -> Any:
        return response

    for _ in range(3):
        assert ask() is response
    label = model or "unknown"
    assert active(registry, "ai_call") == 0
    assert calls(registry, "openai", label) == {"success": 3}
    assert ai_duration(registry, "openai", label)[0] == 3
    assert missing(registry, "openai", label) == 3
    # Once per provider and model, naming the type, not once per call.
    (warning,) = warnings_of(caplog)
    assert f"openai/{label}: a call ended without readable usage" in warning
    assert make.__name__ in warning


def test_a_raising_response_in_a_with_block_and_an_async_call(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = inst.track_ai_call("anthropic", "claude")
    with tracker as call:
        call.record_response(RaisingMapping())
        call.add_usage(input_tokens=4, output_tokens=2)

    @tracker
    async def ask() -> Any:
        return RaisingMapping()

    asyncio.run(ask())
    assert calls(registry, "anthropic", "claude") == {"success": 2}
    assert token_counts(registry, "anthropic", "claude") == {"input": 4, "output": 2}
    assert missing(registry, "anthropic", "claude") == 1  # the with-block had usage
    assert active(registry, "ai_call") == 0
    (warning,) = warnings_of(caplog)  # one for the provider and model, whatever went wrong
    assert "anthropic/claude: reading RaisingMapping raised ConnectionError" in warning


def test_stream_chunks_that_raise_on_every_access_pass_through_untouched(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = [RaisingEverything(), RaisingMapping(), *openai_chat_chunks(prompt=7, completion=3)]

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> FakeStream:
        return FakeStream(chunks)

    for _ in range(2):
        received = list(ask())
        assert len(received) == len(chunks)
        assert all(a is b for a, b in zip(received, chunks, strict=True))
    assert calls(registry, "openai", "gpt-4o") == {"success": 2}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 14, "output": 6}
    assert missing(registry, "openai", "gpt-4o") == 0  # the good chunks had usage
    # The chunk that raised is reported once, by class name only. (RaisingEverything's
    # attributes raise too, but as absent fields: it has no usage, which is no failure.)
    (warning,) = warnings_of(caplog)
    assert "reading RaisingMapping raised ConnectionError; its usage is not read" in warning
    assert active(registry, "ai_call") == 0


def test_a_raising_chunk_from_a_generator_function(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def stream() -> Iterator[Any]:
        yield RaisingMapping()
        yield RaisingEverything()
        yield from openai_chat_chunks(prompt=5, completion=3)

    for _ in range(3):
        assert len(list(stream())) == 8
    assert calls(registry, "openai", "gpt-4o") == {"success": 3}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 15, "output": 9}
    assert len(warnings_of(caplog)) == 1


def test_an_exception_text_from_a_response_never_reaches_the_log(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class Leaky(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise KeyError("Authorization: Bearer sk-secret-123")

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    caplog.set_level(logging.DEBUG, logger="instrument")
    inst.track_ai_call("openai", "gpt-4o")(Leaky)()
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert not [r for r in caplog.records if "sk-secret" in r.getMessage() or r.exc_info]


# -- issue 11 (1): both iteration protocols on one object -------------------------------------


class BothProtocols:
    """Like LiteLLM's CustomStreamWrapper: an iterator and an async iterator over the same
    chunks, a context manager both ways, a sync close() and an async aclose()."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = list(chunks)
        self.closed = False

    def __iter__(self) -> BothProtocols:
        return self

    def __next__(self) -> Any:
        if not self._chunks:
            raise StopIteration
        return self._chunks.pop(0)

    def __aiter__(self) -> BothProtocols:
        return self

    async def __anext__(self) -> Any:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    def __enter__(self) -> BothProtocols:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> BothProtocols:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_a_sync_for_over_a_stream_that_is_also_async_is_watched(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    """Regression (issue 11 defect 1): ``for`` bypassed the async-only proxy, the call was
    recorded as cancelled at collection, with 0 tokens and no TTFT."""
    chunks = [as_object(c) for c in openai_chat_chunks(prompt=9, completion=3)]

    @inst.track_ai_call("litellm", "gpt-4o")
    def ask() -> BothProtocols:
        return BothProtocols(chunks)

    stream = ask()
    assert isinstance(stream, BothProtocols)
    clock.advance(0.5)
    received = []
    for chunk in stream:
        received.append(chunk)
        clock.advance(0.25)
    assert all(a is b for a, b in zip(received, chunks, strict=True))
    assert calls(registry, "litellm", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "litellm", "gpt-4o") == {"input": 9, "output": 3}
    assert ttft(registry, "litellm", "gpt-4o") == (1, 0.75)  # the role chunk came first
    assert active(registry, "ai_call") == 0


async def test_an_async_for_over_the_same_kind_of_stream(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("litellm", "gpt-4o")
    async def ask() -> BothProtocols:
        return BothProtocols(openai_chat_chunks(prompt=9, completion=3))

    assert len([c async for c in await ask()]) == 6
    async with await ask() as stream:
        await stream.__anext__()
    assert stream.closed
    assert calls(registry, "litellm", "gpt-4o") == {"success": 1, "cancelled": 1}
    assert token_counts(registry, "litellm", "gpt-4o") == {"input": 9, "output": 3}
    assert active(registry, "ai_call") == 0


async def test_both_protocols_used_on_one_object_count_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    stream = inst.track_ai_call("litellm", "gpt-4o")(
        lambda: BothProtocols(openai_chat_chunks(prompt=9, completion=3))
    )()
    first = next(stream)
    rest = [c async for c in stream]
    assert [first, *rest] == openai_chat_chunks(prompt=9, completion=3)
    assert list(stream) == []
    assert calls(registry, "litellm", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "litellm", "gpt-4o") == {"input": 9, "output": 3}
    stream.close()  # closing after the end changes nothing
    assert calls(registry, "litellm", "gpt-4o") == {"success": 1}


# -- issue 11 (2): raw responses ---------------------------------------------------------------


class RawResponse:
    """Like openai's and anthropic's LegacyAPIResponse: headers, the HTTP response, and a
    parse() that builds the usual object once and caches it."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.http_response = SimpleNamespace(status_code=200, headers={"x-request-id": "r1"})
        self.headers = self.http_response.headers
        self.parsed = 0
        self._cache: dict[Any, Any] = {}

    def parse(self, *, to: Any = None) -> Any:
        if to not in self._cache:
            self.parsed += 1
            self._cache[to] = self._body() if callable(self._body) else self._body
        return self._cache[to]


def test_a_raw_response_is_read_through_its_parse(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Regression (issue 11 defect 2): a success with no tokens and no warning."""
    body = as_object(openai_chat(40, 8, cached=16))
    raw = RawResponse(body)

    @inst.track_ai_call("openai", None)
    def ask() -> RawResponse:
        return raw

    assert ask() is raw  # what the caller gets is unchanged
    assert raw.parse() is body
    assert raw.parsed == 1  # parsed once: the caller got the cached object
    assert calls(registry, "openai", "gpt-4o-2024-08-06") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o-2024-08-06") == {
        "input": 40,
        "output": 8,
        "cache_read": 16,
    }
    assert missing(registry, "openai", "gpt-4o-2024-08-06") == 0


def test_a_raw_response_whose_body_is_a_stream(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    raw = RawResponse(lambda: FakeStream(openai_chat_chunks(prompt=6, completion=3)))

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> RawResponse:
        return raw

    handed = ask()
    assert handed.headers == {"x-request-id": "r1"}
    assert active(registry, "ai_call") == 1  # the stream has not been read yet
    assert len(list(handed.parse())) == 6
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 6, "output": 3}
    assert ttft(registry, "openai", "gpt-4o")[0] == 1
    assert active(registry, "ai_call") == 0


def test_a_raw_response_whose_parse_fails(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Any:
        raise ValueError("not JSON: token=abc")

    raw = RawResponse(broken)
    assert inst.track_ai_call("openai", "gpt-4o")(lambda: raw)() is raw
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert missing(registry, "openai", "gpt-4o") == 1
    (warning,) = warnings_of(caplog)
    assert "reading RawResponse raised ValueError" in warning
    assert "token=abc" not in warning


# -- issue 11 (3): the OpenAI stream helper's events -------------------------------------------


def chat_helper_events(prompt: int, completion: int) -> list[Any]:
    """chat.completions.stream(): chunk events carrying each chunk, then content events."""
    events: list[Any] = []
    for chunk in openai_chat_chunks(prompt=prompt, completion=completion):
        events.append({"type": "chunk", "chunk": chunk, "snapshot": {}})
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                events.append({"type": "content.delta", "delta": choice["delta"]["content"]})
    events.append({"type": "content.done", "content": "Hello there!"})
    return [as_object(e) for e in events]


def test_usage_of_the_openai_stream_helper_is_at_event_chunk_usage(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    """Regression (issue 11 defect 3)."""
    events = chat_helper_events(11, 3)
    with inst.track_ai_call("openai", "gpt-4o") as call:
        clock.advance(0.5)
        for _event in call.record_response(FakeStream(events)):
            clock.advance(0.125)
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 11, "output": 3}
    assert ttft(registry, "openai", "gpt-4o") == (1, 0.625)  # event 1: the first content chunk
    assert missing(registry, "openai", "gpt-4o") == 0


# -- issue 11 (4): Anthropic's text_stream and stream managers --------------------------------


class MessageStream:
    """Like anthropic's MessageStream: events through __next__, ``text_stream`` over the
    same events (bypassing any proxy around this object), and the accumulated message as
    ``current_message_snapshot``, which raises until the first event."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = iter(events)
        self._snapshot: Any = None
        self.text_stream = self._texts()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.__next__()
            except StopIteration:
                return

    def __next__(self) -> Any:
        event = next(self._events)
        if event["type"] == "message_start":
            self._snapshot = as_object(event["message"])
        elif event["type"] == "message_delta":
            self._snapshot.usage.output_tokens = event["usage"]["output_tokens"]
            self._snapshot.stop_reason = event["delta"]["stop_reason"]
        return as_object(event)

    def _texts(self) -> Iterator[str]:
        for event in self:
            if event.type == "content_block_delta":
                yield event.delta.text

    @property
    def current_message_snapshot(self) -> Any:
        assert self._snapshot is not None
        return self._snapshot

    def get_final_message(self) -> Any:
        for _ in self:
            pass
        return self.current_message_snapshot

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> MessageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MessageStreamManager:
    """Like anthropic's MessageStreamManager: the request is made on __enter__."""

    def __init__(self, events: list[dict[str, Any]], error: Exception | None = None) -> None:
        self._events = events
        self._error = error
        self.entered = False
        self.stream: MessageStream | None = None

    def __enter__(self) -> MessageStream:
        self.entered = True
        if self._error is not None:
            raise self._error
        self.stream = MessageStream(self._events)
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()


EVENTS = anthropic_events(25, cache_read=100, cache_creation=50, output_steps=(10, 40))
EVENT_TOKENS = {"input": 175, "output": 40, "cache_read": 100, "cache_creation": 50}


def test_text_stream_after_record_response_keeps_tokens_and_ttft(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    """Regression (issue 11 defect 4): text_stream read the events past the proxy."""
    with inst.track_ai_call("anthropic", "claude") as call:
        stream = call.record_response(MessageStream(EVENTS))
        clock.advance(0.5)
        texts = []
        for text in stream.text_stream:
            texts.append(text)
            clock.advance(0.25)
    assert texts == ["Hello", "!"]
    assert token_counts(registry, "anthropic", "claude") == EVENT_TOKENS
    # The text_stream yields at the first text delta: 0.5 s in, as the events take no time.
    assert ttft(registry, "anthropic", "claude") == (1, 0.5)
    assert calls(registry, "anthropic", "claude") == {"success": 1}


def test_a_returned_manager_is_tracked_from_the_callers_with(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    """Regression (issue 11 defect 4): recorded as a success when returned, before any
    request was sent."""
    manager = MessageStreamManager(EVENTS)

    @inst.track_ai_call("anthropic", "claude")
    def ask() -> MessageStreamManager:
        return manager

    handed = ask()
    assert isinstance(handed, MessageStreamManager)
    assert active(registry, "ai_call") == 1
    assert calls(registry, "anthropic", "claude") == {}
    clock.advance(5.0)  # before the caller enters: no request yet, not part of the call
    with handed as stream:
        assert manager.entered
        clock.advance(0.5)
        texts = []
        for text in stream.text_stream:
            texts.append(text)
            clock.advance(0.25)
        assert calls(registry, "anthropic", "claude") == {"success": 1}
    assert texts == ["Hello", "!"]
    assert stream.closed
    assert token_counts(registry, "anthropic", "claude") == EVENT_TOKENS
    assert ttft(registry, "anthropic", "claude") == (1, 0.5)
    assert ai_duration(registry, "anthropic", "claude") == (1, 1.0)  # from the with, not the call
    assert active(registry, "ai_call") == 0


def test_a_returned_manager_iterated_as_events_or_read_to_its_final_message(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("anthropic", "claude")
    def ask() -> MessageStreamManager:
        return MessageStreamManager(EVENTS)

    with ask() as stream:
        assert len(list(stream)) == len(EVENTS)
    with ask() as stream:
        # Read by the SDK past the proxy: the snapshot has the usage and says it finished.
        assert stream.get_final_message().usage.output_tokens == 40
    with ask() as stream:
        next(stream)  # left after message_start: cancelled, what was reported counts
    assert calls(registry, "anthropic", "claude") == {"success": 2, "cancelled": 1}
    assert token_counts(registry, "anthropic", "claude") == {
        "input": 525,
        "output": 81,
        "cache_read": 300,
        "cache_creation": 150,
    }


def test_a_manager_whose_enter_fails_is_the_calls_error(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    error = RateLimitError("slow down", status_code=429)

    @inst.track_ai_call("anthropic", "claude")
    def ask() -> MessageStreamManager:
        return MessageStreamManager(EVENTS, error=error)

    with pytest.raises(RateLimitError) as raised, ask():
        pass
    assert raised.value is error
    assert calls(registry, "anthropic", "claude") == {"error": 1}
    assert ai_errors(registry, "anthropic", "claude", "RateLimitError", "429") == 1
    assert missing(registry, "anthropic", "claude") == 0  # an error is not a missing usage
    assert active(registry, "ai_call") == 0


def test_a_manager_never_entered_is_cancelled_when_collected(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("anthropic", "claude")
    def ask() -> MessageStreamManager:
        return MessageStreamManager(EVENTS)

    handed = ask()
    del handed
    gc.collect()
    record_abandoned_streams()
    assert calls(registry, "anthropic", "claude") == {"cancelled": 1}
    assert active(registry, "ai_call") == 0


async def test_an_async_manager(inst: Instrumentation, registry: CollectorRegistry) -> None:
    class AsyncManager:
        async def __aenter__(self) -> FakeAsyncStream:
            return FakeAsyncStream(EVENTS)

        async def __aexit__(self, *exc: object) -> None:
            pass

    @inst.track_ai_call("anthropic", "claude")
    def ask() -> AsyncManager:
        return AsyncManager()

    async with ask() as stream:
        assert len([e async for e in stream]) == len(EVENTS)
    assert calls(registry, "anthropic", "claude") == {"success": 1}
    assert token_counts(registry, "anthropic", "claude") == EVENT_TOKENS
    with pytest.raises(TypeError, match="context manager protocol"), ask():
        pass


def test_a_closable_or_iterable_context_manager_is_a_plain_result(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class Response:  # an HTTP response: closable, so no manager to wait for
        usage: ClassVar[dict[str, int]] = {"prompt_tokens": 3, "completion_tokens": 1}

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def close(self) -> None:
            pass

    response = Response()
    assert inst.track_ai_call("openai", "gpt-4o")(lambda: response)() is response
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 3, "output": 1}


# -- issue 11 (5): the first token, not the first event ---------------------------------------


@pytest.mark.parametrize(
    ("chunks", "first"),
    [
        (openai_chat_chunks(), 1),
        (anthropic_events(), 3),
        (openai_response_events(), 1),
        (
            [
                {"choices": [{"delta": {"role": "assistant"}}]},
                {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1"}]}}]},
            ],
            1,
        ),
        (
            [
                {"choices": [{"delta": {"role": "assistant", "content": None}}]},
                {"choices": [{"delta": {"reasoning_content": "Let me think"}}]},
            ],
            1,
        ),
        (
            [
                {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
                {"type": "content_block_start", "content_block": {"type": "thinking"}},
                {
                    "type": "content_block_delta",
                    "delta": {"type": "thinking_delta", "thinking": "Hm"},
                },
            ],
            2,
        ),
        (
            [
                {"type": "message-start", "delta": {"message": {"role": "assistant"}}},
                {"type": "content-start", "delta": {"message": {"content": {"text": ""}}}},
                {"type": "content-delta", "delta": {"message": {"content": {"text": "Hi"}}}},
            ],
            2,
        ),
        (
            [
                {"data": {"choices": [{"delta": {"role": "assistant", "content": ""}}]}},
                {"data": {"choices": [{"delta": {"content": "Bonjour"}}]}},
            ],
            1,
        ),
        ([{"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}], 0),
    ],
    ids=[
        "openai-role-chunk",
        "anthropic-message-start",
        "responses-created",
        "tool-call-delta",
        "reasoning-delta",
        "anthropic-thinking",
        "cohere",
        "mistral",
        "gemini",
    ],
)
@pytest.mark.parametrize("form", ["dict", "object"])
def test_ttft_is_the_first_chunk_with_generated_content(
    inst: Instrumentation,
    registry: CollectorRegistry,
    clock: FakeClock,
    chunks: list[Any],
    first: int,
    form: str,
) -> None:
    """Regression (issue 11 defect 5): the first event was taken as the first token."""
    items = [as_object(c) for c in chunks] if form == "object" else chunks
    assert [carries_content(c) for c in items].index(True) == first

    @inst.track_ai_call("p", "m")
    def ask() -> FakeStream:
        return FakeStream(items)

    for _chunk in ask():
        clock.advance(0.25)
    assert ttft(registry, "p", "m") == (1, 0.25 * first)


def test_a_stream_without_content_has_no_ttft(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    chunks = [openai_chat_chunks()[0], openai_chat_chunks()[-1]]  # role, then usage
    assert len(list(inst.track_ai_call("openai", "gpt-4o")(lambda: FakeStream(chunks))())) == 2
    assert ttft(registry, "openai", "gpt-4o") == (None, None)
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 30, "output": 3}


# -- issue 11 (6) and (7): Mistral, Cohere, cache writes --------------------------------------


def test_mistral_stream_usage_at_event_data_usage(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Regression (issue 11 defect 6)."""
    events = [as_object({"data": c}) for c in openai_chat_chunks(prompt=12, completion=3)]
    assert len(list(inst.track_ai_call("mistral", None)(lambda: FakeStream(events))())) == 6
    assert token_counts(registry, "mistral", "gpt-4o-mini-2024-07-18") == {"input": 12, "output": 3}


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"tokens": {"input_tokens": 40.0, "output_tokens": 9.0}, "cached_tokens": 8.0},
            {"input": 40, "output": 9, "cache_read": 8},
        ),
        ({"billed_units": {"input_tokens": 30, "output_tokens": 7}}, {"input": 30, "output": 7}),
        (
            {
                "billed_units": {"input_tokens": 30, "output_tokens": 7},
                "tokens": {"input_tokens": 44, "output_tokens": 7},
            },
            {"input": 30, "output": 7},
        ),
    ],
    ids=["tokens", "billed-units", "billed-units-first"],
)
@pytest.mark.parametrize("form", ["dict", "object"])
def test_cohere_v2_usage(
    inst: Instrumentation,
    registry: CollectorRegistry,
    usage: dict[str, Any],
    expected: dict[str, int],
    form: str,
) -> None:
    """Regression (issue 11 defect 6): plain and as the message-end event's delta."""
    plain = {"id": "c1", "finish_reason": "COMPLETE", "usage": usage}
    end = {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": usage}}
    if form == "object":
        plain, end = as_object(plain), as_object(end)
    with inst.track_ai_call("cohere", "command-a") as call:
        call.record_response(plain)
    assert token_counts(registry, "cohere", "command-a") == expected
    list(inst.track_ai_call("cohere", "command-b")(lambda: FakeStream([end]))())
    assert token_counts(registry, "cohere", "command-b") == expected


def test_an_unreadable_usage_block_warns_once_not_at_debug(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 11 defect 6): a usage of no known shape was only a debug line."""
    tracker = inst.track_ai_call("newcloud", "m1")
    for _ in range(5):
        tracker(lambda: {"usage": {"units_in": 3, "units_out": 4}})()
    assert calls(registry, "newcloud", "m1") == {"success": 5}
    assert missing(registry, "newcloud", "m1") == 5
    (warning,) = warnings_of(caplog)
    assert "newcloud/m1: a call ended without readable usage in its response (dict)" in warning
    assert "codomyrmex_ai_usage_missing_total" in warning
    assert "usage=" in warning


@pytest.mark.parametrize("form", ["dict", "object"])
def test_cache_writes_in_openai_shaped_usage(
    inst: Instrumentation, registry: CollectorRegistry, form: str
) -> None:
    """Regression (issue 11 defect 7): the openai SDK's prompt_tokens_details.
    cache_write_tokens and LiteLLM's cache_creation_input_tokens beside prompt_tokens."""
    openai_shape = openai_chat(1200, 30, cached=800)
    openai_shape["usage"]["prompt_tokens_details"]["cache_write_tokens"] = 300
    litellm_shape = openai_chat(1200, 30, cached=800)
    litellm_shape["usage"]["cache_read_input_tokens"] = 800
    litellm_shape["usage"]["cache_creation_input_tokens"] = 300
    no_details = {"usage": {"prompt_tokens": 1200, "completion_tokens": 30,
                            "cache_read_input_tokens": 800, "cache_creation_input_tokens": 300}}  # fmt: skip
    inst.set_prices(
        {
            "m": {
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                "cache_read_input_token_cost": 1e-07,
                "cache_creation_input_token_cost": 1.25e-06,
            }
        }
    )
    for response in (openai_shape, litellm_shape, no_details):
        with inst.track_ai_call("p", "m") as call:
            call.record_response(as_object(response) if form == "object" else response)
    assert token_counts(registry, "p", "m") == {
        "input": 3600,
        "output": 90,
        "cache_read": 2400,
        "cache_creation": 900,
    }
    assert sample(registry, "ai_cost_usd_total", provider="p", model="m") == pytest.approx(
        3 * (100 * 1e-06 + 800 * 1e-07 + 300 * 1.25e-06 + 30 * 2e-06)
    )


# -- the usage_missing counter -----------------------------------------------------------------


def test_usage_missing_counts_calls_that_ran_without_usage(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = inst.track_ai_call("openai", "gpt-4o")
    with tracker:
        pass  # nothing recorded
    no_usage = openai_chat_chunks(include_usage=False)  # stream_options not set
    assert len(list(tracker(lambda: FakeStream(no_usage))())) == len(no_usage)
    tracker(lambda: openai_chat(5, 2))()  # has usage
    with pytest.raises(RateLimitError), tracker:
        raise RateLimitError()  # failed: not billed, not missing
    stream = tracker(lambda: FakeStream(openai_chat_chunks()))()
    next(stream)
    stream.close()  # left before the usage chunk: missing too
    assert calls(registry, "openai", "gpt-4o") == {"success": 3, "error": 1, "cancelled": 1}
    assert missing(registry, "openai", "gpt-4o") == 3
    (warning,) = warnings_of(caplog)
    assert "no response was recorded" in warning
    assert "include_usage" in warning


def test_usage_missing_is_per_model_and_warns_per_model(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @inst.track_ai_call("openai", None)
    def ask(model: str) -> dict[str, Any]:
        return {"model": model}

    for model in ("a", "b", "a", "b", "a"):
        ask(model)
    assert missing(registry, "openai", "a") == 3
    assert missing(registry, "openai", "b") == 2
    assert sorted(w.split(":")[1] for w in warnings_of(caplog)) == [" openai/a", " openai/b"]


# -- streams abandoned, closed, shared, read late ---------------------------------------------


def test_a_stream_read_from_two_threads_counts_each_chunk_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    chunks = anthropic_events(9, output_steps=tuple(range(1, 400)))
    lock = threading.Lock()

    class Shared(FakeStream):
        def __next__(self) -> Any:
            with lock:  # the SDK stream itself is not thread-safe; the proxy must not care
                return super().__next__()

    stream = inst.track_ai_call("anthropic", "claude")(lambda: Shared(chunks))()
    seen: list[int] = []

    def drain() -> None:
        seen.append(sum(1 for _ in stream))

    in_threads(drain, 2)
    assert sum(seen) == len(chunks)
    assert calls(registry, "anthropic", "claude") == {"success": 1}
    assert token_counts(registry, "anthropic", "claude") == {"input": 9, "output": 399}
    assert active(registry, "ai_call") == 0


def test_a_stream_iterated_after_its_with_block_ended(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    with inst.track_ai_call("openai", "gpt-4o") as call:
        stream = call.record_response(FakeStream(openai_chat_chunks(prompt=8, completion=3)))
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert len(list(stream)) == 6  # read later: passes through, records nothing more
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 0, "output": 0}
    assert missing(registry, "openai", "gpt-4o") == 1
    assert active(registry, "ai_call") == 0


def test_streams_dropped_in_every_state(inst: Instrumentation, registry: CollectorRegistry) -> None:
    tracker = inst.track_ai_call("openai", "gpt-4o")
    untouched = tracker(lambda: FakeStream(openai_chat_chunks()))()
    started = tracker(lambda: FakeStream(openai_chat_chunks(prompt=4, completion=3)))()
    for _ in range(4):
        next(started)
    finished = tracker(lambda: FakeStream(openai_chat_chunks(prompt=2, completion=3)))()
    list(finished)
    del untouched, started, finished
    gc.collect()
    record_abandoned_streams()
    record_abandoned_streams()
    assert calls(registry, "openai", "gpt-4o") == {"success": 1, "cancelled": 2}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 2, "output": 3}
    assert missing(registry, "openai", "gpt-4o") == 2
    assert active(registry, "ai_call") == 0


async def test_an_async_stream_closed_twice_and_a_consumer_failure(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    async def ask() -> FakeAsyncStream:
        return FakeAsyncStream(openai_chat_chunks(prompt=3, completion=3))

    stream = await ask()
    await stream.__anext__()
    await stream.close()
    await stream.close()
    failing = await ask()
    with pytest.raises(ZeroDivisionError):
        async for _chunk in failing:
            1 / 0  # noqa: B018
    assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
    assert active(registry, "ai_call") == 1  # still open: its consumer failed, the stream did not
    del failing
    gc.collect()
    record_abandoned_streams()
    assert calls(registry, "openai", "gpt-4o") == {"cancelled": 2}
    assert active(registry, "ai_call") == 0


def test_a_substream_attribute_that_is_not_an_iterator_is_untouched(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    sdk_stream = FakeStream(openai_chat_chunks())
    stream = inst.track_ai_call("openai", "gpt-4o")(lambda: sdk_stream)()
    assert stream.response is sdk_stream.response
    assert stream._chunks is sdk_stream._chunks
    with pytest.raises(AttributeError):
        _ = stream.no_such_attribute
    list(stream)
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}


# -- property tests: usage dicts --------------------------------------------------------------

_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_TOKENS + 1, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda f: not (f.is_integer() and 0 <= f <= MAX_TOKENS)
    ),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
_RIGHT = st.one_of(
    st.integers(min_value=0, max_value=MAX_TOKENS),
    st.integers(min_value=0, max_value=10**6).map(float),
)
_COUNT = st.one_of(_RIGHT, _WRONG)


def _is_valid(value: Any) -> bool:
    """A token count as a response may carry it: an int or an integral float, 0 to 2**53."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_TOKENS
    return isinstance(value, int) and 0 <= value <= MAX_TOKENS


def _valid(value: Any) -> int:
    return int(value) if _is_valid(value) else 0


@given(prompt=_COUNT, completion=_COUNT, cached=_COUNT, reasoning=_COUNT)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_openai_usage_counts_exactly_the_valid_fields(
    prompt: Any, completion: Any, cached: Any, reasoning: Any
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    response = {
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    }
    # The block is OpenAI-shaped when it reports prompt or completion tokens at all; its
    # details alone are no usage.
    shaped = prompt is not None or completion is not None
    try:
        assert inst.track_ai_call("openai", "m")(lambda: response)() is response
        counts = token_counts(registry, "openai", "m")
        assert all(v >= 0 for v in counts.values())
        expected = {
            "input": _valid(prompt),
            "output": _valid(completion),
            "cache_read": _valid(cached),
            "reasoning": _valid(reasoning),
        }
        if not shaped:
            expected = {"input": 0, "output": 0}
        assert counts == {k: v for k, v in expected.items() if v or k in ("input", "output")}
        assert calls(registry, "openai", "m") == {"success": 1}
        values = (prompt, completion, cached, reasoning)
        has_usage = shaped and any(_is_valid(v) for v in values)
        assert missing(registry, "openai", "m") == (0 if has_usage else 1)
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


@given(
    input_tokens=_COUNT,
    cache_read=_COUNT,
    cache_creation=_COUNT,
    steps=st.lists(_COUNT, min_size=1, max_size=4),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_anthropic_stream_usage_is_never_negative_and_never_raises(
    input_tokens: Any, cache_read: Any, cache_creation: Any, steps: list[Any]
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    start = anthropic_message(0, 0)
    start["usage"] = {
        "input_tokens": input_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
        "output_tokens": 0,
    }
    events = [{"type": "message_start", "message": start}]
    events += [{"type": "message_delta", "delta": {}, "usage": {"output_tokens": s}} for s in steps]
    try:
        assert list(inst.track_ai_call("anthropic", "m")(lambda: FakeStream(events))()) == events
        counts = token_counts(registry, "anthropic", "m")
        read, written = _valid(cache_read), _valid(cache_creation)
        # A counter is a float: a sum past 2**53 is the float nearest to it.
        assert counts["input"] == float(_valid(input_tokens) + read + written)
        assert counts["output"] == max([_valid(s) for s in steps])
        assert counts.get("cache_read", 0) == read
        assert counts.get("cache_creation", 0) == written
        assert calls(registry, "anthropic", "m") == {"success": 1}
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


@given(value=_WRONG)
@settings(max_examples=60, deadline=None)
def test_add_usage_refuses_what_a_response_could_not_carry(value: Any) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:
        with inst.track_ai_call("openai", "m") as call, pytest.raises((TypeError, ValueError)):
            call.add_usage(input_tokens=value)
        assert token_counts(registry, "openai", "m") == {"input": 0, "output": 0}
    finally:
        inst.close()


def test_ai_module_keeps_no_sdk_import() -> None:
    import sys
    from pathlib import Path

    sources = {p.name: p.read_text() for p in Path(ai_module.__file__ or "").parent.glob("*.py")}
    assert "__init__.py" in sources and "_usage.py" in sources
    for name, source in sources.items():
        for sdk in ("openai", "anthropic", "google.genai", "mistralai", "cohere", "litellm"):
            assert f"import {sdk}" not in source, name
            assert f"from {sdk}" not in source, name
    assert "instrument.ai" in sys.modules


# -- found by the SDK matrix -------------------------------------------------------------------


class Unset:
    """Mistral's sentinel for a field the server left out: falsy, and not None."""

    def __bool__(self) -> bool:
        return False


def test_a_falsy_sentinel_is_no_tool_call(
    inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    def event(content: str) -> Any:
        delta = SimpleNamespace(role="assistant", content=content, tool_calls=Unset())
        choice = SimpleNamespace(index=0, delta=delta, finish_reason=None)
        return SimpleNamespace(data=SimpleNamespace(choices=[choice], usage=None))

    @inst.track_ai_call("mistral", "small")
    def ask() -> FakeStream:
        return FakeStream([event(""), event("Bonjour")])

    for _chunk in ask():
        clock.advance(0.5)
    assert ttft(registry, "mistral", "small") == (1, 0.5)


def test_an_error_raised_mid_stream_with_its_200_has_no_http_status(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    class APIStatusError(Exception):  # Anthropic's, for an error event after the 200
        def __init__(self) -> None:
            super().__init__("Overloaded")
            self.status_code = 200
            self.response = SimpleNamespace(status_code=200)

    class ServerError(Exception):  # google-genai's: its own code, the 200 response beside
        def __init__(self) -> None:
            super().__init__("UNAVAILABLE")
            self.code = 503
            self.status = "UNAVAILABLE"
            self.response = SimpleNamespace(status_code=200)

    for error in (APIStatusError(), ServerError()):
        stream = inst.track_ai_call("p", "m")(
            lambda error=error: FakeStream(anthropic_events(), fail_after=4, error=error)
        )()
        with pytest.raises(type(error)):
            list(stream)
    assert ai_errors(registry, "p", "m", "APIStatusError", "") == 1
    assert ai_errors(registry, "p", "m", "ServerError", "503") == 1
    assert calls(registry, "p", "m") == {"error": 2}
    assert ttft(registry, "p", "m")[0] == 2


def test_a_generators_own_attributes_stay_introspection(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    def inner() -> Iterator[dict[str, Any]]:
        yield from openai_chat_chunks(prompt=4, completion=3)

    def outer() -> Iterator[dict[str, Any]]:
        yield from inner()

    gen = inst.track_ai_call("openai", "gpt-4o")(lambda: outer())()  # a returned generator
    next(gen)
    # The generator it delegates to, as is: no watched stream that would end the call.
    assert type(gen.gi_yieldfrom).__name__ == "generator"
    assert len(list(gen)) == 5
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 4, "output": 3}


def test_a_manager_that_hands_out_a_raw_response(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """``with_streaming_response.create(...)``: entered, it gives a raw response whose body
    is read at the block's end, before the manager closes it, parsed by the caller or not."""

    class StreamingResponseManager:
        def __init__(self) -> None:
            self.raw = RawResponse(as_object(openai_chat(21, 4)))

        def __enter__(self) -> RawResponse:
            return self.raw

        def __exit__(self, *exc: object) -> None:
            self.raw.closed = True  # type: ignore[attr-defined]

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> StreamingResponseManager:
        return StreamingResponseManager()

    with ask() as raw:
        assert raw.parse().usage.prompt_tokens == 21
    with ask() as raw:
        assert raw.headers == {"x-request-id": "r1"}  # never parsed by the caller
    assert raw.parsed == 1
    assert calls(registry, "openai", "gpt-4o") == {"success": 2}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 42, "output": 8}
    assert missing(registry, "openai", "gpt-4o") == 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["choices", "delta", "content", "usage", "type", "data", "chunk", "message",
                 "text", "candidates", "parts", "tool_calls", "prompt_tokens", "input_tokens",
                 "output_tokens", "billed_units", "tokens", "response", "model"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)  # fmt: skip


@given(chunks=st.lists(_JSON, max_size=5), as_objects=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_stream_is_passed_through_and_counted_once(
    chunks: list[Any], as_objects: bool
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    items = [as_object(c) for c in chunks] if as_objects else chunks
    try:
        received = list(inst.track_ai_call("p", "m")(lambda: FakeStream(items))())
        assert len(received) == len(items)
        assert all(a is b for a, b in zip(received, items, strict=True))
        assert calls(registry, "p", "m") == {"success": 1}
        assert all(v >= 0 for v in token_counts(registry, "p", "m").values())
        assert (ttft(registry, "p", "m")[0] or 0) <= 1
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


# -- names the exposition cannot encode ------------------------------------------------------
# Exposition encodes UTF-8: one label value holding a lone surrogate (text decoded with
# surrogateescape, or a JSON "\udc80" escape a server sent) makes every later scrape and
# push of the whole registry fail, every other series with it.

BAD = "gpt-4o\udc80"
ESCAPED = "gpt-4o\\udc80"  # how such a name is reported: readable, and encodable


def exposes(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("args", "options", "what"),
    [
        (("open\udc80ai", "gpt-4o"), {}, "provider"),
        (("openai", BAD), {}, "model"),
        (("openai", "gpt-4o"), {"job_type": "ai\udc80"}, "job_type"),
        (("openai", "gpt-4o"), {"normalize_model": lambda m: m + "\udc80"}, "normalize_model"),
    ],
)
def test_a_name_that_is_not_utf8_is_refused_at_decoration(
    inst: Instrumentation,
    registry: CollectorRegistry,
    args: tuple[str, str],
    options: dict[str, Any],
    what: str,
) -> None:
    with pytest.raises(ValueError, match=f"{what}.*lone surrogate.*decode the text"):
        inst.track_ai_call(*args, **options)
    assert "ai_api_calls_total{" not in exposes(registry)


def test_set_model_refuses_a_name_that_is_not_utf8(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    with inst.track_ai_call("openai") as call:
        with pytest.raises(ValueError, match="model holds a lone surrogate"):
            call.set_model(BAD)
        call.record_response(openai_chat(2, 3, model="gpt-4o"))  # the model seen instead
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert 'model="gpt-4o"' in exposes(registry)


def _from_the_response(inst: Instrumentation) -> None:
    inst.track_ai_call("openai")(lambda: {**openai_chat(2, 3), "model": BAD})()


def _from_the_argument(inst: Instrumentation) -> None:
    @inst.track_ai_call("openai")
    def ask(model: str) -> Any:
        return openai_chat(2, 3)

    ask(BAD)


def _from_a_stream_chunk(inst: Instrumentation) -> None:
    chunks = openai_chat_chunks(prompt=2, completion=3, model=BAD)
    list(inst.track_ai_call("openai")(lambda: FakeStream(chunks))())


def _from_normalize_model(inst: Instrumentation) -> None:
    inst.track_ai_call("openai", normalize_model=lambda m: m[:6] + "\udc80")(
        lambda: {**openai_chat(2, 3), "model": "gpt-4o-mini"}
    )()


@pytest.mark.parametrize(
    "source", [_from_the_response, _from_the_argument, _from_a_stream_chunk, _from_normalize_model]
)
def test_a_model_name_that_is_not_utf8_never_breaks_the_registry(
    source: Callable[[Instrumentation], None],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    textfile = tmp_path / "ai.prom"
    inst = Instrumentation(registry=registry, textfile=str(textfile))
    try:
        inst.track_ai_call("anthropic", "claude")(lambda: anthropic_message(5, 7))()
        source(inst)  # a name only seen while the call runs: it may not raise into the call
        assert calls(registry, "openai", ESCAPED) == {"success": 1}
        assert token_counts(registry, "openai", ESCAPED) == {"input": 2, "output": 3}
        # The rest of the registry is still scraped and pushed.
        assert calls(registry, "anthropic", "claude") == {"success": 1}
        assert 'model="claude"' in exposes(registry)
        assert inst.push()
        pushed = textfile.read_text()
        assert 'model="gpt-4o\\\\udc80"' in pushed
        assert 'model="claude"' in pushed
        assert any("not valid UTF-8" in w for w in warnings_of(caplog))
    finally:
        inst.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # Characters drawn one by one, so most names hold a lone surrogate (st.text draws them
    # rarely).
    model=st.lists(st.characters() | st.characters(categories=["Cs"]), min_size=1, max_size=12).map(
        "".join
    )
)
def test_any_model_text_in_a_response_is_counted_and_exposed(model: str) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:
        inst.track_ai_call("p")(lambda: {**openai_chat(2, 3), "model": model})()
        text = exposes(registry)  # never raises, whatever the name
        counted = [
            (s.labels["status"], s.value)
            for metric in registry.collect()
            if metric.name.endswith("ai_api_calls")
            for s in metric.samples
            if s.name.endswith("_total") and s.value
        ]
        assert counted == [("success", 1.0)]
        assert "ai_api_calls_total{" in text
    finally:
        inst.close()


# -- options: refused at decoration, or never a failed call ----------------------------------

OPTION_NAMES = ("job_type", "normalize_model", "operation", "stream", "usage")
OPTION_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 2),
    st.sampled_from(["", "auto", "chat", "x", "ai\udc80"]),
    st.sampled_from([str, len, lambda value: value]),
)


@settings(max_examples=150, deadline=None)
@given(
    options=st.dictionaries(
        st.sampled_from([*OPTION_NAMES, "streaming"]), OPTION_VALUES, max_size=3
    )
)
def test_options_are_refused_at_decoration_or_never_fail_a_call(options: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    response = as_object(openai_chat(2, 3))
    try:
        try:
            tracker = inst.track_ai_call("openai", "gpt-4o", **options)
        except (TypeError, ValueError) as exc:
            # The message names what was wrong, and nothing was recorded.
            assert any(name in str(exc) for name in options), str(exc)
            assert calls(registry, "openai", "gpt-4o") == {}
            return
        assert tracker(lambda: response)() is response
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert active(registry, tracker.job_type) == 0
        for name, value in options.items():  # kept as given: what every call uses
            assert getattr(tracker, name) is value
    finally:
        inst.close()


# -- wave 3 (rev-ai) defect 1: a generator relaying several responses -------------------------


def _with_id(events: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    """Anthropic events whose message_start is about message ``message_id``."""
    first = {**events[0], "message": {**events[0]["message"], "id": message_id}}
    return [first, *events[1:]]


def test_a_generator_relaying_two_streams_adds_their_usage(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Each stream's reports are running totals (merged); two responses add up."""

    @inst.track_ai_call("anthropic", "agent")
    def agent() -> Iterator[Any]:
        yield from _with_id(anthropic_events(25, output_steps=(3, 15)), "msg_a")
        yield from _with_id(anthropic_events(7, output_steps=(2, 4)), "msg_b")

    assert len(list(agent())) == 2 * len(anthropic_events(output_steps=(3, 15)))
    assert token_counts(registry, "anthropic", "agent") == {"input": 32.0, "output": 19.0}
    assert calls(registry, "anthropic", "agent") == {"success": 1.0}


def test_a_generator_yielding_complete_responses_adds_each(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Whole responses, with ids or without: each is a report of its own."""
    first, second = openai_chat(100, 10), openai_chat(20, 5)
    second["id"] = "chatcmpl-second"
    anonymous = [
        {k: v for k, v in openai_chat(p, c).items() if k != "id"} for p, c in ((7, 1),) * 2
    ]

    @inst.track_ai_call("openai", "rounds")
    def rounds() -> Iterator[Any]:
        yield first
        yield second
        yield from anonymous

    list(rounds())
    assert token_counts(registry, "openai", "rounds") == {"input": 134.0, "output": 17.0}


def test_running_totals_of_one_response_still_merge(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Id-less chunk reports (no whole response) are one stream's running totals; a whole
    response with the stream's own id (the helper's snapshot) is the same response."""
    chunks: list[Any] = [
        {"usage": {"prompt_tokens": 9, "completion_tokens": 1}},
        {"usage": {"prompt_tokens": 9, "completion_tokens": 6}},
    ]
    stream = openai_chat_chunks(prompt=30, completion=3)
    snapshot = {**openai_chat(30, 3), "id": stream[0]["id"]}

    @inst.track_ai_call("openai", "totals")
    def totals() -> Iterator[Any]:
        yield from chunks
        yield from stream
        yield snapshot

    list(totals())
    assert token_counts(registry, "openai", "totals")["input"] == 39.0
    assert token_counts(registry, "openai", "totals")["output"] == 9.0


# -- wave 3 (rev-ai) defect 13: details larger than the totals that include them ---------------


@pytest.mark.parametrize(
    ("counts", "named"),
    [
        ({"input_tokens": 5, "cache_read": 100, "output_tokens": 1}, "cache_read + cache_creation"),
        ({"input_tokens": 5, "cache_read": 3, "cache_creation": 3}, "exceed input_tokens"),
        ({"output_tokens": 1, "reasoning": 50}, "reasoning (50) exceeds output_tokens (1)"),
    ],
)
def test_add_usage_refuses_details_above_their_total(
    inst: Instrumentation, registry: CollectorRegistry, counts: dict[str, int], named: str
) -> None:
    with inst.track_ai_call("anthropic", "m") as call:
        with pytest.raises(ValueError, match=re.escape(named)):
            call.add_usage(**counts)
        call.add_usage(input_tokens=105, cache_read=100, output_tokens=50, reasoning=50)
    assert token_counts(registry, "anthropic", "m") == {
        "input": 105.0,
        "output": 50.0,
        "cache_read": 100.0,
        "reasoning": 50.0,
    }
