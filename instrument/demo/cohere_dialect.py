"""Cohere's v2 chat wire format."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from .wire import (
    DEFAULT_COMPLETION_TOKENS,
    Ask,
    BadRequest,
    Counts,
    Dialect,
    Events,
    messages_tokens,
    token_limit,
)

__all__ = ["Cohere"]


class Cohere(Dialect):
    """Cohere's v2 chat. Its usage has ``billed_units`` and ``tokens``; ``tokens`` also
    counts the prompt template Cohere wraps around the messages (``TEMPLATE_TOKENS``)."""

    cache_creation = False
    TEMPLATE_TOKENS: ClassVar[int] = 7

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required")
        prompt = messages_tokens(body.get("messages"))
        limit = token_limit(body, "max_tokens")
        return Ask(
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

    def usage(self, counts: Counts) -> dict[str, Any]:
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

    def finish_reason(self, ask: Ask) -> str:
        return "MAX_TOKENS" if ask.limited else "COMPLETE"

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
        return {
            "id": f"local{number}",
            "finish_reason": self.finish_reason(ask),
            "message": {"role": "assistant", "content": [{"type": "text", "text": ask.text}]},
            "usage": self.usage(counts),
        }

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
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
