"""OpenAI's Chat Completions and Responses wire formats, and Mistral's, which follows OpenAI's
Chat shape."""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from .wire import (
    DEFAULT_COMPLETION_TOKENS,
    Ask,
    BadRequest,
    Counts,
    Dialect,
    Events,
    count_tokens,
    messages_tokens,
    token_limit,
)

__all__ = ["Mistral", "OpenAIChat", "OpenAIResponses"]


class _OpenAIErrors(Dialect):
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


class OpenAIChat(_OpenAIErrors):
    reasoning = True

    async def stream_error(self, out: Events, status: int, message: str) -> bool:
        await out.send(self.error(status, message))
        return True

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a string.")
        prompt = messages_tokens(body.get("messages"))
        limit = token_limit(body, "max_completion_tokens", "max_tokens")
        options = body.get("stream_options")
        return Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    def usage(self, counts: Counts) -> dict[str, Any]:
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

    def finish_reason(self, ask: Ask) -> str:
        return "length" if ask.limited else "stop"

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
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
        ask: Ask,
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

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
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


class Mistral(OpenAIChat):
    """Mistral's chat completions: OpenAI's shape, without the cache and reasoning details,
    and a stream whose finishing chunk carries the usage, unasked."""

    cache_read = cache_creation = reasoning = False

    async def stream_error(self, out: Events, status: int, message: str) -> bool:
        return False  # no documented in-stream error: the connection drops

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        ask = super().parse(request, body)
        return Ask(ask.model, ask.prompt_tokens, ask.reply_tokens, ask.limited, ask.stream)

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

    def usage(self, counts: Counts) -> dict[str, Any]:
        return {
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.reply,
            "total_tokens": counts.prompt + counts.reply,
        }

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
        created = int(time.time())
        await out.send(self.chunk(ask, number, created, {"role": "assistant", "content": ""}))
        for index, word in enumerate(ask.words):
            delta = {"content": word if index == 0 else f" {word}"}
            await out.content(self.chunk(ask, number, created, delta))
        final = self.chunk(ask, number, created, {"content": ""}, self.finish_reason(ask))
        final["usage"] = self.usage(counts)
        await out.send(final)
        await out.send("[DONE]")


class OpenAIResponses(_OpenAIErrors):
    reasoning = True

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a string.")
        given = body.get("input")
        prompt = count_tokens(given) if isinstance(given, str) else messages_tokens(given)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            prompt += count_tokens(instructions)
        limit = token_limit(body, "max_output_tokens")
        return Ask(
            model,
            prompt,
            DEFAULT_COMPLETION_TOKENS if limit is None else limit,
            limited=limit is not None,
            stream=body.get("stream") is True,
        )

    def usage(self, counts: Counts) -> dict[str, Any]:
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
        self, ask: Ask, number: int, created: int, counts: Counts | None
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

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
        return self.response(ask, number, int(time.time()), counts)

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
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
