"""A small local server speaking the LLM providers' wire formats, for demos and tests.

One server on ``127.0.0.1`` answers each provider's documented JSON and server-sent events
on its usual path, so the real SDKs can be pointed at it with their ``base_url`` option:

========================  ===================================================  ================
provider (SDK base URL)   path                                                 stream
========================  ===================================================  ================
OpenAI (``base_url``)     ``POST /v1/chat/completions``                        ``data:`` chunks,
                                                                               ``[DONE]``
OpenAI Responses          ``POST /v1/responses``                               ``event:``
                                                                               response.*
Anthropic (``url``)       ``POST /v1/messages``                                ``event:``
                                                                               message_*
Gemini (``url``)          ``POST /v1beta/models/{model}:generateContent``,     ``data:`` chunks
                          ``:streamGenerateContent?alt=sse``
Mistral (``mistral_url``) ``POST /mistral/v1/chat/completions``                ``data:`` chunks,
                                                                               ``[DONE]``
Cohere v2 (``url``)       ``POST /v2/chat``                                    ``event:``
                                                                               message-*
========================  ===================================================  ================

Mistral's path shares OpenAI's, so it lives under its own root: Mistral streams carry the
usage on the last chunk unasked, where OpenAI sends it only with
``stream_options.include_usage``, on an extra chunk whose ``choices`` is empty.

Token counts are deterministic: a token is a whitespace-separated word. The prompt's tokens
are the words of every message (and system prompt); the reply is the request's token limit
(``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``, ``maxOutputTokens``;
default 12) in words, streamed one word per content chunk. ``cache_read_tokens``,
``cache_creation_tokens`` and ``reasoning_tokens`` add those details to every answer, in the
fields each provider uses (capped by the prompt; reasoning only where the provider reports
it: OpenAI and Gemini, where it is output beyond the visible reply).

Streams send their opening events (a role-only chunk, ``response.created``,
``message_start``, ``message-start``) at once, then wait ``first_content_delay`` seconds
before the first chunk that carries generated text, and ``chunk_delay`` before each one.

Answers carry the provider's request id and rate-limit headers. ``failures={"model-name":
429}`` makes requests for that model fail with that status, in the provider's error body; a
429 also says ``retry-after`` and that no requests or tokens remain, and a 401 quotes the
request's API key back (unmasked, so tests can check it goes no further).
``stream_failures={"model-name": 529}`` fails that model's streams after their first content
chunk, with the provider's in-stream error event (OpenAI Chat, Anthropic, Gemini), or by
dropping the connection where its format has none.

>>> async with LocalLLMServer() as server:            # in async code
...     url = server.completions_url                   # http://127.0.0.1:<port>/v1/chat/completions
>>> with LocalLLMServer(chunk_delay=0.01) as server:  # in sync code: runs in a thread
...     ...

:func:`iter_chunks` reads a streamed chat completion's chunks from an aiohttp response;
:func:`run_demo_calls` is the demo's tour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .instrumentation import Instrumentation

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "DEMO_FAILING_MODEL",
    "DEMO_MODELS",
    "DEMO_PROMPTS",
    "LocalLLMServer",
    "count_tokens",
    "iter_chunks",
    "run_demo_calls",
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


def _content_text(content: Any) -> str:
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


class _BadRequest(Exception):
    pass


def _messages_tokens(messages: Any, key: str = "content") -> int:
    """The prompt tokens of a non-empty list of message objects."""
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.")
    tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("Each message must be an object.")
        tokens += count_tokens(_content_text(message.get(key)))
    return tokens


def _limit(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of ``names`` the request sets, as a positive token limit."""
    for name in names:
        limit = body.get(name)
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _BadRequest(f"'{name}' must be a positive integer.")
        return limit
    return None


@dataclass(frozen=True)
class _Ask:
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
class _Counts:
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


class _StreamFailure(Exception):
    """Ends a stream set to fail, after its first content chunk."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Events:
    """The body of one streamed answer: server-sent events written as they are made, with
    the server's delays before the content chunks only. ``fail`` is the status of a failure
    staged after the first content chunk."""

    def __init__(
        self, response: web.StreamResponse, server: LocalLLMServer, fail: int | None = None
    ) -> None:
        self._response = response
        self._server = server
        self._fail = fail
        self._content_sent = False

    async def send(self, data: Mapping[str, Any] | str, event: str | None = None) -> None:
        payload = data if isinstance(data, str) else json.dumps(data)
        head = "" if event is None else f"event: {event}\n"
        await self._response.write(f"{head}data: {payload}\n\n".encode())

    async def content(self, data: Mapping[str, Any], event: str | None = None) -> None:
        """An event that carries generated text: the first waits ``first_content_delay``."""
        server = self._server
        delay = server.chunk_delay
        if not self._content_sent:
            self._content_sent = True
            delay += server.first_content_delay
        if delay:
            await asyncio.sleep(delay)
        await self.send(data, event)
        if self._fail is not None:
            raise _StreamFailure(self._fail)


class _Dialect:
    """One provider's wire format: how a request reads, and how answers and errors look."""

    #: Which of the server's staged details this provider reports.
    cache_read: ClassVar[bool] = True
    cache_creation: ClassVar[bool] = True
    reasoning: ClassVar[bool] = False

    def __init__(self, server: LocalLLMServer) -> None:
        self.server = server

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        raise NotImplementedError

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        """The error body of ``status``."""
        raise NotImplementedError

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        raise NotImplementedError

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        raise NotImplementedError

    async def stream_error(self, out: _Events, status: int, message: str) -> bool:
        """Report a failure in a stream already under way, as the provider does; False when
        its wire format has no such event (the server then drops the connection)."""
        return False

    def headers(self, exhausted: bool) -> dict[str, str]:
        """The headers of every answer: a request id and the rate-limit headroom, none of it
        left when ``exhausted`` (a 429)."""
        return {}


class _OpenAIErrors(_Dialect):
    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        if bad_request:
            kind, code = "invalid_request_error", None
        elif status == 429:
            kind, code = "requests", "rate_limit_exceeded"
        else:
            kind, code = "server_error", None
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return body

    def headers(self, exhausted: bool) -> dict[str, str]:
        return {
            "x-request-id": "req_local",
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0" if exhausted else "59",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "0" if exhausted else "149000",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "1s",
        }


class _OpenAIChat(_OpenAIErrors):
    reasoning = True

    async def stream_error(self, out: _Events, status: int, message: str) -> bool:
        await out.send(self.error(status, message))
        return True

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("'model' is required and must be a string.")
        prompt = _messages_tokens(body.get("messages"))
        limit = _limit(body, "max_completion_tokens", "max_tokens")
        options = body.get("stream_options")
        return _Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    def usage(self, counts: _Counts) -> dict[str, Any]:
        return {
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.output,
            "total_tokens": counts.prompt + counts.output,
            "prompt_tokens_details": {
                "cached_tokens": counts.cache_read,
                "cache_write_tokens": counts.cache_creation,
            },
            "completion_tokens_details": {"reasoning_tokens": counts.reasoning},
        }

    def finish_reason(self, ask: _Ask) -> str:
        return "length" if ask.limited else "stop"

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-local{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ask.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ask.text},
                    "finish_reason": self.finish_reason(ask),
                }
            ],
            "usage": self.usage(counts),
        }

    def chunk(
        self,
        ask: _Ask,
        number: int,
        created: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": f"chatcmpl-local{number}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": ask.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if ask.include_usage:
            payload["usage"] = None  # as OpenAI sends it on every chunk but the last
        return payload

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        created = int(time.time())
        await out.send(self.chunk(ask, number, created, {"role": "assistant", "content": ""}))
        for index, word in enumerate(ask.words):
            delta = {"content": word if index == 0 else f" {word}"}
            await out.content(self.chunk(ask, number, created, delta))
        await out.send(self.chunk(ask, number, created, {}, self.finish_reason(ask)))
        if ask.include_usage:
            final = self.chunk(ask, number, created, {})
            final["choices"] = []
            final["usage"] = self.usage(counts)
            await out.send(final)
        await out.send("[DONE]")


class _Mistral(_OpenAIChat):
    """Mistral's chat completions: OpenAI's shape, without the cache and reasoning details,
    and a stream whose finishing chunk carries the usage, unasked."""

    cache_read = cache_creation = reasoning = False

    async def stream_error(self, out: _Events, status: int, message: str) -> bool:
        return False  # no documented in-stream error: the connection drops

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        ask = super().parse(request, body)
        return _Ask(ask.model, ask.prompt_tokens, ask.reply_tokens, ask.limited, ask.stream)

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        kind = (
            "invalid_request_error"
            if bad_request
            else "rate_limited"
            if status == 429
            else "internal_server_error"
        )
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": None}
        return body

    def headers(self, exhausted: bool) -> dict[str, str]:
        return {
            "x-ratelimitbysize-limit-minute": "500000",
            "x-ratelimitbysize-remaining-minute": "0" if exhausted else "499000",
        }

    def usage(self, counts: _Counts) -> dict[str, Any]:
        return {
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.reply,
            "total_tokens": counts.prompt + counts.reply,
        }

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        created = int(time.time())
        await out.send(self.chunk(ask, number, created, {"role": "assistant", "content": ""}))
        for index, word in enumerate(ask.words):
            delta = {"content": word if index == 0 else f" {word}"}
            await out.content(self.chunk(ask, number, created, delta))
        final = self.chunk(ask, number, created, {"content": ""}, self.finish_reason(ask))
        final["usage"] = self.usage(counts)
        await out.send(final)
        await out.send("[DONE]")


class _OpenAIResponses(_OpenAIErrors):
    reasoning = True

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("'model' is required and must be a string.")
        given = body.get("input")
        prompt = count_tokens(given) if isinstance(given, str) else _messages_tokens(given)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            prompt += count_tokens(instructions)
        limit = _limit(body, "max_output_tokens")
        return _Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=body.get("stream") is True,
        )

    def usage(self, counts: _Counts) -> dict[str, Any]:
        return {
            "input_tokens": counts.prompt,
            "input_tokens_details": {
                "cached_tokens": counts.cache_read,
                "cache_write_tokens": counts.cache_creation,
            },
            "output_tokens": counts.output,
            "output_tokens_details": {"reasoning_tokens": counts.reasoning},
            "total_tokens": counts.prompt + counts.output,
        }

    @staticmethod
    def message(number: int, text: str | None) -> dict[str, Any]:
        """The output message item: in progress and empty, or completed with ``text``."""
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
        return {
            "id": f"msg_local{number}",
            "type": "message",
            "status": "in_progress" if text is None else "completed",
            "role": "assistant",
            "content": content,
        }

    def response(
        self, ask: _Ask, number: int, created: int, counts: _Counts | None
    ) -> dict[str, Any]:
        """The response object: in progress (no ``counts`` yet), or finished with them. A
        reply cut by ``max_output_tokens`` finishes as ``incomplete``, as OpenAI's does."""
        status = "in_progress"
        if counts is not None:
            status = "incomplete" if ask.limited else "completed"
        return {
            "id": f"resp_local{number}",
            "object": "response",
            "created_at": created,
            "status": status,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": None,
            "max_output_tokens": ask.reply_tokens if ask.limited else None,
            "model": ask.model,
            "output": [] if counts is None else [self.message(number, ask.text)],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None if counts is None else self.usage(counts),
            "metadata": {},
        }

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        return self.response(ask, number, int(time.time()), counts)

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        created = int(time.time())
        sequence = itertools.count()
        item_id = f"msg_local{number}"

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            return {"type": kind, "sequence_number": next(sequence), **fields}

        started = self.response(ask, number, created, None)
        await out.send(event("response.created", response=started), "response.created")
        await out.send(event("response.in_progress", response=started), "response.in_progress")
        added = event("response.output_item.added", output_index=0, item=self.message(number, None))
        await out.send(added, added["type"])
        part = {"type": "output_text", "text": "", "annotations": []}
        opened = event(
            "response.content_part.added",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=part,
        )
        await out.send(opened, opened["type"])
        for index, word in enumerate(ask.words):
            delta = event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=0,
                content_index=0,
                delta=word if index == 0 else f" {word}",
                logprobs=[],
            )
            await out.content(delta, delta["type"])
        text = ask.text
        for kind, fields in (
            ("response.output_text.done", {"text": text, "logprobs": []}),
            ("response.content_part.done", {"part": {**part, "text": text}}),
        ):
            done = event(kind, item_id=item_id, output_index=0, content_index=0, **fields)
            await out.send(done, kind)
        finished = event(
            "response.output_item.done", output_index=0, item=self.message(number, text)
        )
        await out.send(finished, finished["type"])
        final = self.response(ask, number, created, counts)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        await out.send(event(kind, response=final), kind)


class _Anthropic(_Dialect):
    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("model: Field required")
        prompt = _messages_tokens(body.get("messages"))
        prompt += count_tokens(_content_text(body.get("system")))
        limit = _limit(body, "max_tokens")
        if limit is None:
            raise _BadRequest("max_tokens: Field required")
        return _Ask(model, prompt, limit, limited=True, stream=body.get("stream") is True)

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        kind = (
            "invalid_request_error"
            if bad_request
            else "rate_limit_error"
            if status == 429
            else "overloaded_error"
            if status == 529
            else "api_error"
        )
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return body

    async def stream_error(self, out: _Events, status: int, message: str) -> bool:
        await out.send(self.error(status, message), "error")
        return True

    def headers(self, exhausted: bool) -> dict[str, str]:
        headers = {"request-id": "req_local"}
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            headers[f"anthropic-ratelimit-{kind}-limit"] = "50"
            headers[f"anthropic-ratelimit-{kind}-remaining"] = "0" if exhausted else "49"
            headers[f"anthropic-ratelimit-{kind}-reset"] = "2030-01-01T00:00:01Z"
        return headers

    @staticmethod
    def usage(counts: _Counts, output_tokens: int) -> dict[str, Any]:
        # Anthropic's input_tokens leaves out the cached part, which has its own fields.
        return {
            "input_tokens": counts.prompt - counts.cache_read - counts.cache_creation,
            "cache_creation_input_tokens": counts.cache_creation,
            "cache_read_input_tokens": counts.cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self, ask: _Ask, number: int, content: list[Any], usage: Any) -> dict[str, Any]:
        done = bool(content)
        return {
            "id": f"msg_local{number}",
            "type": "message",
            "role": "assistant",
            "model": ask.model,
            "content": content,
            "stop_reason": "max_tokens" if done else None,
            "stop_sequence": None,
            "usage": usage,
        }

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        content = [{"type": "text", "text": ask.text}]
        return self.message(ask, number, content, self.usage(counts, counts.reply))

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        # message_start reports the input and a first output count; message_delta the total.
        start = self.message(ask, number, [], self.usage(counts, 1))
        await out.send({"type": "message_start", "message": start}, "message_start")
        block = {"type": "text", "text": ""}
        opened = {"type": "content_block_start", "index": 0, "content_block": block}
        await out.send(opened, "content_block_start")
        await out.send({"type": "ping"}, "ping")
        for index, word in enumerate(ask.words):
            delta = {"type": "text_delta", "text": word if index == 0 else f" {word}"}
            await out.content(
                {"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"
            )
        await out.send({"type": "content_block_stop", "index": 0}, "content_block_stop")
        ending = {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": counts.reply},
        }
        await out.send(ending, "message_delta")
        await out.send({"type": "message_stop"}, "message_stop")


_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _Gemini(_Dialect):
    cache_creation = False
    reasoning = True

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        model = request.match_info["model"]
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
        prompt = _messages_tokens(contents, "parts")
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, dict):
            prompt += count_tokens(_content_text(system.get("parts")))
        config = body.get("generationConfig") or body.get("generation_config") or {}
        if not isinstance(config, dict):
            raise _BadRequest("generationConfig must be an object.")
        limit = _limit(config, "maxOutputTokens", "max_output_tokens")
        return _Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=request.match_info["action"] == "streamGenerateContent",
        )

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUS.get(status, "UNKNOWN"),
            }
        }
        return body

    async def stream_error(self, out: _Events, status: int, message: str) -> bool:
        await out.send(self.error(status, message))
        return True

    def metadata(self, counts: _Counts, reply_so_far: int) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "promptTokenCount": counts.prompt,
            "candidatesTokenCount": reply_so_far,
            "totalTokenCount": counts.prompt + reply_so_far + counts.reasoning,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": counts.prompt}],
        }
        if counts.reasoning:
            meta["thoughtsTokenCount"] = counts.reasoning
        if counts.cache_read:
            meta["cachedContentTokenCount"] = counts.cache_read
        return meta

    def answer(
        self, ask: _Ask, number: int, text: str, finished: bool, meta: dict[str, Any]
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if finished:
            candidate["finishReason"] = "MAX_TOKENS" if ask.limited else "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": meta,
            "modelVersion": ask.model,
            "responseId": f"local{number}",
        }

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        return self.answer(ask, number, ask.text, True, self.metadata(counts, counts.reply))

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        # Every chunk carries text and running usage totals; the last one the final counts.
        words = ask.words
        for index, word in enumerate(words, 1):
            text = word if index == 1 else f" {word}"
            meta = self.metadata(counts, index)
            await out.content(self.answer(ask, number, text, index == len(words), meta))


class _Cohere(_Dialect):
    """Cohere's v2 chat. Its usage has ``billed_units`` and ``tokens``; ``tokens`` also
    counts the prompt template Cohere wraps around the messages (``TEMPLATE_TOKENS``)."""

    cache_creation = False
    TEMPLATE_TOKENS: ClassVar[int] = 7

    def parse(self, request: web.Request, body: dict[str, Any]) -> _Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("model is required")
        prompt = _messages_tokens(body.get("messages"))
        limit = _limit(body, "max_tokens")
        return _Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=body.get("stream") is True,
        )

    def error(self, status: int, message: str, *, bad_request: bool = False) -> dict[str, Any]:
        return {"id": "local-error", "message": message}

    def headers(self, exhausted: bool) -> dict[str, str]:
        return {"x-endpoint-monthly-call-limit": "1000"}

    def usage(self, counts: _Counts) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "billed_units": {"input_tokens": counts.prompt, "output_tokens": counts.reply},
            "tokens": {
                "input_tokens": counts.prompt + self.TEMPLATE_TOKENS,
                "output_tokens": counts.reply,
            },
        }
        if counts.cache_read:
            usage["cached_tokens"] = counts.cache_read
        return usage

    def finish_reason(self, ask: _Ask) -> str:
        return "MAX_TOKENS" if ask.limited else "COMPLETE"

    def reply(self, ask: _Ask, counts: _Counts, number: int) -> dict[str, Any]:
        return {
            "id": f"local{number}",
            "finish_reason": self.finish_reason(ask),
            "message": {"role": "assistant", "content": [{"type": "text", "text": ask.text}]},
            "usage": self.usage(counts),
        }

    async def stream(self, out: _Events, ask: _Ask, counts: _Counts, number: int) -> None:
        message = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": []}
        start = {"id": f"local{number}", "type": "message-start", "delta": {"message": message}}
        await out.send(start, "message-start")
        empty = {"message": {"content": {"type": "text", "text": ""}}}
        await out.send({"type": "content-start", "index": 0, "delta": empty}, "content-start")
        for index, word in enumerate(ask.words):
            text = word if index == 0 else f" {word}"
            delta = {"message": {"content": {"text": text}}}
            await out.content(
                {"type": "content-delta", "index": 0, "delta": delta}, "content-delta"
            )
        await out.send({"type": "content-end", "index": 0}, "content-end")
        end = {
            "type": "message-end",
            "delta": {"finish_reason": self.finish_reason(ask), "usage": self.usage(counts)},
        }
        await out.send(end, "message-end")


class LocalLLMServer:
    """The providers' endpoints (see the module's table) on ``127.0.0.1`` (a free port by
    default). Use ``async with`` in async code, or plain ``with`` to run it in a background
    thread. ``requests`` keeps every request body received, in order, and ``paths`` the path
    each came to."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        first_content_delay: float = 0.0,
        failures: Mapping[str, int] | None = None,
        stream_failures: Mapping[str, int] | None = None,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        for name, seconds in (
            ("chunk_delay", chunk_delay),
            ("latency", latency),
            ("first_content_delay", first_content_delay),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError(
                    f"{name} must be a non-negative number of seconds, got {seconds!r}"
                )
        for name, tokens in (
            ("cache_read_tokens", cache_read_tokens),
            ("cache_creation_tokens", cache_creation_tokens),
            ("reasoning_tokens", reasoning_tokens),
        ):
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise ValueError(f"{name} must be a non-negative int, got {tokens!r}")
        for option, staged in (("failures", failures), ("stream_failures", stream_failures)):
            for model, status in (staged or {}).items():
                if (
                    isinstance(status, bool)
                    or not isinstance(status, int)
                    or not 400 <= status <= 599
                ):
                    raise ValueError(
                        f"{option}[{model!r}] must be an HTTP error status, got {status!r}"
                    )
        self.host = host
        self.port = port
        #: Seconds before each streamed content chunk.
        self.chunk_delay = chunk_delay
        #: Seconds before the first answer byte.
        self.latency = latency
        #: Seconds before a stream's first content chunk, after its opening events.
        self.first_content_delay = first_content_delay
        self.failures = dict(failures or {})
        self.stream_failures = dict(stream_failures or {})
        self.cache_read_tokens = cache_read_tokens
        self.cache_creation_tokens = cache_creation_tokens
        self.reasoning_tokens = reasoning_tokens
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8123``: the base URL of the
        Anthropic, google-genai and Cohere clients."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL an OpenAI client takes as its ``base_url``."""
        return f"{self.url}/v1"

    @property
    def mistral_url(self) -> str:
        """The root a Mistral client takes as its ``server_url``."""
        return f"{self.url}/mistral"

    @property
    def completions_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    # -- async lifecycle -----------------------------------------------------------------

    async def start(self) -> LocalLLMServer:
        """Start listening on the current event loop; returns self."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        app = web.Application()
        routes = (
            ("/v1/chat/completions", _OpenAIChat(self)),
            ("/v1/responses", _OpenAIResponses(self)),
            ("/v1/messages", _Anthropic(self)),
            ("/{version:v1|v1beta|v1alpha}/models/{model:[^/:]+}:{action}", _Gemini(self)),
            ("/mistral/v1/chat/completions", _Mistral(self)),
            ("/v2/chat", _Cohere(self)),
        )
        for path, dialect in routes:
            app.router.add_post(path, self._handler(dialect))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LocalLLMServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- in a background thread, for sync callers --------------------------------------------

    def __enter__(self) -> LocalLLMServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stopped.wait()
            finally:
                await self.stop()

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="instrument-llm-server", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None or loop is None or stopped is None:
            return
        loop.call_soon_threadsafe(stopped.set)
        thread.join()
        self._thread = self._loop = self._stopped = None

    # -- the endpoints -----------------------------------------------------------------------

    def _handler(self, dialect: _Dialect) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._answer(request, dialect)

        return handle

    def _counts(self, ask: _Ask, dialect: _Dialect) -> _Counts:
        cache_read = min(self.cache_read_tokens, ask.prompt_tokens) if dialect.cache_read else 0
        cache_creation = (
            min(self.cache_creation_tokens, ask.prompt_tokens - cache_read)
            if dialect.cache_creation
            else 0
        )
        reasoning = self.reasoning_tokens if dialect.reasoning else 0
        return _Counts(ask.prompt_tokens, cache_read, cache_creation, ask.reply_tokens, reasoning)

    async def _answer(self, request: web.Request, dialect: _Dialect) -> web.StreamResponse:
        def error(status: int, message: str, *, bad_request: bool = False) -> web.Response:
            body = dialect.error(status, message, bad_request=bad_request)
            headers = dialect.headers(exhausted=status == 429)
            if status == 429:
                headers["retry-after"] = "1"
            return web.json_response(body, status=status, headers=headers)

        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "The request body is not valid JSON.", bad_request=True)
        if not isinstance(body, dict):
            return error(400, "The request body must be a JSON object.", bad_request=True)
        self.requests.append(body)
        self.paths.append(request.path)
        try:
            ask = dialect.parse(request, body)
        except _BadRequest as exc:
            return error(400, str(exc), bad_request=True)
        if self.latency:
            await asyncio.sleep(self.latency)
        status = self.failures.get(ask.model)
        if status is not None:
            message = f"Simulated failure for model {ask.model}."
            if status == 401:
                # As providers do, quoting the key back; unmasked, to test that it goes nowhere.
                message = f"Incorrect API key provided: {_credential(request)}."
            return error(status, message)
        counts = self._counts(ask, dialect)
        number = next(self._ids)
        headers = dialect.headers(exhausted=False)
        if not ask.stream:
            return web.json_response(dialect.reply(ask, counts, number), headers=headers)
        headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        events = _Events(response, self, self.stream_failures.get(ask.model))
        try:
            await dialect.stream(events, ask, counts, number)
        except _StreamFailure as failure:
            message = f"Simulated failure in the stream of model {ask.model}."
            if not await dialect.stream_error(events, failure.status, message):
                if request.transport is not None:
                    request.transport.close()  # cut mid-body: the client sees a broken stream
                return response
        await response.write_eof()
        return response


def _credential(request: web.Request) -> str:
    """The API key a request carries, in whichever header its provider uses."""
    for header in ("x-api-key", "x-goog-api-key"):
        value = request.headers.get(header)
        if value:
            return value
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


# -- the client side -----------------------------------------------------------------------------


async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The chunks of a streamed chat completion, parsed, until ``data: [DONE]``."""
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if isinstance(chunk, dict):
            yield chunk


#: The demo's calls: each prompt with its reply length, asked of each of DEMO_MODELS, plain
#: and streamed; then one call to DEMO_FAILING_MODEL, which the server answers with 429.
DEMO_PROMPTS: tuple[tuple[str, int], ...] = (
    ("Summarise the cyclomatic complexity of this module", 12),
    ("Which functions should be refactored first", 9),
    ("Explain the longest function in two sentences", 16),
)
DEMO_MODELS = ("gpt-4o-mini", "gpt-4o")
DEMO_FAILING_MODEL = "gpt-4o-overloaded"


def run_demo_calls(inst: Instrumentation) -> None:
    """Make the demo's tracked LLM calls against a local server (blocking, well under a
    second), under provider "openai" with the model taken from each call's argument."""
    asyncio.run(_demo_calls(inst))


async def _demo_calls(inst: Instrumentation) -> None:
    track = inst.track_ai_call("openai", None)
    server = LocalLLMServer(chunk_delay=0.002, latency=0.01, failures={DEMO_FAILING_MODEL: 429})
    async with server, aiohttp.ClientSession() as session:

        def request(model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_completion_tokens": max_tokens,
            }
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            return body

        @track
        async def complete(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
            async with session.post(
                server.completions_url, json=request(model, prompt, max_tokens, False)
            ) as response:
                response.raise_for_status()
                answer: dict[str, Any] = await response.json()
                return answer

        @track
        async def stream(model: str, prompt: str, max_tokens: int) -> AsyncIterator[dict[str, Any]]:
            async with session.post(
                server.completions_url, json=request(model, prompt, max_tokens, True)
            ) as response:
                response.raise_for_status()
                async for chunk in iter_chunks(response):
                    yield chunk

        for model in DEMO_MODELS:
            for prompt, max_tokens in DEMO_PROMPTS:
                await complete(model, prompt, max_tokens)
                async for _ in stream(model, prompt, max_tokens):
                    pass
        with contextlib.suppress(aiohttp.ClientResponseError):
            prompt, max_tokens = DEMO_PROMPTS[0]
            await complete(DEMO_FAILING_MODEL, prompt, max_tokens)  # an error, http_status="429"
