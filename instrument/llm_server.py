"""A small local server speaking the OpenAI chat completions wire format, for demos and tests.

``POST /v1/chat/completions`` answers like OpenAI: a JSON completion with ``usage``, or
with ``"stream": true`` server-sent events ``data: {chunk}`` ending with ``data: [DONE]``,
the usage on a last chunk with empty ``choices`` when ``stream_options.include_usage`` is
true. Token counts are deterministic: a token is a whitespace-separated word. The prompt's
tokens are the words of every message's content; the reply is ``max_completion_tokens``
(or ``max_tokens``, default 12) words, streamed one word per chunk.

>>> async with LocalLLMServer() as server:            # in async code
...     url = server.completions_url                   # http://127.0.0.1:<port>/v1/chat/completions
>>> with LocalLLMServer(chunk_delay=0.01) as server:  # in sync code: runs in a thread
...     ...

``failures={"model-name": 429}`` makes requests for that model fail with that status and an
OpenAI-style error body, to show error accounting. :func:`iter_chunks` reads a streamed
answer's chunks from an aiohttp response; :func:`run_demo_calls` is the demo's tour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

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

#: Reply length in words when the request sets neither max_completion_tokens nor max_tokens.
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
    """A message's text: a string, or the text parts of a list of content parts."""
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


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


class LocalLLMServer:
    """An OpenAI-compatible chat completions endpoint on ``127.0.0.1`` (a free port by
    default). Use ``async with`` in async code, or plain ``with`` to run it in a
    background thread. ``requests`` keeps every request body received, in order."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_delay: float = 0.0,
        latency: float = 0.0,
        failures: Mapping[str, int] | None = None,
    ) -> None:
        if chunk_delay < 0 or latency < 0:
            raise ValueError("chunk_delay and latency must be non-negative numbers of seconds")
        for model, status in (failures or {}).items():
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError(
                    f"failures[{model!r}] must be an HTTP error status, got {status!r}"
                )
        self.host = host
        self.port = port
        #: Seconds between streamed chunks, and before the first answer byte.
        self.chunk_delay = chunk_delay
        self.latency = latency
        self.failures = dict(failures or {})
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The ``/v1`` URL an OpenAI client takes as its ``base_url``."""
        return f"{self.url}/v1"

    @property
    def completions_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    # -- async lifecycle -----------------------------------------------------------------

    async def start(self) -> LocalLLMServer:
        """Start listening on the current event loop; returns self."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
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

    # -- the endpoint ------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        self.requests.append(body)
        try:
            model, prompt_tokens, completion_tokens, finish_reason = self._parse(body)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error")
        if self.latency:
            await asyncio.sleep(self.latency)
        status = self.failures.get(model)
        if status is not None:
            kind = "rate_limit_error" if status == 429 else "api_error"
            return _error(status, f"Simulated failure for model {model}.", kind, str(status))
        completion_id = f"chatcmpl-local{next(self._ids)}"
        created = int(time.time())
        words = _reply_words(completion_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(
                request,
                completion_id,
                created,
                model,
                words,
                finish_reason,
                usage if include_usage else None,
            )
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
        )

    @staticmethod
    def _parse(body: dict[str, Any]) -> tuple[str, int, int, str]:
        """The model, prompt tokens, completion tokens and finish reason of a request."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("'model' is required and must be a string.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty array.")
        prompt_tokens = 0
        for message in messages:
            if not isinstance(message, dict):
                raise _BadRequest("Each message must be an object.")
            prompt_tokens += count_tokens(_content_text(message.get("content")))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is None:
            return model, prompt_tokens, DEFAULT_COMPLETION_TOKENS, "stop"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _BadRequest("'max_completion_tokens' must be a positive integer.")
        return model, prompt_tokens, limit, "length"

    async def _stream(
        self,
        request: web.Request,
        completion_id: str,
        created: int,
        model: str,
        words: list[str],
        finish_reason: str,
        usage: dict[str, Any] | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if usage is not None:
                payload["usage"] = None  # as OpenAI sends it on every chunk but the last
            return payload

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        await send(chunk({"role": "assistant", "content": ""}, None))
        for index, word in enumerate(words):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send(chunk({"content": word if index == 0 else f" {word}"}, None))
        await send(chunk({}, finish_reason))
        if usage is not None:
            final = chunk({}, None)
            final["choices"] = []
            final["usage"] = usage
            await send(final)
        await send("[DONE]")
        await response.write_eof()
        return response


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
