"""The work being instrumented: trivial functions, and fake OpenAI chat completions.

The fakes have the field shapes of OpenAI's Chat Completions objects (attributes) and of
their ``model_dump()`` (plain dicts); no SDK is imported. A stream is a generator of chunks
whose last one has no choices and carries the usage, as with
``stream_options={"include_usage": True}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ai_unavailable",
    "chat_completion",
    "chat_completion_dict",
    "make_async_work",
    "make_items",
    "make_stream",
    "make_work",
]

PROMPT_TOKENS = 120
COMPLETION_TOKENS = 80


def make_work() -> Callable[[int], int]:
    """A fresh trivial function, so each decorated variant wraps its own function object."""

    def work(x: int) -> int:
        return x + 1

    return work


def make_async_work() -> Callable[[int], Coroutine[Any, Any, int]]:
    async def work(x: int) -> int:
        return x + 1

    return work


def make_items(length: int) -> Callable[[], Iterator[int]]:
    """A fresh generator function yielding ``length`` items from a Python loop."""

    def items() -> Iterator[int]:
        # A Python loop, as a generator doing work per item has (yield from would be C).
        for i in range(length):  # noqa: UP028
            yield i

    return items


@dataclass(slots=True)
class PromptTokensDetails:
    cached_tokens: int = 0
    audio_tokens: int = 0


@dataclass(slots=True)
class CompletionTokensDetails:
    reasoning_tokens: int = 0
    audio_tokens: int = 0


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


@dataclass(slots=True)
class Message:
    role: str
    content: str | None


@dataclass(slots=True)
class Choice:
    index: int
    message: Message
    finish_reason: str | None


@dataclass(slots=True)
class ChatCompletion:
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None
    object: str = "chat.completion"


@dataclass(slots=True)
class Delta:
    content: str | None
    role: str | None = None


@dataclass(slots=True)
class ChunkChoice:
    index: int
    delta: Delta
    finish_reason: str | None = None


@dataclass(slots=True)
class ChatCompletionChunk:
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"


def _usage() -> Usage:
    return Usage(
        prompt_tokens=PROMPT_TOKENS,
        completion_tokens=COMPLETION_TOKENS,
        total_tokens=PROMPT_TOKENS + COMPLETION_TOKENS,
        prompt_tokens_details=PromptTokensDetails(),
        completion_tokens_details=CompletionTokensDetails(),
    )


def chat_completion(model: str = "gpt-4o") -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-bench",
        created=1_700_000_000,
        model=model,
        choices=[Choice(0, Message("assistant", "fine"), "stop")],
        usage=_usage(),
    )


def chat_completion_dict(model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def make_stream(length: int, model: str = "gpt-4o") -> Callable[[], Iterator[ChatCompletionChunk]]:
    """A function returning a fresh stream: ``length`` chunks, the last one with the usage.

    The chunks are built once; iterating costs only the generator, as a client whose
    network reads are already done would.
    """
    chunks = [
        ChatCompletionChunk("chatcmpl-bench", 1_700_000_000, model, [ChunkChoice(0, Delta("tok"))])
        for _ in range(length - 2)
    ]
    chunks.append(
        ChatCompletionChunk(
            "chatcmpl-bench", 1_700_000_000, model, [ChunkChoice(0, Delta(None), "stop")]
        )
    )
    chunks.append(ChatCompletionChunk("chatcmpl-bench", 1_700_000_000, model, [], _usage()))

    def chunk_stream() -> Iterator[ChatCompletionChunk]:
        for chunk in chunks:  # noqa: UP028 - one Python step per chunk, like a client's
            yield chunk

    def create() -> Iterator[ChatCompletionChunk]:
        return chunk_stream()

    return create


def ai_unavailable() -> str | None:
    """Why ``track_ai_call`` cannot be benchmarked here, or None when it can."""
    try:
        importlib.import_module("instrument.ai")
    except ImportError as exc:
        return f"not available yet (instrument.ai does not import: {exc})"
    return None
