"""track_ai_call: calls, durations, time to first token, tokens, errors, cost, cardinality.

Durations are exact: the module's clock is swapped for one the test moves by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import inspect
import json
import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import instrument
from instrument import AICall, AICallTracker, Instrumentation, _jobs, track_ai_call
from instrument import defaults as defaults_module
from instrument.ai import _tracker as tracker_module
from instrument.ai import load_prices, record_abandoned_streams
from instrument.config import from_environment
from instrument.usage import Usage

from ..ai_fakes import (
    FakeAsyncStream,
    FakeStream,
    RateLimitError,
    ServiceUnavailableError,
    anthropic_events,
    anthropic_message,
    as_object,
    gemini_chunks,
    gemini_response,
    openai_chat,
    openai_chat_chunks,
    openai_response,
    openai_response_events,
)
from ..servers import GatewayStandIn
from ..support import (
    FakeClock,
    active,
    ai_duration,
    ai_errors,
    calls,
    gateway_inst,
    in_threads,
    sample,
    token_counts,
    token_detail,
    tokens_used,
    ttft,
)

GPT4O_PRICES = {
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 128000,
    }
}


# -- plain calls: sync, async, generator, async generator, with-blocks ------------------------


class TestFunctions:
    def test_sync(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        response = as_object(openai_chat(120, 40, cached=100, reasoning=16))
        seen_active = []

        @inst.track_ai_call("openai", "gpt-4o")
        def ask(prompt: str) -> Any:
            seen_active.append(active(registry, "ai_call"))
            clock.advance(1.25)
            return response

        assert ask("hi") is response
        assert seen_active == [1.0]
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert ai_duration(registry, "openai", "gpt-4o") == (1, 1.25)
        assert token_counts(registry, "openai", "gpt-4o") == {
            "input": 120,
            "output": 40,
            "cache_read": 100,
            "reasoning": 16,
        }
        assert ttft(registry, "openai", "gpt-4o") == (None, None)  # not streamed
        assert active(registry, "ai_call") == 0

    async def test_async(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        response = anthropic_message(21, 393, cache_read=1800, cache_creation=200)

        @inst.track_ai_call("anthropic", "claude-sonnet-4", job_type="llm")
        async def ask(prompt: str) -> Any:
            await asyncio.sleep(0)
            clock.advance(0.5)
            return response

        assert inspect.iscoroutinefunction(ask)
        assert await ask("hi") is response
        assert calls(registry, "anthropic", "claude-sonnet-4") == {"success": 1}
        assert ai_duration(registry, "anthropic", "claude-sonnet-4") == (1, 0.5)
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == {
            "input": 2021,
            "output": 393,
            "cache_read": 1800,
            "cache_creation": 200,
        }
        assert active(registry, "llm") == 0

    def test_generator_function(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        chunks = [as_object(c) for c in openai_chat_chunks(prompt=30, completion=3)]

        @inst.track_ai_call("openai", "gpt-4o-mini")
        def stream(prompt: str) -> Iterator[Any]:
            clock.advance(0.25)  # until the first chunk
            for chunk in chunks:
                yield chunk
                clock.advance(0.125)
            return "done"

        gen = stream("hi")
        received = []
        while True:
            try:
                received.append(next(gen))
            except StopIteration as stop:
                assert stop.value == "done"
                break
            if len(received) == 1:
                assert active(registry, "ai_call") == 1
        assert all(a is b for a, b in zip(received, chunks, strict=True))
        assert calls(registry, "openai", "gpt-4o-mini") == {"success": 1}
        # The first chunk only says role=assistant: the first token is the next one.
        assert ttft(registry, "openai", "gpt-4o-mini") == (1, 0.25 + 0.125)
        assert ai_duration(registry, "openai", "gpt-4o-mini") == (1, 0.25 + 0.125 * len(chunks))
        assert token_counts(registry, "openai", "gpt-4o-mini") == {"input": 30, "output": 3}
        assert active(registry, "ai_call") == 0

    async def test_async_generator_function(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        events = anthropic_events(25, cache_read=100, output_steps=(10, 40))

        @inst.track_ai_call("anthropic", "claude-sonnet-4")
        async def stream(prompt: str) -> AsyncIterator[dict[str, Any]]:
            clock.advance(0.5)
            for event in events:
                yield event
                clock.advance(0.25)

        received = [e async for e in stream("hi")]
        assert all(a is b for a, b in zip(received, events, strict=True))
        # message_start, content_block_start and ping carry no token: the first text delta does.
        assert ttft(registry, "anthropic", "claude-sonnet-4") == (1, 0.5 + 3 * 0.25)
        assert ai_duration(registry, "anthropic", "claude-sonnet-4") == (
            1,
            0.5 + 0.25 * len(events),
        )
        # message_delta totals are cumulative: 40, not 1 + 10 + 40.
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == {
            "input": 125,
            "output": 40,
            "cache_read": 100,
        }
        assert active(registry, "ai_call") == 0

    def test_generator_closed_early_is_cancelled(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("openai", "gpt-4o")
        def stream() -> Iterator[Any]:
            yield from openai_chat_chunks()

        gen = stream()
        next(gen)  # role only
        next(gen)  # the first token
        gen.close()
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
        assert ttft(registry, "openai", "gpt-4o")[0] == 1
        assert active(registry, "ai_call") == 0

    def test_with_block(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        tracker = inst.track_ai_call("openai", "gpt-4o")
        with tracker as call:
            assert isinstance(call, AICall)
            assert active(registry, "ai_call") == 1
            clock.advance(2.0)
            assert call.record_response(openai_chat(10, 5)) == openai_chat(10, 5)
            call.add_usage(input_tokens=7, output_tokens=3, cache_read=2, reasoning=1)
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert ai_duration(registry, "openai", "gpt-4o") == (1, 2.0)
        assert token_counts(registry, "openai", "gpt-4o") == {
            "input": 17,
            "output": 8,
            "cache_read": 2,
            "reasoning": 1,
        }
        with pytest.raises(KeyError), tracker:
            raise KeyError("boom")
        assert calls(registry, "openai", "gpt-4o") == {"success": 1, "error": 1}
        assert ai_errors(registry, "openai", "gpt-4o", "KeyError", "") == 1
        assert active(registry, "ai_call") == 0

    async def test_async_with_block(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        async with inst.track_ai_call("gemini") as call:
            clock.advance(0.75)
            call.record_response(
                as_object(gemini_response(20, 30, thoughts=12, model="gemini-2.5-flash"))
            )
            assert call.model == "gemini-2.5-flash"
        assert calls(registry, "gemini", "gemini-2.5-flash") == {"success": 1}
        assert ai_duration(registry, "gemini", "gemini-2.5-flash") == (1, 0.75)
        assert token_counts(registry, "gemini", "gemini-2.5-flash") == {
            "input": 20,
            "output": 42,
            "reasoning": 12,
        }
        assert active(registry, "ai_call") == 0

    def test_with_block_records_a_stream_it_is_given(
        self, inst: Instrumentation, registry: CollectorRegistry, clock: FakeClock
    ) -> None:
        chunks = openai_chat_chunks(prompt=12, completion=3)
        with inst.track_ai_call("openai", "gpt-4o") as call:
            clock.advance(0.5)
            stream = call.record_response(FakeStream(chunks))
            received = []
            for chunk in stream:
                received.append(chunk)
                clock.advance(0.25)
        assert received == chunks
        assert ttft(registry, "openai", "gpt-4o") == (1, 0.5 + 0.25)  # after the role chunk
        assert ai_duration(registry, "openai", "gpt-4o") == (1, 0.5 + 0.25 * len(chunks))
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 12, "output": 3}
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}

    def test_with_block_shared_across_threads(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        tracker = inst.track_ai_call("openai", "gpt-4o")
        barrier = threading.Barrier(8)
        seen_active = []

        def work() -> None:
            for i in range(50):
                with tracker as call:
                    if i == 0:  # all eight threads inside the block at once
                        barrier.wait()
                        seen_active.append(active(registry, "ai_call"))
                        barrier.wait()
                    call.add_usage(input_tokens=2, output_tokens=1)

        in_threads(work, 8)
        assert seen_active == [8.0] * 8
        assert calls(registry, "openai", "gpt-4o") == {"success": 400}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 800, "output": 400}
        assert active(registry, "ai_call") == 0

    def test_methods(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        class Client:
            @inst.track_ai_call("openai", None)
            def create(self, model: str, prompt: str) -> dict[str, Any]:
                return openai_chat(3, 2, model="ignored")

            @classmethod
            @inst.track_ai_call("openai", None)
            def create_cls(cls, model: str) -> dict[str, Any]:
                return openai_chat(5, 1)

        Client().create("gpt-4.1", "hi")
        Client.create_cls("gpt-4.1-mini")
        assert token_counts(registry, "openai", "gpt-4.1") == {"input": 3, "output": 2}
        assert token_counts(registry, "openai", "gpt-4.1-mini") == {"input": 5, "output": 1}


# -- streams returned by the call ---------------------------------------------------------------


STREAMS = {
    "openai": (openai_chat_chunks(prompt=30, completion=3, cached=8), {"input": 30, "output": 3, "cache_read": 8}),
    "anthropic": (
        anthropic_events(25, cache_read=100, cache_creation=50, output_steps=(10, 40)),
        {"input": 175, "output": 40, "cache_read": 100, "cache_creation": 50},
    ),
    "gemini": (gemini_chunks(9, (2, 5, 8), thoughts=3), {"input": 9, "output": 11, "reasoning": 3}),
    "openai-responses": (openai_response_events(50, 20, reasoning=4), {"input": 50, "output": 20, "reasoning": 4}),
}  # fmt: skip
# The index of each stream's first chunk with generated content: before it come a role-only
# chunk (OpenAI Chat), message_start, content_block_start and ping (Anthropic), and
# response.created (OpenAI Responses).
FIRST_CONTENT = {"openai": 1, "anthropic": 3, "gemini": 0, "openai-responses": 1}


@pytest.mark.parametrize("form", ["dict", "object"])
@pytest.mark.parametrize("provider", STREAMS)
class TestStreams:
    def chunks(self, provider: str, form: str) -> list[Any]:
        raw = STREAMS[provider][0]
        return [as_object(c) for c in raw] if form == "object" else list(raw)

    def test_sync_stream(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        clock: FakeClock,
        provider: str,
        form: str,
    ) -> None:
        chunks = self.chunks(provider, form)
        sdk_stream = FakeStream(chunks)

        @inst.track_ai_call(provider, "m")
        def ask() -> FakeStream:
            clock.advance(0.25)
            return sdk_stream

        stream = ask()
        assert active(registry, "ai_call") == 1
        assert isinstance(stream, FakeStream)
        assert stream.response.headers == {"x-request-id": "req_123"}
        clock.advance(0.5)  # waiting for the first chunk
        received = []
        for chunk in stream:
            received.append(chunk)
            clock.advance(0.125)
        assert all(a is b for a, b in zip(received, chunks, strict=True))
        assert calls(registry, provider, "m") == {"success": 1}
        assert ttft(registry, provider, "m") == (1, 0.75 + 0.125 * FIRST_CONTENT[provider])
        assert ai_duration(registry, provider, "m") == (1, 0.75 + 0.125 * len(chunks))
        assert token_counts(registry, provider, "m") == STREAMS[provider][1]
        assert active(registry, "ai_call") == 0
        assert list(stream) == []  # exhausted: iterating again records nothing more
        assert calls(registry, provider, "m") == {"success": 1}

    async def test_async_stream(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        clock: FakeClock,
        provider: str,
        form: str,
    ) -> None:
        chunks = self.chunks(provider, form)
        sdk_stream = FakeAsyncStream(chunks)

        @inst.track_ai_call(provider, "m")
        async def ask() -> FakeAsyncStream:
            clock.advance(0.25)
            return sdk_stream

        stream = await ask()
        assert isinstance(stream, FakeAsyncStream)
        assert active(registry, "ai_call") == 1
        clock.advance(0.25)
        received = []
        async for chunk in stream:
            received.append(chunk)
            clock.advance(0.5)
        assert all(a is b for a, b in zip(received, chunks, strict=True))
        assert ttft(registry, provider, "m") == (1, 0.5 + 0.5 * FIRST_CONTENT[provider])
        assert ai_duration(registry, provider, "m") == (1, 0.5 + 0.5 * len(chunks))
        assert token_counts(registry, provider, "m") == STREAMS[provider][1]
        assert calls(registry, provider, "m") == {"success": 1}
        assert active(registry, "ai_call") == 0

    def test_abandoned_stream_is_cancelled_when_collected(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        clock: FakeClock,
        provider: str,
        form: str,
    ) -> None:
        chunks = self.chunks(provider, form)

        @inst.track_ai_call(provider, "m")
        def ask() -> Iterator[Any]:
            return iter(chunks)

        stream = ask()
        clock.advance(0.25)
        next(stream)
        clock.advance(0.25)
        next(stream)
        clock.advance(30.0)  # dropped long ago: the duration ends at the last chunk seen
        del stream
        gc.collect()
        record_abandoned_streams()
        assert calls(registry, provider, "m") == {"cancelled": 1}
        assert ai_duration(registry, provider, "m") == (1, 0.5)
        # Two chunks were read, at 0.25 and 0.5: a first token only if one of them had one.
        first = FIRST_CONTENT[provider]
        assert ttft(registry, provider, "m") == (
            (1, 0.25 * (first + 1)) if first < 2 else (None, None)
        )
        assert active(registry, "ai_call") == 0

    async def test_abandoned_async_stream(
        self, inst: Instrumentation, registry: CollectorRegistry, provider: str, form: str
    ) -> None:
        @inst.track_ai_call(provider, "m")
        async def ask() -> FakeAsyncStream:
            return FakeAsyncStream(self.chunks(provider, form))

        stream = await ask()
        await stream.__anext__()
        del stream
        gc.collect()
        record_abandoned_streams()
        assert calls(registry, provider, "m") == {"cancelled": 1}
        assert active(registry, "ai_call") == 0

    def test_failing_stream(
        self, inst: Instrumentation, registry: CollectorRegistry, provider: str, form: str
    ) -> None:
        error = RateLimitError("overloaded mid-stream", status_code=529)

        @inst.track_ai_call(provider, "m")
        def ask() -> FakeStream:
            return FakeStream(self.chunks(provider, form), fail_after=2, error=error)

        stream = ask()
        with pytest.raises(RateLimitError) as raised:
            for _ in stream:
                pass
        assert raised.value is error
        assert calls(registry, provider, "m") == {"error": 1}
        assert ai_errors(registry, provider, "m", "RateLimitError", "529") == 1
        assert active(registry, "ai_call") == 0

    async def test_failing_async_stream(
        self, inst: Instrumentation, registry: CollectorRegistry, provider: str, form: str
    ) -> None:
        error = ServiceUnavailableError()

        @inst.track_ai_call(provider, "m")
        async def ask() -> FakeAsyncStream:
            return FakeAsyncStream(self.chunks(provider, form), fail_after=1, error=error)

        with pytest.raises(ServiceUnavailableError) as raised:
            async for _ in await ask():
                pass
        assert raised.value is error
        assert ai_errors(registry, provider, "m", "ServiceUnavailableError", "503") == 1
        assert calls(registry, provider, "m") == {"error": 1}
        assert active(registry, "ai_call") == 0


class TestAbandonedStreams:
    """The collector only queues a dropped stream: it may run while its thread holds a lock
    that recording takes. The next AI call, the next push or ``record_abandoned_streams``
    records it."""

    @pytest.fixture(autouse=True)
    def _no_leftovers(self) -> None:
        record_abandoned_streams()  # streams other tests left behind

    def test_the_collector_records_nothing_even_under_a_held_lock(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("openai", None)
        def ask(model: str) -> FakeStream:
            return FakeStream(openai_chat_chunks(prompt=10, completion=3))

        class Holder:
            stream: Any

        holder = Holder()
        holder.self = holder  # type: ignore[attr-defined]  # only the cyclic collector frees it
        holder.stream = ask("gpt-4o")
        next(holder.stream)  # role only
        next(holder.stream)  # the first token
        # Recording a first call of a model takes this lock (``.labels()``), and a thread
        # holding it is where the collector may run: it must not try to take it again.
        lock = inst.metrics.ai_api_calls._lock
        collected = threading.Event()

        def collect_holding_the_lock() -> None:
            with lock:
                gc.collect()
            collected.set()

        del holder
        gc.disable()  # collect in that thread, not whenever this one allocates
        try:
            threading.Thread(target=collect_holding_the_lock, daemon=True).start()
            assert collected.wait(5), "recording from the garbage collector deadlocked"
        finally:
            gc.enable()
        assert len(_jobs._deferred) == 1  # queued by the collector, not recorded
        record_abandoned_streams()
        assert not _jobs._deferred
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
        assert ttft(registry, "openai", "gpt-4o")[0] == 1
        assert active(registry, "ai_call") == 0
        record_abandoned_streams()  # once
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}

    def test_recorded_by_the_next_call(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("anthropic", "claude-sonnet-4")
        def ask() -> FakeStream:
            return FakeStream(anthropic_events(9, output_steps=(5,)))

        stream = ask()
        next(stream)  # message_start: input known, output 1 so far
        del stream
        gc.collect()
        assert len(_jobs._deferred) == 1
        with inst.track_ai_call("openai", "gpt-4o"):  # any tracker's next call
            assert not _jobs._deferred
            assert calls(registry, "anthropic", "claude-sonnet-4") == {"cancelled": 1}
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == {"input": 9, "output": 1}
        assert active(registry, "ai_call") == 0

    def test_recorded_by_a_scrape(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> FakeStream:
            return FakeStream(openai_chat_chunks())

        stream = ask()
        next(stream)
        del stream
        gc.collect()
        assert len(_jobs._deferred) == 1
        text = generate_latest(registry).decode()  # what /metrics serves in pull mode
        assert (
            'codomyrmex_ai_api_calls_total{model="gpt-4o",provider="openai",status="cancelled"} 1.0'
            in text
        )

    def test_recorded_by_a_push(self, tmp_path: Path, registry: CollectorRegistry) -> None:
        textfile = tmp_path / "ai.prom"
        inst = Instrumentation(registry=registry, textfile=str(textfile))

        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> FakeStream:
            return FakeStream(openai_chat_chunks())

        try:
            stream = ask()
            next(stream)
            del stream
            gc.collect()
            assert len(_jobs._deferred) == 1
            assert inst.push()
            assert not _jobs._deferred
            assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
            pushed = textfile.read_text()
            assert re.search(
                r'^codomyrmex_ai_api_calls_total\{[^}]*status="cancelled"[^}]*\} 1\.0$',
                pushed,
                re.MULTILINE,
            ), pushed
        finally:
            inst.close()

    @pytest.mark.integration
    def test_each_mode_pushes_it_at_close(self) -> None:
        gateway = GatewayStandIn("ok")
        try:
            inst = gateway_inst(gateway, push_mode="each")

            @inst.track_ai_call("openai", "gpt-4o")
            def ask() -> Iterator[dict[str, Any]]:
                return iter(openai_chat_chunks(prompt=10, completion=2))

            for _chunk in ask():
                break  # got what we needed: the stream is dropped here
            gc.collect()
            inst.close()  # what atexit does
            labels = {"provider": "openai", "model": "gpt-4o"}
            assert (
                gateway.last_value("codomyrmex_ai_api_calls_total", status="cancelled", **labels)
                == 1
            )
            assert gateway.last_value("codomyrmex_active_jobs", job_type="ai_call") == 0
        finally:
            gateway.close()


class TestStreamEnds:
    def test_close_cancels_and_closes_the_sdk_stream(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        sdk_stream = FakeStream(openai_chat_chunks())
        stream = inst.track_ai_call("openai", "gpt-4o")(lambda: sdk_stream)()
        next(stream)
        stream.close()
        stream.close()
        assert sdk_stream.closed
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
        assert active(registry, "ai_call") == 0

    def test_context_manager(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> FakeStream:
            return FakeStream(openai_chat_chunks(prompt=4, completion=3))

        with ask() as stream:
            assert isinstance(stream, FakeStream)
            chunks = list(stream)
        assert len(chunks) == 6
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 4, "output": 3}

        with ask() as stream:  # left before the end
            next(stream)
        assert stream.closed
        assert calls(registry, "openai", "gpt-4o") == {"success": 1, "cancelled": 1}

        with pytest.raises(ValueError, match="the consumer failed"), ask() as stream:
            next(stream)
            raise ValueError("the consumer failed")
        # The LLM call did not fail; its consumer stopped reading.
        assert calls(registry, "openai", "gpt-4o") == {"success": 1, "cancelled": 2}
        assert ai_errors(registry, "openai", "gpt-4o", "ValueError", "") is None
        assert active(registry, "ai_call") == 0

    def test_a_plain_iterator_stays_no_context_manager(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        stream = inst.track_ai_call("openai", "gpt-4o")(lambda: iter([1, 2]))()
        with pytest.raises(TypeError, match="context manager protocol"), stream:
            pass
        assert list(stream) == [1, 2]
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}

    async def test_async_close_and_context_manager(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("openai", "gpt-4o")
        async def ask() -> FakeAsyncStream:
            return FakeAsyncStream(openai_chat_chunks(prompt=4, completion=3))

        stream = await ask()
        await stream.__anext__()
        await stream.close()
        assert stream.closed
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}

        async with await ask() as stream:
            assert isinstance(stream, FakeAsyncStream)
            received = [c async for c in stream]
        assert len(received) == 6
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1, "success": 1}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 4, "output": 3}
        assert active(registry, "ai_call") == 0

    async def test_async_generator_result(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for chunk in openai_chat_chunks(prompt=6, completion=3):
                yield chunk

        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> AsyncIterator[dict[str, Any]]:
            return chunks()

        stream = ask()
        assert inspect.isasyncgen(stream)
        await stream.__anext__()
        await stream.aclose()
        assert calls(registry, "openai", "gpt-4o") == {"cancelled": 1}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 0, "output": 0}
        assert [c async for c in ask()] == openai_chat_chunks(prompt=6, completion=3)
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 6, "output": 3}

    async def test_async_generator_result_asend_athrow_and_no_context_manager(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        async def echo() -> AsyncIterator[Any]:
            received = yield {"model": "m"}
            while True:
                received = yield {"echo": received}

        stream = inst.track_ai_call("openai", "gpt-4o")(lambda: echo())()
        with pytest.raises(TypeError, match="asynchronous context manager protocol"):
            async with stream:
                pass
        assert await stream.__anext__() == {"model": "m"}
        assert await stream.asend("a") == {"echo": "a"}
        with pytest.raises(KeyError):
            await stream.athrow(KeyError("stop"))
        assert calls(registry, "openai", "gpt-4o") == {"error": 1}
        assert ai_errors(registry, "openai", "gpt-4o", "KeyError", "") == 1

    async def test_async_iterable_with_stream_true(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        class Events:
            """Only async-iterable, like an SDK object that makes a new iterator each time."""

            def __init__(self) -> None:
                self.closed = False

            def __aiter__(self) -> AsyncIterator[Any]:
                return FakeAsyncStream(gemini_chunks(9, (2, 5)))

            def close(self) -> None:
                self.closed = True

        @inst.track_ai_call("gemini", "gemini-2.5-flash", stream=True)
        async def ask() -> Events:
            return Events()

        received = [c async for c in await ask()]
        assert len(received) == 2
        stream = await ask()
        stream.close()  # a plain close on an async stream: cancelled at once
        assert stream.closed
        assert calls(registry, "gemini", "gemini-2.5-flash") == {"success": 1, "cancelled": 1}
        assert token_counts(registry, "gemini", "gemini-2.5-flash") == {"input": 9, "output": 5}
        assert active(registry, "ai_call") == 0

    def test_generator_result_send_and_throw(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        def echo() -> Iterator[Any]:
            received = yield {"model": "m"}
            while True:
                received = yield {"echo": received}

        stream = inst.track_ai_call("openai", "gpt-4o")(lambda: echo())()
        assert inspect.isgenerator(stream)
        assert next(stream) == {"model": "m"}
        assert stream.send("a") == {"echo": "a"}
        with pytest.raises(KeyError):
            stream.throw(KeyError("stop"))
        assert ai_errors(registry, "openai", "gpt-4o", "KeyError", "") == 1
        assert calls(registry, "openai", "gpt-4o") == {"error": 1}

    @pytest.mark.parametrize(("option", "wrapped"), [("auto", False), (True, True), (False, False)])
    def test_stream_option(
        self, inst: Instrumentation, registry: CollectorRegistry, option: Any, wrapped: bool
    ) -> None:
        chunks = openai_chat_chunks(prompt=5, completion=2)

        @inst.track_ai_call("openai", "gpt-4o", stream=option)
        def ask() -> list[dict[str, Any]]:
            return chunks  # a list: iterable, not an iterator

        result = ask()
        assert result == chunks
        if wrapped:
            assert active(registry, "ai_call") == 1
            assert list(result) == chunks
            assert token_counts(registry, "openai", "gpt-4o") == {"input": 5, "output": 2}
        else:
            assert type(result) is list
            assert token_counts(registry, "openai", "gpt-4o") == {"input": 0, "output": 0}
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert active(registry, "ai_call") == 0

    def test_stream_false_leaves_iterators_alone(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        gen = iter(openai_chat_chunks())
        assert inst.track_ai_call("openai", "gpt-4o", stream=False)(lambda: gen)() is gen
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}

    def test_an_iterable_that_fails_when_iterated_is_a_failed_stream(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        # An iterable is iterated by the caller, not at the call's end (rev-ai 11: it may
        # be iterated more than once): its iter() failing is the stream failing.
        class Lazy:
            def __init__(self) -> None:
                self.usage = {"prompt_tokens": 4, "completion_tokens": 2}

            def __iter__(self) -> Iterator[Any]:
                raise RuntimeError("cannot iterate yet")

        lazy = Lazy()
        handed = inst.track_ai_call("openai", "gpt-4o", stream=True)(lambda: lazy)()
        assert isinstance(handed, Lazy) and handed.usage is lazy.usage
        with pytest.raises(RuntimeError, match="cannot iterate yet"):
            iter(handed)
        assert inst.track_ai_call("openai", "gpt-4o", stream=True)(lambda: 42)() == 42
        assert calls(registry, "openai", "gpt-4o") == {"success": 1, "error": 1}
        assert active(registry, "ai_call") == 0

    def test_a_stream_given_to_a_with_block_and_dropped(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        with inst.track_ai_call("anthropic", "claude-sonnet-4") as call:
            stream = call.record_response(FakeStream(anthropic_events(9, output_steps=(5,))))
            next(stream)  # message_start: input known, output 1 so far
            del stream
            gc.collect()
        # The block, not the stream, ends the call: once, as a success.
        assert calls(registry, "anthropic", "claude-sonnet-4") == {"success": 1}
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == {"input": 9, "output": 1}
        assert active(registry, "ai_call") == 0

    def test_concurrent_streams_in_threads(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("openai", "gpt-4o-mini")
        def ask() -> FakeStream:
            return FakeStream(openai_chat_chunks(prompt=10, completion=3))

        def work() -> None:
            for _ in range(40):
                for _chunk in ask():
                    pass

        in_threads(work, 6)
        assert calls(registry, "openai", "gpt-4o-mini") == {"success": 240}
        assert token_counts(registry, "openai", "gpt-4o-mini") == {"input": 2400, "output": 720}
        assert ttft(registry, "openai", "gpt-4o-mini")[0] == 240
        assert active(registry, "ai_call") == 0

    async def test_concurrent_streams_in_tasks(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("anthropic", None)
        async def ask(model: str) -> AsyncIterator[dict[str, Any]]:
            for event in anthropic_events(7, output_steps=(3, 5)):
                await asyncio.sleep(0)
                yield event

        async def consume(model: str) -> int:
            return len([e async for e in ask(model)])

        results = await asyncio.gather(*(consume(f"claude-{i % 3}") for i in range(150)))
        assert set(results) == {9}
        for i in range(3):
            assert calls(registry, "anthropic", f"claude-{i}") == {"success": 50}
            assert token_counts(registry, "anthropic", f"claude-{i}") == {
                "input": 350,
                "output": 250,
            }
        assert active(registry, "ai_call") == 0


# -- several responses and streams in one call --------------------------------------------------


SONNET_PRICES = {
    "claude-sonnet-4": {
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
    }
}


class TestSeveralStreams:
    """Each stream merges its own running totals; the streams of one call add up."""

    def test_streams_of_one_call_ending_in_different_threads(
        self, inst: Instrumentation, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tracker = inst.track_ai_call("openai", "gpt-4o")
        # Widen the window between reading a call's total and writing the sum back.
        add = Usage.__add__

        def slow_add(self: Usage, other: Usage) -> Usage:
            time.sleep(0)  # let another thread run
            return add(self, other)

        monkeypatch.setattr(Usage, "__add__", slow_add)
        streams_per_call, rounds = 8, 25
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often, as under load

        def consume(stream: Iterator[Any], barrier: threading.Barrier) -> None:
            barrier.wait()  # all streams end together
            for _chunk in stream:
                pass

        try:
            for _ in range(rounds):
                with tracker as call:
                    streams = [
                        call.record_response(
                            FakeStream(openai_chat_chunks(prompt=10, completion=1))
                        )
                        for _ in range(streams_per_call)
                    ]
                    barrier = threading.Barrier(streams_per_call)
                    threads = [threading.Thread(target=consume, args=(s, barrier)) for s in streams]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
        finally:
            sys.setswitchinterval(interval)
        total = streams_per_call * rounds
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 10 * total, "output": total}
        assert calls(registry, "openai", "gpt-4o") == {"success": rounds}

    def test_two_streams_in_one_with_block(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.set_prices(GPT4O_PRICES)
        with inst.track_ai_call("openai", "gpt-4o") as call:
            a = call.record_response(
                FakeStream(openai_chat_chunks(prompt=100, completion=10, cached=40))
            )
            b = call.record_response(
                FakeStream(openai_chat_chunks(prompt=200, completion=20, cached=60))
            )
            # Interleaved: one running total per stream, not one for the call.
            for _ in zip(a, b, strict=True):
                pass
            # An ended stream counts once, however it is ended again.
            assert list(a) == []
            a.close()
            b.close()
        assert tokens_used(registry, "openai", "gpt-4o", "input") == 300
        assert tokens_used(registry, "openai", "gpt-4o", "output") == 30
        assert token_detail(registry, "openai", "gpt-4o", "cache_read") == 100
        assert token_counts(registry, "openai", "gpt-4o") == {
            "input": 300,
            "output": 30,
            "cache_read": 100,
        }
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx(200 * 2.5e-06 + 100 * 1.25e-06 + 30 * 1e-05)
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert active(registry, "ai_call") == 0

    async def test_two_async_streams_in_one_async_with_block(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.set_prices(SONNET_PRICES)
        async with inst.track_ai_call("anthropic", "claude-sonnet-4") as call:
            streams = [
                call.record_response(
                    FakeAsyncStream(
                        anthropic_events(
                            25, cache_read=100, cache_creation=50, output_steps=(10, 40)
                        )
                    )
                ),
                call.record_response(
                    FakeAsyncStream(anthropic_events(5, cache_read=200, output_steps=(3, 7)))
                ),
            ]
            while streams:  # interleaved, one chunk of each in turn
                for stream in list(streams):
                    try:
                        await stream.__anext__()
                    except StopAsyncIteration:
                        streams.remove(stream)
        # 175 + 205 input (cache included), 40 + 7 output.
        assert tokens_used(registry, "anthropic", "claude-sonnet-4", "input") == 380
        assert tokens_used(registry, "anthropic", "claude-sonnet-4", "output") == 47
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == {
            "input": 380,
            "output": 47,
            "cache_read": 300,
            "cache_creation": 50,
        }
        assert sample(
            registry, "ai_cost_usd_total", provider="anthropic", model="claude-sonnet-4"
        ) == pytest.approx(30 * 3e-06 + 300 * 3e-07 + 50 * 3.75e-06 + 47 * 1.5e-05)
        assert calls(registry, "anthropic", "claude-sonnet-4") == {"success": 1}
        assert active(registry, "ai_call") == 0

    def test_a_stream_a_response_and_add_usage(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.set_prices(GPT4O_PRICES)
        with inst.track_ai_call("openai", "gpt-4o") as call:
            stream = call.record_response(
                FakeStream(openai_chat_chunks(prompt=100, completion=10, cached=20))
            )
            next(stream)
            call.record_response(as_object(openai_chat(50, 5, cached=10, reasoning=2)))
            call.add_usage(input_tokens=7, output_tokens=3, cache_read=1, reasoning=1)
            for _ in stream:
                pass
        assert tokens_used(registry, "openai", "gpt-4o", "input") == 157
        assert tokens_used(registry, "openai", "gpt-4o", "output") == 18
        assert token_counts(registry, "openai", "gpt-4o") == {
            "input": 157,
            "output": 18,
            "cache_read": 31,
            "reasoning": 3,
        }
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx((157 - 31) * 2.5e-06 + 31 * 1.25e-06 + 18 * 1e-05)
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}

    def test_a_stream_still_open_when_the_block_ends(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        with inst.track_ai_call("anthropic", "claude-sonnet-4") as call:
            stream = call.record_response(FakeStream(anthropic_events(9, output_steps=(5,))))
            call.add_usage(input_tokens=1)
            next(stream)  # message_start: input known, output 1 so far
        # What it reported by the block's end counts, once; reading on changes nothing.
        expected = {"input": 10, "output": 1}
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == expected
        assert len(list(stream)) == len(anthropic_events(9, output_steps=(5,))) - 1
        stream.close()
        del stream
        gc.collect()
        assert token_counts(registry, "anthropic", "claude-sonnet-4") == expected
        assert calls(registry, "anthropic", "claude-sonnet-4") == {"success": 1}
        assert active(registry, "ai_call") == 0

    def test_a_generator_function_and_a_returned_stream_keep_one_running_total(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("gemini", "gemini-2.5-flash")
        def generate() -> Iterator[dict[str, Any]]:
            yield from gemini_chunks(9, (2, 5, 8), thoughts=3)

        @inst.track_ai_call("gemini", "gemini-2.5-flash")
        def ask() -> FakeStream:
            return FakeStream(gemini_chunks(9, (2, 5, 8), thoughts=3))

        assert len(list(generate())) == 3
        assert token_counts(registry, "gemini", "gemini-2.5-flash") == {
            "input": 9,
            "output": 11,
            "reasoning": 3,
        }
        assert len(list(ask())) == 3
        assert token_counts(registry, "gemini", "gemini-2.5-flash") == {
            "input": 18,
            "output": 22,
            "reasoning": 6,
        }


# -- the model label --------------------------------------------------------------------------


class TestModel:
    def test_from_the_argument_positional_keyword_and_default(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("anthropic", model=None)
        def ask(prompt: str, model: str = "claude-3-5-haiku", **kwargs: Any) -> dict[str, Any]:
            return anthropic_message(2, 1, model="from-the-response")

        ask("hi", "claude-opus-4")
        ask("hi", model="claude-sonnet-4")
        ask("hi")
        for model in ("claude-opus-4", "claude-sonnet-4", "claude-3-5-haiku"):
            assert calls(registry, "anthropic", model) == {"success": 1}
        assert calls(registry, "anthropic", "from-the-response") == {}

    def test_one_tracker_on_several_functions(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        track = inst.track_ai_call("openai")

        @track
        def first(model: str) -> None: ...

        @track
        def second(prompt: str, model: str) -> None: ...

        first("gpt-4o")
        second("hi", "o3")
        closures = []
        for _ in range(3):  # a closure decorated per request

            @track
            def per_request(model: str) -> None: ...

            per_request("gpt-4.1")
            closures.append(weakref.ref(per_request.__wrapped__))
        del per_request
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert calls(registry, "openai", "o3") == {"success": 1}
        assert calls(registry, "openai", "gpt-4.1") == {"success": 3}
        gc.collect()
        assert [ref() for ref in closures] == [None] * 3  # the tracker keeps none alive

    def test_through_kwargs(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        @inst.track_ai_call("openai")
        def create(**kwargs: Any) -> dict[str, Any]:
            return openai_chat(1, 1, model="gpt-4o-2024-08-06")

        create(model="gpt-4o", messages=[])
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}

    async def test_from_the_response_then_unknown(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        @inst.track_ai_call("openai")
        async def ask(prompt: str, model: Any = None) -> Any:
            return prompt

        await ask(as_object(openai_chat(1, 1, model="gpt-4o-2024-08-06")))
        await ask(openai_chat(1, 1, model="gpt-4o-2024-08-06"), model=42)  # not a name: ignored
        await ask({"no": "model"})
        await ask(None)
        assert calls(registry, "openai", "gpt-4o-2024-08-06") == {"success": 2}
        assert calls(registry, "openai", "unknown") == {"success": 2}

    def test_from_a_stream(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        @inst.track_ai_call("anthropic")
        def ask() -> FakeStream:
            return FakeStream(anthropic_events(3, model="claude-opus-4-1", output_steps=(2,)))

        list(ask())
        assert token_counts(registry, "anthropic", "claude-opus-4-1") == {"input": 3, "output": 2}

    def test_set_model(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        with inst.track_ai_call("openai") as call:
            assert call.model is None
            call.set_model("gpt-4.1")
            call.record_response(openai_chat(3, 4, model="gpt-4.1-2025-04-14"))
            assert call.model == "gpt-4.1"
        with (
            pytest.raises(TypeError, match="non-empty string"),
            inst.track_ai_call("openai") as call,
        ):
            call.set_model("")
        assert calls(registry, "openai", "gpt-4.1") == {"success": 1}
        assert token_counts(registry, "openai", "gpt-4.1") == {"input": 3, "output": 4}
        assert calls(registry, "openai", "unknown") == {"error": 1}

    def test_fixed_model_wins_over_the_response(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.track_ai_call("openai", "gpt-4o")(
            lambda: openai_chat(1, 1, model="gpt-4o-2024-08-06")
        )()
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert calls(registry, "openai", "gpt-4o-2024-08-06") == {}

    def test_positional_behind_a_wraps_decorator(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        def retry(func: Any) -> Any:  # the shape of tenacity's @retry, backoff, caches
            @functools.wraps(func)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                return func(*args, **kwargs)

            return wrapped

        @inst.track_ai_call("openai", model=None)
        @retry
        def ask(model: str, prompt: str) -> dict[str, Any]:
            return {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}  # no model field

        ask("gpt-4o-mini", "hi")
        assert calls(registry, "openai", "gpt-4o-mini") == {"success": 1}
        assert calls(registry, "openai", "unknown") == {}


class TestCardinality:
    def test_models_beyond_max_models_are_other_with_one_warning(
        self, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        inst = Instrumentation(registry=registry, max_models=2)
        ask = inst.track_ai_call("openai", None)(lambda model: openai_chat(1, 1))
        for model in ("a", "b", "c", "d", "a", "c"):
            ask(model)
        inst.track_ai_call("anthropic", "e")(lambda: anthropic_message(1, 1))()
        assert calls(registry, "openai", "a") == {"success": 2}
        assert calls(registry, "openai", "b") == {"success": 1}
        assert calls(registry, "openai", "c") == {}
        assert calls(registry, "openai", "other") == {"success": 3}
        assert token_counts(registry, "openai", "other") == {"input": 3, "output": 3}
        assert calls(registry, "anthropic", "e") == {"success": 1}  # per provider
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "max_models" in warnings[0].getMessage()
        assert "'c'" in warnings[0].getMessage()
        inst.close()

    def test_exact_under_threads(self, registry: CollectorRegistry) -> None:
        inst = Instrumentation(registry=registry, max_models=3)
        ask = inst.track_ai_call("openai", None)(lambda model: openai_chat(2, 1))
        start = threading.Barrier(8)

        def work(offset: int) -> None:
            start.wait()
            for i in range(100):
                ask(model=f"m{(i + offset) % 6}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        per_model = {
            model: calls(registry, "openai", model).get("success", 0)
            for model in (*(f"m{i}" for i in range(6)), "other")
        }
        kept = [m for m, n in per_model.items() if n and m != "other"]
        assert len(kept) == 3
        assert sum(per_model.values()) == 800
        assert per_model["other"] == 800 - sum(per_model[m] for m in kept)
        assert token_counts(registry, "openai", "other")["input"] == 2 * per_model["other"]
        assert active(registry, "ai_call") == 0
        inst.close()

    def test_the_limit_is_shared_by_trackers_of_one_instrumentation(
        self, registry: CollectorRegistry
    ) -> None:
        inst = Instrumentation(registry=registry, max_models=1)
        inst.track_ai_call("openai", "gpt-4o")(lambda: None)()
        inst.track_ai_call("openai", "gpt-4o-mini")(lambda: None)()
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert calls(registry, "openai", "other") == {"success": 1}
        inst.close()

    def test_normalize_model_only_when_asked(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        def undated(model: str) -> str:
            return re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model)

        tracker = inst.track_ai_call("openai", None, normalize_model=undated)
        ask = tracker(lambda model: openai_chat(2, 1))
        ask("gpt-4o-2024-08-06")
        ask("gpt-4o-2024-11-20")
        inst.track_ai_call("openai", "gpt-4o-mini-2024-07-18", normalize_model=undated)(
            lambda: None
        )()
        inst.track_ai_call("openai", "o3-2025-04-16")(lambda: None)()
        assert calls(registry, "openai", "gpt-4o") == {"success": 2}
        assert calls(registry, "openai", "gpt-4o-mini") == {"success": 1}
        assert calls(registry, "openai", "o3-2025-04-16") == {"success": 1}

    def test_a_failing_normalizer_keeps_the_name(
        self, inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(model: str) -> str:
            if model == "x":
                raise RuntimeError("no")
            return ""

        ask = inst.track_ai_call("openai", None, normalize_model=broken)(lambda model: None)
        caplog.set_level(logging.DEBUG, logger="instrument")
        for model in ("x", "y", "x"):
            ask(model)
        assert calls(registry, "openai", "x") == {"success": 2}
        assert calls(registry, "openai", "y") == {"success": 1}
        complaints = [r for r in caplog.records if "normalize_model" in r.getMessage()]
        assert [r.levelno for r in complaints] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


# -- errors -------------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        ("error", "status"),
        [
            (RateLimitError(), "429"),
            (ServiceUnavailableError(), "503"),
            (type("ClientResponseError", (Exception,), {"status": 502})(), "502"),
            (type("APIError", (Exception,), {"code": 504})(), "504"),
            (ConnectionResetError("reset"), ""),
            (type("Odd", (Exception,), {"status_code": "429", "code": 12})(), ""),
        ],
        ids=[
            "status_code",
            "response.status_code",
            "aiohttp status",
            "genai code",
            "none",
            "not http",
        ],
    )
    def test_error_type_and_http_status(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        clock: FakeClock,
        error: Exception,
        status: str,
    ) -> None:
        @inst.track_ai_call("openai", "gpt-4o")
        def ask() -> None:
            clock.advance(0.25)
            raise error

        with pytest.raises(type(error)) as raised:
            ask()
        assert raised.value is error
        assert ai_errors(registry, "openai", "gpt-4o", type(error).__name__, status) == 1
        assert calls(registry, "openai", "gpt-4o") == {"error": 1}
        assert ai_duration(registry, "openai", "gpt-4o") == (1, 0.25)
        assert active(registry, "ai_call") == 0

    async def test_async_errors_and_cancellation(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        started = asyncio.Event()

        @inst.track_ai_call("anthropic", "claude-sonnet-4")
        async def ask(fail: bool) -> None:
            if fail:
                raise RateLimitError("rate_limit_error")
            started.set()
            await asyncio.sleep(60)

        with pytest.raises(RateLimitError):
            await ask(True)
        task = asyncio.ensure_future(ask(False))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert calls(registry, "anthropic", "claude-sonnet-4") == {"error": 1, "cancelled": 1}
        assert ai_errors(registry, "anthropic", "claude-sonnet-4", "RateLimitError", "429") == 1
        assert active(registry, "ai_call") == 0


# -- cost -------------------------------------------------------------------------------------


class TestCost:
    def test_priced_with_cached_input_at_its_own_rate(self, registry: CollectorRegistry) -> None:
        inst = Instrumentation(registry=registry, prices=GPT4O_PRICES)
        ask = inst.track_ai_call("openai", "gpt-4o")(lambda: openai_chat(1000, 200, cached=800))
        ask()
        # 200 uncached input + 800 cached input + 200 output
        expected = 200 * 2.5e-06 + 800 * 1.25e-06 + 200 * 1e-05
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx(expected)
        assert (
            sample(registry, "ai_unpriced_calls_total", provider="openai", model="gpt-4o") is None
        )
        inst.close()

    def test_anthropic_cache_writes_and_provider_keys(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.set_prices(
            {
                "anthropic/claude-sonnet-4": {
                    "input_cost_per_token": 3e-06,
                    "output_cost_per_token": 1.5e-05,
                    "cache_read_input_token_cost": 3e-07,
                    "cache_creation_input_token_cost": 3.75e-06,
                }
            }
        )
        with inst.track_ai_call("anthropic", "claude-sonnet-4") as call:
            call.record_response(anthropic_message(100, 50, cache_read=1000, cache_creation=400))
        expected = 100 * 3e-06 + 1000 * 3e-07 + 400 * 3.75e-06 + 50 * 1.5e-05
        assert sample(
            registry, "ai_cost_usd_total", provider="anthropic", model="claude-sonnet-4"
        ) == (pytest.approx(expected))

    def test_cache_without_its_own_rate_is_priced_as_input(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.set_prices({"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}})
        with inst.track_ai_call("p", "m") as call:
            call.add_usage(input_tokens=100, output_tokens=10, cache_read=60)
        assert sample(registry, "ai_cost_usd_total", provider="p", model="m") == pytest.approx(
            120e-06
        )

    def test_unpriced(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        inst.set_prices({"gpt-4o": {"input_cost_per_token": 2.5e-06}})  # no output price
        ask = inst.track_ai_call("openai", None)(lambda model, response: response)
        ask("gpt-4o", openai_chat(10, 0))  # priced: no output tokens to price
        ask("gpt-4o", openai_chat(10, 5))  # output without a price
        ask("o3", openai_chat(10, 5))  # no entry
        ask("gpt-4o", {"no": "usage"})  # no usage

        @inst.track_ai_call("openai", "gpt-4o")
        def rejected() -> None:
            raise RateLimitError()

        with pytest.raises(RateLimitError):
            rejected()
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx(25e-06)
        assert sample(registry, "ai_unpriced_calls_total", provider="openai", model="gpt-4o") == 2
        assert sample(registry, "ai_unpriced_calls_total", provider="openai", model="o3") == 1
        # A rejected request (an error with no usage) is not billed: not counted as unpriced.
        assert calls(registry, "openai", "gpt-4o") == {"success": 3, "error": 1}

    def test_no_price_table_no_cost_series(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        inst.track_ai_call("openai", "gpt-4o")(lambda: openai_chat(10, 5))()
        assert sample(registry, "ai_cost_usd_total", provider="openai", model="gpt-4o") is None
        assert (
            sample(registry, "ai_unpriced_calls_total", provider="openai", model="gpt-4o") is None
        )
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 10, "output": 5}

    def test_streamed_cost(self, inst: Instrumentation, registry: CollectorRegistry) -> None:
        inst.set_prices(GPT4O_PRICES)
        ask = inst.track_ai_call("openai", "gpt-4o")(
            lambda: FakeStream(openai_chat_chunks(prompt=400, completion=100, cached=200))
        )
        for _ in ask():
            pass
        expected = 200 * 2.5e-06 + 200 * 1.25e-06 + 100 * 1e-05
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx(expected)

    def test_price_file_and_environment(self, tmp_path: Path, registry: CollectorRegistry) -> None:
        path = tmp_path / "model_prices.json"
        table = {
            "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of chat, embedding, ..."},
            "dall-e-3": {"output_cost_per_image": 0.04, "mode": "image_generation"},
            **GPT4O_PRICES,
        }
        path.write_text(json.dumps(table))
        assert set(load_prices(path)) == {"gpt-4o"}
        inst = Instrumentation(
            registry=registry, **from_environment({"INSTRUMENT_AI_PRICES": str(path)})
        )
        inst.track_ai_call("openai", "gpt-4o")(lambda: openai_chat(100, 10))()
        assert sample(
            registry, "ai_cost_usd_total", provider="openai", model="gpt-4o"
        ) == pytest.approx(100 * 2.5e-06 + 10 * 1e-05)
        inst.close()

    @pytest.mark.parametrize(
        ("table", "error", "message"),
        [
            (["gpt-4o"], TypeError, "mapping of model name to prices"),
            ({"gpt-4o": 2.5e-06}, TypeError, r"prices\['gpt-4o'\] must be a mapping"),
            ({"gpt-4o": {"input_cost_per_token": "2.5e-06"}}, TypeError, "must be a number"),
            ({"gpt-4o": {"input_cost_per_token": -1}}, ValueError, "finite, non-negative"),
            ({"gpt-4o": {"output_cost_per_token": float("inf")}}, ValueError, "finite"),
            (
                {"gpt-4o": {"input_cost_per_tokn": 1e-06}},
                ValueError,
                "no model in prices has a per-token price",
            ),
            ({}, ValueError, "input_cost_per_token and output_cost_per_token"),
            ("/nonexistent/prices.json", ValueError, "cannot read the price table"),
        ],
    )
    def test_bad_tables_are_rejected(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        table: Any,
        error: type[Exception],
        message: str,
    ) -> None:
        with pytest.raises(error, match=message):
            inst.set_prices(table)
        inst.track_ai_call("openai", "gpt-4o")(lambda: openai_chat(1, 1))()
        assert sample(registry, "ai_cost_usd_total", provider="openai", model="gpt-4o") is None

    def test_invalid_json_file(
        self, tmp_path: Path, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        path = tmp_path / "prices.json"
        path.write_text("{not json")
        with pytest.raises(ValueError, match="not valid JSON"):
            inst.set_prices(str(path))
        inst.track_ai_call("openai", "gpt-4o")(lambda: openai_chat(1, 1))()
        assert (
            sample(registry, "ai_unpriced_calls_total", provider="openai", model="gpt-4o") is None
        )


# -- decoration-time validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        (("",), {}, TypeError, "provider must be a non-empty string such as 'openai'"),
        ((None,), {}, TypeError, "provider must be a non-empty string"),
        ((3,), {}, TypeError, "provider must be a non-empty string"),
        (("openai", 4), {}, TypeError, "model must be a model name such as 'gpt-4o', or None"),
        (("openai", ""), {}, TypeError, "model must be a model name"),
        (("openai", "gpt-4o"), {"usage": "prompt_tokens"}, TypeError, "usage must be a callable"),
        (("openai", "gpt-4o"), {"stream": "yes"}, ValueError, "stream must be 'auto'"),
        (("openai", "gpt-4o"), {"stream": 1}, ValueError, "stream must be 'auto'"),
        (("openai", "gpt-4o"), {"stream": None}, ValueError, "stream must be 'auto'"),
        (
            ("openai", "gpt-4o"),
            {"streaming": True},
            TypeError,
            "unknown option.*'streaming'.*the options are",
        ),
        (("openai", "gpt-4o"), {"job_type": ""}, TypeError, "job_type must be a non-empty string"),
        (("openai", "gpt-4o"), {"operation": 5}, TypeError, "operation must be a non-empty string"),
        (
            ("openai", "gpt-4o"),
            {"normalize_model": "lower"},
            TypeError,
            "normalize_model must be a callable",
        ),
        (
            ("openai", "gpt-4o"),
            {"normalize_model": lambda m: None},
            TypeError,
            "must return a non-empty string",
        ),
    ],
)
def test_bad_input_is_rejected_at_decoration(
    inst: Instrumentation,
    registry: CollectorRegistry,
    args: tuple[Any, ...],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        inst.track_ai_call(*args, **options)
    with pytest.raises(error, match=message):
        track_ai_call(*args, **options)
    assert active(registry, "ai_call") is None  # nothing was recorded


def test_decorator_without_arguments(inst: Instrumentation, registry: CollectorRegistry) -> None:
    with pytest.raises(
        TypeError, match=r"needs arguments: use @track_ai_call\('openai', 'gpt-4o'\)"
    ):

        @track_ai_call  # type: ignore[arg-type]
        def ask() -> None: ...

    with pytest.raises(TypeError, match="needs arguments"):

        @inst.track_ai_call  # type: ignore[arg-type]
        def ask_too() -> None: ...

    assert active(registry, "ai_call") is None


def test_options_cannot_change_after_decoration(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Checked once at decoration, so nothing may change them after: a value set later
    would skip the check (stream="bogus" used to be taken silently and read as "auto")."""
    tracker = inst.track_ai_call("openai", "gpt-4o", stream=False, job_type="llm")
    for name, value in [("stream", "bogus"), ("model", ""), ("job_type", ""), ("provider", 3)]:
        with pytest.raises(AttributeError):
            setattr(tracker, name, value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(tracker.options, name, value)
    assert (tracker.provider, tracker.model, tracker.stream, tracker.job_type) == (
        "openai",
        "gpt-4o",
        False,
        "llm",
    )
    gen = iter([openai_chat(2, 3)])
    assert tracker(lambda: gen)() is gen  # stream=False still: not wrapped
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert active(registry, "llm") == 0


def test_normalize_model_of_a_fixed_model_runs_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    seen: list[str] = []

    def normalize(model: str) -> str:
        seen.append(model)
        return model.removesuffix("-2024-08-06")

    ask = inst.track_ai_call("openai", "gpt-4o-2024-08-06", normalize_model=normalize)(
        lambda: openai_chat(1, 2)
    )
    for _ in range(3):
        ask()
    assert seen == ["gpt-4o-2024-08-06"]  # at decoration, never per call
    assert calls(registry, "openai", "gpt-4o") == {"success": 3}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 3, "output": 6}


# -- instrumentation never changes the call ---------------------------------------------------


class TestTransparency:
    def test_a_failing_extractor_changes_nothing(
        self, inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        def extractor(response: Any) -> Any:
            raise KeyError("usage")

        response = openai_chat(1, 1)
        ask = inst.track_ai_call("openai", "gpt-4o", usage=extractor)(lambda: response)
        assert ask() is response
        assert ask() is response
        assert calls(registry, "openai", "gpt-4o") == {"success": 2}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 0, "output": 0}
        assert sample(registry, "ai_usage_missing_total", provider="openai", model="gpt-4o") == 2
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "usage extractor of track_ai_call('openai', 'gpt-4o') raised KeyError" in warning

    def test_recording_failure_inside_a_stream_never_reaches_the_caller(
        self,
        inst: Instrumentation,
        registry: CollectorRegistry,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        def broken(chunk: Any) -> Any:
            raise RuntimeError("extractor bug")

        monkeypatch.setattr(tracker_module, "read_tokens", broken)
        chunks = openai_chat_chunks()
        stream = inst.track_ai_call("openai", "gpt-4o")(lambda: FakeStream(chunks))()
        assert list(stream) == chunks
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert sample(registry, "ai_usage_missing_total", provider="openai", model="gpt-4o") == 1
        # Once for the call, not once per chunk.
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert "reading dict raised RuntimeError" in warning

    def test_disabled(self, registry: CollectorRegistry) -> None:
        inst = Instrumentation(registry=registry, enabled=False)
        gen = iter([1, 2])
        assert inst.track_ai_call("openai", "gpt-4o")(lambda: gen)() is gen
        with inst.track_ai_call("openai") as call:
            assert call.record_response(openai_chat()) == openai_chat()
            call.add_usage(input_tokens=3)
        assert calls(registry, "openai", "gpt-4o") == {}
        assert active(registry, "ai_call") is None

    def test_add_usage_rejects_bad_counts(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        with inst.track_ai_call("openai", "gpt-4o") as call:
            with pytest.raises(TypeError, match="input_tokens must be an int"):
                call.add_usage(input_tokens="3")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="output_tokens must not be negative"):
                call.add_usage(output_tokens=-1)
            call.add_usage(input_tokens=3)
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 3, "output": 0}

    def test_usage_extractor_may_return_a_usage(
        self, inst: Instrumentation, registry: CollectorRegistry
    ) -> None:
        ask = inst.track_ai_call(
            "local", "llama", usage=lambda r: Usage(r["n_prompt"], r["n_gen"])
        )(lambda: {"n_prompt": 11, "n_gen": 22})
        assert ask() == {"n_prompt": 11, "n_gen": 22}
        assert token_counts(registry, "local", "llama") == {"input": 11, "output": 22}


def test_module_level_follows_the_default(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    default = Instrumentation(registry=registry)
    monkeypatch.setattr(defaults_module, "_default", default)
    tracker = track_ai_call("openai", "gpt-4o", operation="embeddings")
    assert isinstance(tracker, AICallTracker)
    assert repr(tracker) == "track_ai_call('openai', 'gpt-4o')"
    assert tracker.operation == "embeddings"
    tracker(lambda: {"usage": {"prompt_tokens": 8, "total_tokens": 8}})()
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 8, "output": 0}
    assert instrument.track_ai_call is track_ai_call
    default.close()


def test_responses_api_response(inst: Instrumentation, registry: CollectorRegistry) -> None:
    inst.track_ai_call("openai", "o4-mini")(
        lambda: as_object(openai_response(900, 450, cached=512, reasoning=256))
    )()
    assert token_counts(registry, "openai", "o4-mini") == {
        "input": 900,
        "output": 450,
        "cache_read": 512,
        "reasoning": 256,
    }


def test_operation_is_on_the_handle_and_only_on_the_operations_counter(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    seen = []

    def usage(response: Any) -> Any:
        return response["usage"]

    embed = inst.track_ai_call(
        "openai", "text-embedding-3-small", operation="embeddings", usage=usage
    )
    with embed as call:
        seen.append(call.operation)
        call.record_response({"usage": {"input_tokens": 8}})
    with inst.track_ai_call("openai", "gpt-4o") as call:
        seen.append(call.operation)
    assert seen == ["embeddings", "chat"]
    assert token_counts(registry, "openai", "text-embedding-3-small") == {"input": 8, "output": 0}
    # The operation splits ai_operations_total only: the seed's series keep their labels.
    labelled = {
        metric.name
        for metric in registry.collect()
        for s in metric.samples
        if "operation" in s.labels
    }
    assert labelled == {"codomyrmex_ai_operations"}
    disabled = Instrumentation(registry=CollectorRegistry(), enabled=False)
    with disabled.track_ai_call("openai", operation="embeddings") as call:
        assert call.operation == "embeddings"


def test_module_level_follows_configure_and_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults_module, "_default", None)
    ask = track_ai_call("openai", "gpt-4o")(lambda: openai_chat(3, 2))
    first = instrument.configure(registry=CollectorRegistry())
    ask()
    off = instrument.configure(registry=CollectorRegistry(), enabled=False)
    ask()
    third = instrument.configure(registry=CollectorRegistry())
    ask()
    ask()
    assert calls(first.registry, "openai", "gpt-4o") == {"success": 1}
    # Disabled: not even a series.
    assert calls(off.registry, "openai", "gpt-4o") == {}
    assert token_counts(off.registry, "openai", "gpt-4o") == {}
    assert active(off.registry, "ai_call") is None
    assert calls(third.registry, "openai", "gpt-4o") == {"success": 2}
    assert token_counts(third.registry, "openai", "gpt-4o") == {"input": 6, "output": 4}
    third.close()
