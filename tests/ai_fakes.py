"""Realistic fake LLM responses, stream chunks, SDK stream objects and client errors.

Built from the field shapes of the OpenAI, Anthropic and Gemini APIs, as plain dicts (what
raw HTTP gives) and, through :func:`as_object`, as objects with attributes (what the SDKs
give; a field the API leaves out is an attribute set to None, as in the SDK models).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any


def as_object(value: Any) -> Any:
    """Dicts (nested, in lists too) as attribute objects, like an SDK's response models."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: as_object(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_object(v) for v in value]
    return value


# -- OpenAI Chat Completions -----------------------------------------------------------------


def openai_chat(
    prompt: int = 120,
    completion: int = 40,
    *,
    cached: int = 0,
    reasoning: int = 0,
    model: str = "gpt-4o-2024-08-06",
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
    }


def openai_chat_chunks(
    words: tuple[str, ...] = ("Hello", " there", "!"),
    *,
    prompt: int = 30,
    completion: int = 3,
    cached: int = 0,
    include_usage: bool = True,
    model: str = "gpt-4o-mini-2024-07-18",
) -> list[dict[str, Any]]:
    """A chat completion stream: role chunk, content chunks, finish chunk, and with
    ``stream_options={"include_usage": True}`` a last chunk with empty choices and usage."""

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1741569952,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": None,
        }

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": w}, None) for w in words]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        last = chunk({}, None)
        last["choices"] = []
        last["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        chunks.append(last)
    return chunks


# -- OpenAI Responses ------------------------------------------------------------------------


def openai_response(
    input_tokens: int = 80,
    output_tokens: int = 40,
    *,
    cached: int = 0,
    reasoning: int = 0,
    model: str = "o4-mini-2025-04-16",
) -> dict[str, Any]:
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc054267",
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "In a peaceful grove..."}],
            }
        ],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def openai_response_events(
    input_tokens: int = 50, output_tokens: int = 20, *, reasoning: int = 0
) -> list[dict[str, Any]]:
    """A Responses stream: usage only in the response.completed event's response."""
    created = openai_response(input_tokens, output_tokens, reasoning=reasoning)
    created = {**created, "status": "in_progress", "output": [], "usage": None}
    completed = openai_response(input_tokens, output_tokens, reasoning=reasoning)
    return [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "In a"},
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": " grove"},
        {"type": "response.completed", "sequence_number": 3, "response": completed},
    ]


# -- Anthropic Messages ----------------------------------------------------------------------


def anthropic_message(
    input_tokens: int = 12,
    output_tokens: int = 30,
    *,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    model: str = "claude-sonnet-4-20250514",
) -> dict[str, Any]:
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output_tokens,
        },
    }


def anthropic_events(
    input_tokens: int = 25,
    *,
    cache_read: int = 0,
    cache_creation: int = 0,
    output_steps: tuple[int, ...] = (15,),
    model: str = "claude-sonnet-4-20250514",
) -> list[dict[str, Any]]:
    """A Messages stream. ``output_steps`` are the running output totals of successive
    message_delta events (cumulative: the last one is the call's output)."""
    start = anthropic_message(
        input_tokens, 1, cache_read=cache_read, cache_creation=cache_creation, model=model
    )
    start = {**start, "content": [], "stop_reason": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
        {"type": "content_block_stop", "index": 0},
    ]
    for total in output_steps:
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": total},
            }
        )
    events.append({"type": "message_stop"})
    return events


# -- Gemini ----------------------------------------------------------------------------------


def gemini_response(
    prompt: int = 20,
    candidates: int = 30,
    *,
    thoughts: int | None = None,
    cached: int | None = None,
    model: str = "gemini-2.5-flash",
) -> dict[str, Any]:
    total = prompt + candidates + (thoughts or 0)
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": "Hello from Gemini"}], "role": "model"},
                "finish_reason": "STOP",
                "index": 0,
            }
        ],
        "model_version": model,
        "usage_metadata": {
            "prompt_token_count": prompt,
            "candidates_token_count": candidates,
            "thoughts_token_count": thoughts,
            "cached_content_token_count": cached,
            "total_token_count": total,
        },
    }


def gemini_rest_response(
    prompt: int = 20, candidates: int = 30, *, thoughts: int = 0
) -> dict[str, Any]:
    """The REST API's camelCase JSON."""
    return {
        "candidates": [
            {"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP"}
        ],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + candidates + thoughts,
        },
        "modelVersion": "gemini-2.0-flash",
    }


def gemini_chunks(
    prompt: int = 9, steps: tuple[int, ...] = (2, 5, 8), *, thoughts: int = 0
) -> list[dict[str, Any]]:
    """A generate_content_stream: every chunk carries usage_metadata, the last the totals."""
    chunks = []
    for i, candidates in enumerate(steps):
        last = i == len(steps) - 1
        chunk = gemini_response(prompt, candidates, thoughts=thoughts if last else None)
        chunk["candidates"][0]["finish_reason"] = "STOP" if last else None
        chunks.append(chunk)
    return chunks


# -- SDK-like streams and errors -------------------------------------------------------------


class FakeStream:
    """Like ``openai.Stream`` / ``anthropic.Stream``: an iterator and a context manager with
    ``close()`` and the HTTP ``response``; optionally fails after ``fail_after`` chunks."""

    def __init__(
        self,
        chunks: list[Any],
        *,
        fail_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self._chunks = list(chunks)
        self._index = 0
        self._fail_after = fail_after
        self._error = error
        self.response = SimpleNamespace(status_code=200, headers={"x-request-id": "req_123"})
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._fail_after is not None and self._index == self._fail_after:
            assert self._error is not None
            raise self._error
        if self._index >= len(self._chunks):
            raise StopIteration
        chunk = self._chunks[self._index]
        self._index += 1
        return chunk

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeAsyncStream:
    """Like ``openai.AsyncStream``: an async iterator with ``async def close()`` and
    ``async with``."""

    def __init__(
        self,
        chunks: list[Any],
        *,
        fail_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self._chunks = list(chunks)
        self._index = 0
        self._fail_after = fail_after
        self._error = error
        self.response = SimpleNamespace(status_code=200)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._fail_after is not None and self._index == self._fail_after:
            assert self._error is not None
            raise self._error
        if self._index >= len(self._chunks):
            raise StopAsyncIteration
        chunk = self._chunks[self._index]
        self._index += 1
        return chunk

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeAsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RateLimitError(Exception):
    """Like the SDKs' RateLimitError: carries ``status_code``."""

    def __init__(self, message: str = "Rate limit reached", status_code: int = 429) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServiceUnavailableError(Exception):
    """Carries the status only on its ``response``, as httpx's HTTPStatusError does."""

    def __init__(self) -> None:
        super().__init__("Service Unavailable")
        self.response = SimpleNamespace(status_code=503)
