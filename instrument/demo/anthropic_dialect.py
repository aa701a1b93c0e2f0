"""Anthropic's Messages wire format."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .wire import (
    Ask,
    BadRequest,
    Counts,
    Dialect,
    Events,
    content_text,
    count_tokens,
    messages_tokens,
    token_limit,
)

__all__ = ["Anthropic"]


class Anthropic(Dialect):
    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        prompt = messages_tokens(body.get("messages"))
        prompt += count_tokens(content_text(body.get("system")))
        limit = token_limit(body, "max_tokens")
        if limit is None:
            raise BadRequest("max_tokens: Field required")
        return Ask(model, prompt, limit, limited=True, stream=body.get("stream") is True)

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

    async def stream_error(self, out: Events, status: int, message: str) -> bool:
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
    def usage(counts: Counts, output_tokens: int) -> dict[str, Any]:
        # Anthropic's input_tokens leaves out the cached part, which has its own fields.
        return {
            "input_tokens": counts.prompt - counts.cache_read - counts.cache_creation,
            "cache_creation_input_tokens": counts.cache_creation,
            "cache_read_input_tokens": counts.cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self, ask: Ask, number: int, content: list[Any], usage: Any) -> dict[str, Any]:
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

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
        content = [{"type": "text", "text": ask.text}]
        return self.message(ask, number, content, self.usage(counts, counts.reply))

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
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
