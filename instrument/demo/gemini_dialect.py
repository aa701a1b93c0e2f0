"""Gemini's generateContent wire format."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .wire import (
    DEFAULT_COMPLETION_TOKENS,
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

__all__ = ["Gemini"]


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


class Gemini(Dialect):
    cache_creation = False
    reasoning = True

    def parse(self, request: web.Request, body: dict[str, Any]) -> Ask:
        model = request.match_info["model"]
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        prompt = messages_tokens(contents, "parts")
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, dict):
            prompt += count_tokens(content_text(system.get("parts")))
        config = body.get("generationConfig") or body.get("generation_config") or {}
        if not isinstance(config, dict):
            raise BadRequest("generationConfig must be an object.")
        limit = token_limit(config, "maxOutputTokens", "max_output_tokens")
        return Ask(
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

    async def stream_error(self, out: Events, status: int, message: str) -> bool:
        await out.send(self.error(status, message))
        return True

    def metadata(self, counts: Counts, reply_so_far: int) -> dict[str, Any]:
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
        self, ask: Ask, number: int, text: str, finished: bool, meta: dict[str, Any]
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

    def reply(self, ask: Ask, counts: Counts, number: int) -> dict[str, Any]:
        return self.answer(ask, number, ask.text, True, self.metadata(counts, counts.reply))

    async def stream(self, out: Events, ask: Ask, counts: Counts, number: int) -> None:
        # Every chunk carries text and running usage totals; the last one the final counts.
        words = ask.words
        for index, word in enumerate(words, 1):
            text = word if index == 1 else f" {word}"
            meta = self.metadata(counts, index)
            await out.content(self.answer(ask, number, text, index == len(words), meta))
