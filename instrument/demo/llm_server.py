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
:func:`run_demo_calls` is the demo's tour. Each provider's format is a ``Dialect``
(``wire.py``) in its own module: ``openai_dialect`` (Chat, Responses, Mistral),
``anthropic_dialect``, ``gemini_dialect``, ``cohere_dialect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from .anthropic_dialect import Anthropic
from .cohere_dialect import Cohere
from .gemini_dialect import Gemini
from .openai_dialect import Mistral, OpenAIChat, OpenAIResponses
from .wire import (
    DEFAULT_COMPLETION_TOKENS,
    Ask,
    BadRequest,
    Counts,
    Dialect,
    Events,
    StreamFailure,
    count_tokens,
)

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

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
            ("/v1/chat/completions", OpenAIChat()),
            ("/v1/responses", OpenAIResponses()),
            ("/v1/messages", Anthropic()),
            ("/{version:v1|v1beta|v1alpha}/models/{model:[^/:]+}:{action}", Gemini()),
            ("/mistral/v1/chat/completions", Mistral()),
            ("/v2/chat", Cohere()),
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

    def _handler(self, dialect: Dialect) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._answer(request, dialect)

        return handle

    def _counts(self, ask: Ask, dialect: Dialect) -> Counts:
        cache_read = min(self.cache_read_tokens, ask.prompt_tokens) if dialect.cache_read else 0
        cache_creation = (
            min(self.cache_creation_tokens, ask.prompt_tokens - cache_read)
            if dialect.cache_creation
            else 0
        )
        reasoning = self.reasoning_tokens if dialect.reasoning else 0
        return Counts(ask.prompt_tokens, cache_read, cache_creation, ask.reply_tokens, reasoning)

    async def _answer(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
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
        except BadRequest as exc:
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
        events = Events(response, self, self.stream_failures.get(ask.model))
        try:
            await dialect.stream(events, ask, counts, number)
        except StreamFailure as failure:
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
