"""What every provider dialect of the local LLM server shares: a parsed request
(:class:`Ask`), its usage (:class:`Counts`), a streamed body (:class:`Events`), and the
:class:`Dialect` each provider's module implements."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from aiohttp import web

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "Ask",
    "BadRequest",
    "Counts",
    "Dialect",
    "Events",
    "Pacing",
    "StreamFailure",
    "content_text",
    "count_tokens",
    "messages_tokens",
    "token_limit",
]

#: Reply length in words when the request sets no token limit.
DEFAULT_COMPLETION_TOKENS = 12

_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "metrics",
    "flow", "to", "the", "gateway", "and", "dashboards", "light", "up", "with", "every",
    "token", "counted",
)  # fmt: skip


def count_tokens(text: str) -> int:
    """The server's token count of ``text``: its whitespace-separated words."""
    return len(text.split())


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts (OpenAI,
    Anthropic, Cohere and Gemini parts all keep it under ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _reply_words(count: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(_WORDS), count))


class BadRequest(Exception):
    pass


def messages_tokens(messages: Any, key: str = "content") -> int:
    """The prompt tokens of a non-empty list of message objects."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.")
    tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("Each message must be an object.")
        tokens += count_tokens(content_text(message.get(key)))
    return tokens


def token_limit(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of ``names`` the request sets, as a positive token limit."""
    for name in names:
        limit = body.get(name)
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest(f"'{name}' must be a positive integer.")
        return limit
    return None


@dataclass(frozen=True)
class Ask:
    """One parsed request: what to answer, in any provider's terms."""

    model: str
    prompt_tokens: int
    #: The reply's length in words; ``limited`` when the request's token limit set it.
    reply_tokens: int
    limited: bool
    stream: bool
    #: OpenAI Chat only: whether a stream ends with a usage chunk.
    include_usage: bool = False

    @property
    def words(self) -> list[str]:
        return _reply_words(self.reply_tokens)

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Counts:
    """The usage of one answer. ``prompt`` includes both cache counts; ``output`` is the
    visible ``reply`` plus ``reasoning``."""

    prompt: int
    cache_read: int
    cache_creation: int
    reply: int
    reasoning: int

    @property
    def output(self) -> int:
        return self.reply + self.reasoning


class StreamFailure(Exception):
    """Ends a stream set to fail, after its first content chunk."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Pacing(Protocol):
    """The delays of a stream, read as each chunk is sent (the server's own attributes)."""

    chunk_delay: float
    first_content_delay: float


class Events:
    """The body of one streamed answer: server-sent events written as they are made, with
    the server's delays before the content chunks only. ``fail`` is the status of a failure
    staged after the first content chunk."""

    def __init__(
        self, response: web.StreamResponse, pacing: Pacing, fail: int | None = None
    ) -> None:
        self._response = response
        self._pacing = pacing
        self._fail = fail
        self._content_sent = False

    async def send(self, data: Mapping[str, Any] | str, event: str | None = None) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        head = "" if event is None else f"event: {event}\n"
        await self._response.write(f"{head}data: {payload}\n\n".encode())

    async def content(self, data: Mapping[str, Any], event: str | None = None) -> None:
        """An event that carries generated text: the first waits ``first_content_delay``."""
        pacing = self._pacing
        delay = pacing.chunk_delay
        if not self._content_sent:
            self._content_sent = True
            delay += pacing.first_content_delay
        if delay:
            await asyncio.sleep(delay)
        await self.send(data, event)
        if self._fail is not None:
            raise StreamFailure(self._fail)


class Dialect:
    """One provider's wire format: how a request reads, and how answers and errors look."""

    #: Which of the server's staged details this provider reports.
    cache_read: ClassVar[bool] = True
    cache_creation: ClassVar[bool] = True
    reasoning: ClassVar[bool] = False

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        raise NotImplementedError

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        """The error body of ``status``."""
        raise NotImplementedError

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
        raise NotImplementedError

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
        raise NotImplementedError

    async def stream_error(self, out: Events, status: int, message: str) -> bool:
        """Report a failure in a stream already under way, as the provider does; False when
        its wire format has no such event (the server then drops the connection)."""
        return False

    def headers(self, exhausted: bool) -> dict[str, str]:
        """The headers of every answer: a request id and the rate-limit headroom, none of it
        left when ``exhausted`` (a 429)."""
        return {}
