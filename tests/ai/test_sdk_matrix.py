"""The real provider SDKs against the local wire-format server: every supported path counted
exactly (issue 11's matrix).

Each case makes its call the way a user would, through ``@inst.track_ai_call(...)`` on a
function that calls the SDK, or a with-block and ``call.record_response``, and then checks
what a user would read back from the registry: the exact input, output and detail tokens,
time to first token (at least the server's staged delay before the first content chunk),
the call's status and duration, errors by class and HTTP status, and usage_missing.

The server (:class:`instrument.demo.llm_server.LocalLLMServer`) answers on 127.0.0.1 only, and
the module turns any other network use into a test failure. An SDK that is not installed
skips its cases (install the ``sdk`` extra: ``pip install -e '.[sdk]'``; scripts/test.sh
does), except under CI, where it fails them.

``python -m tests.ai.test_sdk_matrix`` prints the README's table of supported paths, made from
:data:`CASES`; :func:`test_the_readme_lists_the_matrix` keeps the README in step with it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.ai import AICallTracker
from instrument.demo.llm_server import DEFAULT_COMPLETION_TOKENS, LocalLLMServer, count_tokens

from ..support import NETWORK_GUARD, ROOT, NetworkGuard, counted, require_sdk

pytestmark = pytest.mark.sdk

# -- what the server is set to send, and what each provider's usage then says -----------------

#: Seconds the server waits before a stream's first content chunk (after its opening events).
FIRST_CONTENT_DELAY = 0.2
CACHE_READ = 3
CACHE_CREATION = 2
REASONING = 4
RATE_LIMITED = "rate-limited-model"  # the server answers 429 for this model
BROKEN = "broken-model"  # and 500 for this one
UNAUTHORIZED = "unauthorized-model"  # and 401, quoting the API key back
OVERLOADED_MIDWAY = "overloaded-midway-model"  # its streams fail after the first content
UNAVAILABLE_MIDWAY = "unavailable-midway-model"  # likewise, as a 503

SYSTEM = "You are terse."
PROMPT = "Summarise the complexity report of module indexer in one line"
PROMPT_TOKENS = count_tokens(SYSTEM) + count_tokens(PROMPT)
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
#: Reply length asked of the APIs that require a limit (Anthropic) or where one is tested.
LIMIT = 7
#: Cohere's ``usage.tokens.input_tokens`` adds its prompt template: the server's count.
COHERE_TEMPLATE_TOKENS = 7

#: The API keys handed to the SDKs: none may show up in the instrument's logs.
KEYS = {
    "openai": "sk-matrix-openai-0123456789abcdef",
    "anthropic": "sk-ant-matrix-0123456789abcdef",
    "gemini": "AIza-matrix-0123456789abcdef",
    "mistral": "mistral-matrix-0123456789abcdef",
    "cohere": "cohere-matrix-0123456789abcdef",
}


@dataclass(frozen=True)
class Expect:
    """What one case must leave in the registry. Token counts are totals over its calls."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0
    calls: int = 1
    status: str = "success"
    streamed: bool = False
    usage_missing: int = 0
    #: (exception class name, http_status label) of a failed call.
    error: tuple[str, str] | None = None
    #: HTTP requests the case makes: one per call, so an SDK retry would show.
    requests: int = 1

    DETAILS: ClassVar[tuple[str, ...]] = ("cache_read", "cache_creation", "reasoning")

    @property
    def details(self) -> tuple[str, ...]:
        """The token details this expectation says are sent (non-zero)."""
        return tuple(name for name in self.DETAILS if getattr(self, name))


def usage_of(dialect: str, *, reply: int = DEFAULT_COMPLETION_TOKENS, calls: int = 1) -> Expect:
    """The usage the server reports in ``dialect`` for the module's prompt, in the
    instrument's terms: input includes the cache, output includes reasoning."""
    n = calls
    if dialect == "openai":  # Chat Completions and Responses alike
        return Expect(
            n * PROMPT_TOKENS,
            n * (reply + REASONING),
            n * CACHE_READ,
            n * CACHE_CREATION,
            n * REASONING,
            calls=n,
            requests=n,
        )
    if dialect == "anthropic":
        return Expect(
            n * PROMPT_TOKENS, n * reply, n * CACHE_READ, n * CACHE_CREATION, calls=n, requests=n
        )
    if dialect == "gemini":
        return Expect(
            n * PROMPT_TOKENS,
            n * (reply + REASONING),
            cache_read=n * CACHE_READ,
            reasoning=n * REASONING,
            calls=n,
            requests=n,
        )
    if dialect == "mistral":
        return Expect(n * PROMPT_TOKENS, n * reply, calls=n, requests=n)
    if dialect == "cohere":
        # The billed counts: usage.tokens also counts Cohere's prompt template, which is
        # not billed and not the caller's prompt.
        return Expect(n * PROMPT_TOKENS, n * reply, cache_read=n * CACHE_READ, calls=n, requests=n)
    raise AssertionError(f"no usage rule for {dialect}")


def streamed(expect: Expect) -> Expect:
    return replace(expect, streamed=True)


def failed(error: str, status: str) -> Expect:
    return Expect(status="error", error=(error, status))


# -- the cases ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case gets: the server, the instrumentation, and the SDK module."""

    server: LocalLLMServer
    inst: Instrumentation
    sdk: ModuleType
    #: Clients kept for the case's length: google-genai's closes its connections when its
    #: Client is collected, as a temporary would be.
    clients: list[Any] = field(default_factory=list)

    def track(self, provider: str, model: str) -> AICallTracker:
        return self.inst.track_ai_call(provider, model)


@dataclass(frozen=True)
class Case:
    sdk: str
    #: The call as the case makes it; ``path`` the README row it belongs to (its sync and
    #: async variants and its failures share one).
    call: str
    path: str
    provider: str
    model: str
    expect: Expect
    run: Callable[[Ctx], Any] = field(compare=False)

    @property
    def asynchronous(self) -> bool:
        return inspect.iscoroutinefunction(self.run)

    @property
    def id(self) -> str:
        return f"{self.sdk}: {self.call}"


CASES: list[Case] = []


def case(
    sdk: str,
    call: str,
    expect: Expect,
    *,
    model: str,
    provider: str | None = None,
    path: str | None = None,
) -> Callable[[Callable[[Ctx], Any]], Callable[[Ctx], Any]]:
    """Register the decorated function as a case of the matrix."""

    def register(run: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        CASES.append(Case(sdk, call, path or call, provider or sdk, model, expect, run))
        return run

    return register


def drain(stream: Any) -> int:
    """Read a sync stream to its end, as a caller printing it would; the chunk count."""
    return sum(1 for _ in stream)


async def adrain(stream: Any) -> int:
    return len([chunk async for chunk in stream])


# OpenAI -------------------------------------------------------------------------------------

GPT = "gpt-4o"
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}


def openai_client(ctx: Ctx, *, asynchronous: bool = False) -> Any:
    cls = ctx.sdk.AsyncOpenAI if asynchronous else ctx.sdk.OpenAI
    return cls(api_key=KEYS["openai"], base_url=ctx.server.base_url, max_retries=0)


@case("openai", "chat.completions.create", usage_of("openai"), model=GPT)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=GPT, messages=MESSAGES)

    assert ask().usage.prompt_tokens == PROMPT_TOKENS


@case(
    "openai",
    "AsyncOpenAI chat.completions.create",
    usage_of("openai"),
    model=GPT,
    path="chat.completions.create",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.chat.completions.create(model=GPT, messages=MESSAGES)

    assert (await ask()).usage.prompt_tokens == PROMPT_TOKENS


@case(
    "openai",
    "chat.completions.create(stream=True, include_usage)",
    streamed(usage_of("openai")),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS + 3  # role, words, finish, usage


@case(
    "openai",
    "AsyncOpenAI chat.completions.create(stream=True, include_usage)",
    streamed(usage_of("openai")),
    model=GPT,
    path="chat.completions.create(stream=True, include_usage)",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    assert await adrain(await ask()) == DEFAULT_COMPLETION_TOKENS + 3


@case(
    "openai",
    "chat.completions.create(stream=True) without include_usage",
    Expect(streamed=True, usage_missing=1),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=GPT, messages=MESSAGES, stream=True)

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS + 2  # no usage chunk: counted as missing


@case(
    "openai",
    "chat.completions.stream() in a with-block",
    streamed(usage_of("openai")),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)
    with (
        ctx.track("openai", GPT) as call,
        client.chat.completions.stream(model=GPT, messages=MESSAGES, **INCLUDE_USAGE) as stream,
    ):
        events = drain(call.record_response(stream))
        assert stream.get_final_completion().usage.prompt_tokens == PROMPT_TOKENS
    assert events > DEFAULT_COMPLETION_TOKENS


@case(
    "openai",
    "AsyncOpenAI chat.completions.stream() in a with-block",
    streamed(usage_of("openai")),
    model=GPT,
    path="chat.completions.stream() in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)
    async with (
        ctx.track("openai", GPT) as call,
        client.chat.completions.stream(model=GPT, messages=MESSAGES, **INCLUDE_USAGE) as stream,
    ):
        assert await adrain(call.record_response(stream)) > DEFAULT_COMPLETION_TOKENS


@case(
    "openai",
    "chat.completions.stream() returned, entered by the caller",
    streamed(usage_of("openai")),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def open_stream() -> Any:
        return client.chat.completions.stream(model=GPT, messages=MESSAGES, **INCLUDE_USAGE)

    with open_stream() as stream:
        text = "".join(
            event.delta for event in stream if event.type == "content.delta"
        )  # the caller's own reading
    assert count_tokens(text) == DEFAULT_COMPLETION_TOKENS


@case(
    "openai",
    "chat.completions.with_raw_response.create",
    usage_of("openai"),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.with_raw_response.create(model=GPT, messages=MESSAGES)

    raw = ask()
    assert raw.headers["x-request-id"] == "req_local"  # the raw response, headers and all
    assert raw.parse().usage.prompt_tokens == PROMPT_TOKENS


@case(
    "openai",
    "AsyncOpenAI chat.completions.with_raw_response.create",
    usage_of("openai"),
    model=GPT,
    path="chat.completions.with_raw_response.create",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.chat.completions.with_raw_response.create(model=GPT, messages=MESSAGES)

    raw = await ask()
    assert raw.parse().usage.prompt_tokens == PROMPT_TOKENS


@case("openai", "responses.create", usage_of("openai"), model=GPT)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.responses.create(model=GPT, instructions=SYSTEM, input=PROMPT)

    assert count_tokens(ask().output_text) == DEFAULT_COMPLETION_TOKENS


@case(
    "openai", "AsyncOpenAI responses.create", usage_of("openai"), model=GPT, path="responses.create"
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.responses.create(model=GPT, instructions=SYSTEM, input=PROMPT)

    assert (await ask()).usage.input_tokens == PROMPT_TOKENS


@case("openai", "responses.create(stream=True)", streamed(usage_of("openai")), model=GPT)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.responses.create(model=GPT, instructions=SYSTEM, input=PROMPT, stream=True)

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS + 8  # 4 opening, 4 closing events


@case(
    "openai",
    "AsyncOpenAI responses.create(stream=True)",
    streamed(usage_of("openai")),
    model=GPT,
    path="responses.create(stream=True)",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.responses.create(
            model=GPT, instructions=SYSTEM, input=PROMPT, stream=True
        )

    assert await adrain(await ask()) == DEFAULT_COMPLETION_TOKENS + 8


@case(
    "openai",
    "responses.create(stream=True) cut by max_output_tokens (response.incomplete)",
    streamed(usage_of("openai", reply=LIMIT)),
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.responses.create(
            model=GPT, instructions=SYSTEM, input=PROMPT, stream=True, max_output_tokens=LIMIT
        )

    events = list(ask())
    assert events[-1].type == "response.incomplete"


@case("openai", "responses.stream() in a with-block", streamed(usage_of("openai")), model=GPT)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)
    with (
        ctx.track("openai", GPT) as call,
        client.responses.stream(model=GPT, instructions=SYSTEM, input=PROMPT) as stream,
    ):
        drain(call.record_response(stream))
        assert stream.get_final_response().usage.input_tokens == PROMPT_TOKENS


@case(
    "openai",
    "AsyncOpenAI responses.stream() in a with-block",
    streamed(usage_of("openai")),
    model=GPT,
    path="responses.stream() in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)
    async with (
        ctx.track("openai", GPT) as call,
        client.responses.stream(model=GPT, instructions=SYSTEM, input=PROMPT) as stream,
    ):
        await adrain(call.record_response(stream))


@case(
    "openai",
    "chat.completions.create -> 429",
    failed("RateLimitError", "429"),
    model=GPT,
    path="chat.completions.create",
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=RATE_LIMITED, messages=MESSAGES)

    with pytest.raises(ctx.sdk.RateLimitError) as raised:
        ask()
    assert raised.value.response.headers["retry-after"] == "1"
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"


@case(
    "openai",
    "chat.completions.create -> 500",
    failed("InternalServerError", "500"),
    model=GPT,
    path="chat.completions.create",
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(model=BROKEN, messages=MESSAGES)

    with pytest.raises(ctx.sdk.InternalServerError):
        ask()


@case(
    "openai",
    "AsyncOpenAI responses.create(stream=True) -> 429",
    failed("RateLimitError", "429"),
    model=GPT,
    path="responses.create(stream=True)",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.responses.create(model=RATE_LIMITED, input=PROMPT, stream=True)

    with pytest.raises(ctx.sdk.RateLimitError):
        await ask()


# Read through the stream helpers' own methods (rev-ai 3): the chunks never pass the proxy,
# so the call's end reads the helper's accumulated response (no first token to time).


@case(
    "openai",
    "chat.completions.stream() read by get_final_completion()",
    usage_of("openai"),
    model=GPT,
    path="chat.completions.stream() in a with-block",
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)
    with (
        ctx.track("openai", GPT) as call,
        client.chat.completions.stream(model=GPT, messages=MESSAGES, **INCLUDE_USAGE) as stream,
    ):
        final = call.record_response(stream).get_final_completion()
    assert final.usage.prompt_tokens == PROMPT_TOKENS


@case(
    "openai",
    "AsyncOpenAI chat.completions.stream() read by get_final_completion()",
    usage_of("openai"),
    model=GPT,
    path="chat.completions.stream() in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)
    async with (
        ctx.track("openai", GPT) as call,
        client.chat.completions.stream(model=GPT, messages=MESSAGES, **INCLUDE_USAGE) as stream,
    ):
        await call.record_response(stream).get_final_completion()


@case(
    "openai",
    "responses.stream() read by get_final_response()",
    usage_of("openai"),
    model=GPT,
    path="responses.stream() in a with-block",
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)
    with (
        ctx.track("openai", GPT) as call,
        client.responses.stream(model=GPT, instructions=SYSTEM, input=PROMPT) as stream,
    ):
        assert call.record_response(stream).get_final_response().status == "completed"


@case(
    "openai",
    "responses.stream() returned, read by get_final_response()",
    usage_of("openai"),
    model=GPT,
    path="responses.stream() in a with-block",
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def open_stream() -> Any:
        return client.responses.stream(model=GPT, instructions=SYSTEM, input=PROMPT)

    with open_stream() as stream:
        stream.get_final_response()


@case(
    "openai",
    "AsyncOpenAI responses.stream() returned, read by until_done()",
    usage_of("openai"),
    model=GPT,
    path="responses.stream() in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    def open_stream() -> Any:
        return client.responses.stream(model=GPT, instructions=SYSTEM, input=PROMPT)

    async with open_stream() as stream:
        await stream.until_done()


# Anthropic ----------------------------------------------------------------------------------

CLAUDE = "claude-sonnet-4-5"


def anthropic_client(ctx: Ctx, *, asynchronous: bool = False) -> Any:
    cls = ctx.sdk.AsyncAnthropic if asynchronous else ctx.sdk.Anthropic
    return cls(api_key=KEYS["anthropic"], base_url=ctx.server.url, max_retries=0)


CLAUDE_ARGS: dict[str, Any] = {
    "model": CLAUDE,
    "max_tokens": LIMIT,
    "system": SYSTEM,
    "messages": [{"role": "user", "content": PROMPT}],
}


@case("anthropic", "messages.create", usage_of("anthropic", reply=LIMIT), model=CLAUDE)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.create(**CLAUDE_ARGS)

    assert ask().usage.cache_read_input_tokens == CACHE_READ


@case(
    "anthropic",
    "AsyncAnthropic messages.create",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="messages.create",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.create(**CLAUDE_ARGS)

    assert count_tokens((await ask()).content[0].text) == LIMIT


@case(
    "anthropic",
    "messages.create(stream=True)",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.create(**CLAUDE_ARGS, stream=True)

    assert drain(ask()) == LIMIT + 5  # message_start, block start/stop, delta, stop (no ping)


@case(
    "anthropic",
    "AsyncAnthropic messages.create(stream=True)",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
    path="messages.create(stream=True)",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.create(**CLAUDE_ARGS, stream=True)

    assert await adrain(await ask()) == LIMIT + 5


@case(
    "anthropic",
    "messages.stream() events in a with-block",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)
    with ctx.track("anthropic", CLAUDE) as call, client.messages.stream(**CLAUDE_ARGS) as stream:
        drain(call.record_response(stream))


@case(
    "anthropic",
    "messages.stream().text_stream in a with-block",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)
    with ctx.track("anthropic", CLAUDE) as call, client.messages.stream(**CLAUDE_ARGS) as stream:
        stream = call.record_response(stream)
        text = "".join(stream.text_stream)
    assert count_tokens(text) == LIMIT


@case(
    "anthropic",
    "AsyncAnthropic messages.stream().text_stream in a with-block",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
    path="messages.stream().text_stream in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)
    async with (
        ctx.track("anthropic", CLAUDE) as call,
        client.messages.stream(**CLAUDE_ARGS) as stream,
    ):
        stream = call.record_response(stream)
        text = "".join([piece async for piece in stream.text_stream])
    assert count_tokens(text) == LIMIT


@case(
    "anthropic",
    "messages.stream() returned, entered by the caller",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def open_stream() -> Any:
        return client.messages.stream(**CLAUDE_ARGS)

    with open_stream() as stream:
        text = "".join(stream.text_stream)
    assert count_tokens(text) == LIMIT


@case(
    "anthropic",
    "messages.with_raw_response.create",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.with_raw_response.create(**CLAUDE_ARGS)

    assert ask().parse().usage.output_tokens == LIMIT


@case(
    "anthropic",
    "AsyncAnthropic messages.with_raw_response.create",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="messages.with_raw_response.create",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS)

    raw = await ask()
    assert (await raw.parse()).usage.output_tokens == LIMIT  # the async raw parse() awaits


@case(
    "anthropic",
    "messages.stream() read by get_final_message()",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="messages.stream() events in a with-block",
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)
    with ctx.track("anthropic", CLAUDE) as call, client.messages.stream(**CLAUDE_ARGS) as stream:
        assert call.record_response(stream).get_final_message().usage.output_tokens == LIMIT


@case(
    "anthropic",
    "messages.stream() read by get_final_text()",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="messages.stream() events in a with-block",
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)
    with ctx.track("anthropic", CLAUDE) as call, client.messages.stream(**CLAUDE_ARGS) as stream:
        assert count_tokens(call.record_response(stream).get_final_text()) == LIMIT


@case(
    "anthropic",
    "AsyncAnthropic messages.stream() read by until_done()",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="messages.stream() events in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)
    async with (
        ctx.track("anthropic", CLAUDE) as call,
        client.messages.stream(**CLAUDE_ARGS) as stream,
    ):
        await call.record_response(stream).until_done()


@case(
    "anthropic",
    "messages.stream().text_stream of a proxy not kept (rev-ai 4)",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
    path="messages.stream().text_stream in a with-block",
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)
    with ctx.track("anthropic", CLAUDE) as call, client.messages.stream(**CLAUDE_ARGS) as stream:
        text = "".join(call.record_response(stream).text_stream)
    assert count_tokens(text) == LIMIT


@case(
    "anthropic",
    "messages.create -> 429",
    failed("RateLimitError", "429"),
    model=CLAUDE,
    path="messages.create",
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.create(**{**CLAUDE_ARGS, "model": RATE_LIMITED})

    with pytest.raises(ctx.sdk.RateLimitError) as raised:
        ask()
    assert raised.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


@case(
    "anthropic",
    "AsyncAnthropic messages.stream() -> 500",
    failed("InternalServerError", "500"),
    model=CLAUDE,
    path="messages.stream() events in a with-block",
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)
    with pytest.raises(ctx.sdk.InternalServerError):
        async with (
            ctx.track("anthropic", CLAUDE) as call,
            client.messages.stream(**{**CLAUDE_ARGS, "model": BROKEN}) as stream,
        ):
            await adrain(call.record_response(stream))


# google-genai -------------------------------------------------------------------------------

GEMINI = "gemini-2.5-flash"


def genai_client(ctx: Ctx) -> Any:
    types = importlib.import_module("google.genai.types")
    options = types.HttpOptions(
        base_url=ctx.server.url, retry_options=types.HttpRetryOptions(attempts=1)
    )
    client = ctx.sdk.Client(api_key=KEYS["gemini"], http_options=options)
    ctx.clients.append(client)
    return client


def genai_config() -> Any:
    types = importlib.import_module("google.genai.types")
    return types.GenerateContentConfig(system_instruction=SYSTEM)


@case(
    "google-genai", "models.generate_content", usage_of("gemini"), provider="gemini", model=GEMINI
)
def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    def ask() -> Any:
        return client.models.generate_content(model=GEMINI, contents=PROMPT, config=genai_config())

    assert count_tokens(ask().text) == DEFAULT_COMPLETION_TOKENS


@case(
    "google-genai",
    "aio.models.generate_content",
    usage_of("gemini"),
    provider="gemini",
    model=GEMINI,
    path="models.generate_content",
)
async def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    async def ask() -> Any:
        return await client.aio.models.generate_content(
            model=GEMINI, contents=PROMPT, config=genai_config()
        )

    assert (await ask()).usage_metadata.prompt_token_count == PROMPT_TOKENS


@case(
    "google-genai",
    "models.generate_content_stream",
    streamed(usage_of("gemini")),
    provider="gemini",
    model=GEMINI,
)
def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    def ask() -> Any:
        return client.models.generate_content_stream(
            model=GEMINI, contents=PROMPT, config=genai_config()
        )

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS


@case(
    "google-genai",
    "aio.models.generate_content_stream",
    streamed(usage_of("gemini")),
    provider="gemini",
    model=GEMINI,
    path="models.generate_content_stream",
)
async def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    async def ask() -> Any:
        return await client.aio.models.generate_content_stream(
            model=GEMINI, contents=PROMPT, config=genai_config()
        )

    assert await adrain(await ask()) == DEFAULT_COMPLETION_TOKENS


@case(
    "google-genai",
    "models.generate_content -> 429",
    failed("ClientError", "429"),
    provider="gemini",
    model=GEMINI,
    path="models.generate_content",
)
def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    def ask() -> Any:
        return client.models.generate_content(model=RATE_LIMITED, contents=PROMPT)

    errors = importlib.import_module("google.genai.errors")
    with pytest.raises(errors.ClientError) as raised:
        ask()
    assert raised.value.status == "RESOURCE_EXHAUSTED"


@case(
    "google-genai",
    "aio.models.generate_content_stream -> 500",
    failed("ServerError", "500"),
    provider="gemini",
    model=GEMINI,
    path="models.generate_content_stream",
)
async def _(ctx: Ctx) -> None:
    client = genai_client(ctx)

    @ctx.track("gemini", GEMINI)
    async def ask() -> Any:
        return await client.aio.models.generate_content_stream(model=BROKEN, contents=PROMPT)

    errors = importlib.import_module("google.genai.errors")
    with pytest.raises(errors.ServerError):
        await adrain(await ask())


# mistralai ----------------------------------------------------------------------------------

MISTRAL = "mistral-small-latest"


def mistral_client(ctx: Ctx) -> Any:
    # Retries are off unless a retry_config is given; the SDK's default.
    return ctx.sdk.Mistral(api_key=KEYS["mistral"], server_url=ctx.server.mistral_url)


@case("mistralai", "chat.complete", usage_of("mistral"), provider="mistral", model=MISTRAL)
def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    def ask() -> Any:
        return client.chat.complete(model=MISTRAL, messages=MESSAGES)

    assert ask().usage.prompt_tokens == PROMPT_TOKENS


@case(
    "mistralai",
    "chat.complete_async",
    usage_of("mistral"),
    provider="mistral",
    model=MISTRAL,
    path="chat.complete",
)
async def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    async def ask() -> Any:
        return await client.chat.complete_async(model=MISTRAL, messages=MESSAGES)

    assert (await ask()).usage.completion_tokens == DEFAULT_COMPLETION_TOKENS


@case("mistralai", "chat.stream", streamed(usage_of("mistral")), provider="mistral", model=MISTRAL)
def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    def ask() -> Any:
        return client.chat.stream(model=MISTRAL, messages=MESSAGES)

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS + 2  # role, words, finish with usage


@case(
    "mistralai",
    "chat.stream_async",
    streamed(usage_of("mistral")),
    provider="mistral",
    model=MISTRAL,
    path="chat.stream",
)
async def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    async def ask() -> Any:
        return await client.chat.stream_async(model=MISTRAL, messages=MESSAGES)

    assert await adrain(await ask()) == DEFAULT_COMPLETION_TOKENS + 2


@case(
    "mistralai",
    "chat.complete -> 429",
    failed("SDKError", "429"),
    provider="mistral",
    model=MISTRAL,
    path="chat.complete",
)
def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    def ask() -> Any:
        return client.chat.complete(model=RATE_LIMITED, messages=MESSAGES, retries=None)

    errors = importlib.import_module("mistralai.client.errors")
    with pytest.raises(errors.SDKError) as raised:
        ask()
    assert raised.value.status_code == 429


@case(
    "mistralai",
    "chat.stream_async -> 500",
    failed("SDKError", "500"),
    provider="mistral",
    model=MISTRAL,
    path="chat.stream",
)
async def _(ctx: Ctx) -> None:
    client = mistral_client(ctx)

    @ctx.track("mistral", MISTRAL)
    async def ask() -> Any:
        return await client.chat.stream_async(model=BROKEN, messages=MESSAGES, retries=None)

    errors = importlib.import_module("mistralai.client.errors")
    with pytest.raises(errors.SDKError):
        await ask()


# cohere -------------------------------------------------------------------------------------

COMMAND = "command-a-03-2025"
NO_RETRIES = {"max_retries": 0}


def cohere_client(ctx: Ctx, *, asynchronous: bool = False) -> Any:
    cls = ctx.sdk.AsyncClientV2 if asynchronous else ctx.sdk.ClientV2
    return cls(api_key=KEYS["cohere"], base_url=ctx.server.url)


@case("cohere", "ClientV2.chat", usage_of("cohere"), model=COMMAND)
def _(ctx: Ctx) -> None:
    client = cohere_client(ctx)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.chat(model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES)

    usage = ask().usage
    assert usage.tokens.input_tokens == PROMPT_TOKENS + COHERE_TEMPLATE_TOKENS
    assert usage.billed_units.input_tokens == PROMPT_TOKENS


@case("cohere", "AsyncClientV2.chat", usage_of("cohere"), model=COMMAND, path="ClientV2.chat")
async def _(ctx: Ctx) -> None:
    client = cohere_client(ctx, asynchronous=True)

    @ctx.track("cohere", COMMAND)
    async def ask() -> Any:
        return await client.chat(model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES)

    assert (await ask()).finish_reason == "COMPLETE"


@case("cohere", "ClientV2.chat_stream", streamed(usage_of("cohere")), model=COMMAND)
def _(ctx: Ctx) -> None:
    client = cohere_client(ctx)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.chat_stream(model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES)

    assert drain(ask()) == DEFAULT_COMPLETION_TOKENS + 4  # message/content start and end


@case(
    "cohere",
    "AsyncClientV2.chat_stream",
    streamed(usage_of("cohere")),
    model=COMMAND,
    path="ClientV2.chat_stream",
)
async def _(ctx: Ctx) -> None:
    client = cohere_client(ctx, asynchronous=True)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:  # chat_stream is an async generator: called, not awaited
        return client.chat_stream(model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES)

    assert await adrain(ask()) == DEFAULT_COMPLETION_TOKENS + 4


@case(
    "cohere",
    "ClientV2.chat -> 429",
    failed("TooManyRequestsError", "429"),
    model=COMMAND,
    path="ClientV2.chat",
)
def _(ctx: Ctx) -> None:
    client = cohere_client(ctx)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.chat(model=RATE_LIMITED, messages=MESSAGES, request_options=NO_RETRIES)

    with pytest.raises(ctx.sdk.TooManyRequestsError):
        ask()


@case(
    "cohere",
    "AsyncClientV2.chat_stream -> 500",
    failed("InternalServerError", "500"),
    model=COMMAND,
    path="ClientV2.chat_stream",
)
async def _(ctx: Ctx) -> None:
    client = cohere_client(ctx, asynchronous=True)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.chat_stream(model=BROKEN, messages=MESSAGES, request_options=NO_RETRIES)

    with pytest.raises(ctx.sdk.InternalServerError):
        await adrain(ask())


# litellm ------------------------------------------------------------------------------------


def litellm_args(ctx: Ctx, model: str = GPT, **extra: Any) -> dict[str, Any]:
    return {
        "model": f"openai/{model}",
        "api_base": ctx.server.base_url,
        "api_key": KEYS["openai"],
        "messages": MESSAGES,
        "max_retries": 0,
        "num_retries": 0,
        **extra,
    }


def litellm_anthropic_args(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    return {
        "model": f"anthropic/{CLAUDE}",
        "api_base": ctx.server.url,
        "api_key": KEYS["anthropic"],
        "messages": MESSAGES,
        "max_tokens": LIMIT,
        "max_retries": 0,
        "num_retries": 0,
        **extra,
    }


@case("litellm", "completion (openai/)", usage_of("openai"), model=GPT)
def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    def ask() -> Any:
        return ctx.sdk.completion(**litellm_args(ctx))

    assert ask().usage.prompt_tokens == PROMPT_TOKENS


@case(
    "litellm", "acompletion (openai/)", usage_of("openai"), model=GPT, path="completion (openai/)"
)
async def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    async def ask() -> Any:
        return await ctx.sdk.acompletion(**litellm_args(ctx))

    assert (await ask()).usage.completion_tokens == DEFAULT_COMPLETION_TOKENS + REASONING


@case(
    "litellm",
    "completion(stream=True) (openai/), iterated with for",
    streamed(usage_of("openai")),
    model=GPT,
    path="completion(stream=True) (openai/)",
)
def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    def ask() -> Any:
        return ctx.sdk.completion(**litellm_args(ctx, stream=True, **INCLUDE_USAGE))

    assert drain(ask()) > DEFAULT_COMPLETION_TOKENS


@case(
    "litellm",
    "acompletion(stream=True) (openai/), iterated with async for",
    streamed(usage_of("openai")),
    model=GPT,
    path="completion(stream=True) (openai/)",
)
async def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    async def ask() -> Any:
        return await ctx.sdk.acompletion(**litellm_args(ctx, stream=True, **INCLUDE_USAGE))

    assert await adrain(await ask()) > DEFAULT_COMPLETION_TOKENS


@case(
    "litellm",
    "completion (anthropic/): Anthropic cache counts in OpenAI-shaped usage",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
    path="completion (anthropic/)",
)
def _(ctx: Ctx) -> None:
    @ctx.track("litellm", CLAUDE)
    def ask() -> Any:
        return ctx.sdk.completion(**litellm_anthropic_args(ctx))

    assert ask().usage.prompt_tokens == PROMPT_TOKENS


@case(
    "litellm",
    "completion(stream=True) (anthropic/)",
    streamed(usage_of("anthropic", reply=LIMIT)),
    model=CLAUDE,
    path="completion(stream=True) (anthropic/)",
)
def _(ctx: Ctx) -> None:
    @ctx.track("litellm", CLAUDE)
    def ask() -> Any:
        return ctx.sdk.completion(**litellm_anthropic_args(ctx, stream=True, **INCLUDE_USAGE))

    assert drain(ask()) > LIMIT


@case(
    "litellm",
    "completion -> 429",
    failed("RateLimitError", "429"),
    model=GPT,
    path="completion (openai/)",
)
def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    def ask() -> Any:
        return ctx.sdk.completion(**litellm_args(ctx, RATE_LIMITED))

    with pytest.raises(ctx.sdk.RateLimitError):
        ask()


@case(
    "litellm",
    "acompletion -> 500",
    failed("InternalServerError", "500"),
    model=GPT,
    path="completion (openai/)",
)
async def _(ctx: Ctx) -> None:
    @ctx.track("litellm", GPT)
    async def ask() -> Any:
        return await ctx.sdk.acompletion(**litellm_args(ctx, BROKEN))

    with pytest.raises(ctx.sdk.InternalServerError):
        await ask()


# -- the network guard, the SDKs, the server -------------------------------------------------


def matrix_server() -> LocalLLMServer:
    """The server the matrix's expectations are written for (not started)."""
    return LocalLLMServer(
        first_content_delay=FIRST_CONTENT_DELAY,
        cache_read_tokens=CACHE_READ,
        cache_creation_tokens=CACHE_CREATION,
        reasoning_tokens=REASONING,
        failures={RATE_LIMITED: 429, BROKEN: 500, UNAUTHORIZED: 401},
        stream_failures={OVERLOADED_MIDWAY: 529, UNAVAILABLE_MIDWAY: 503},
    )


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[LocalLLMServer]:
    """One server for the matrix, in a background thread: sync and async SDKs share it.
    It stops with the module, so no later test finds its thread."""
    with matrix_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _nothing_leaves_loopback(offline: None) -> Iterator[None]:
    before = len(NETWORK_GUARD.outside)
    yield
    assert NETWORK_GUARD.outside[before:] == [], "network use outside 127.0.0.1"


# -- running a case and reading what it recorded ----------------------------------------------


def check(registry: CollectorRegistry, case: Case) -> None:
    """Compare everything at once, so a failure shows every wrong number of the case."""
    expect = case.expect
    labels = {"provider": case.provider, "model": case.model}
    ttft = counted(registry, "ai_time_to_first_token_seconds_sum", **labels)
    duration = counted(registry, "ai_call_duration_seconds_sum", **labels)
    error_type, http_status = expect.error or ("", "")
    observed = {
        "calls": counted(registry, "ai_api_calls_total", status=expect.status, **labels),
        "input": counted(registry, "ai_tokens_used_total", token_type="input", **labels),
        "output": counted(registry, "ai_tokens_used_total", token_type="output", **labels),
        **{
            detail: counted(registry, "ai_token_details_total", detail=detail, **labels)
            for detail in Expect.DETAILS
        },
        "ttft_count": counted(registry, "ai_time_to_first_token_seconds_count", **labels),
        # Time to first token runs to the first generated content, after the staged delay;
        # a stream's call lasts at least as long.
        "ttft_after_first_content": (
            ttft >= expect.calls * FIRST_CONTENT_DELAY if expect.streamed else None
        ),
        "duration_count": counted(registry, "ai_call_duration_seconds_count", **labels),
        "duration_covers_ttft": duration >= ttft,
        "errors": counted(
            registry,
            "ai_api_errors_total",
            error_type=error_type,
            http_status=http_status,
            **labels,
        ),
        "active": registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}),
    }
    wanted = {
        "calls": expect.calls,
        "input": expect.input,
        "output": expect.output,
        "cache_read": expect.cache_read,
        "cache_creation": expect.cache_creation,
        "reasoning": expect.reasoning,
        "ttft_count": expect.calls if expect.streamed else 0,
        "ttft_after_first_content": True if expect.streamed else None,
        "duration_count": expect.calls,
        "duration_covers_ttft": True,
        "errors": expect.calls if expect.error else 0,
        "active": 0,
    }
    assert observed == wanted
    missing = registry.get_sample_value("codomyrmex_ai_usage_missing_total", labels)
    assert missing == (expect.usage_missing or 0)


def run(case: Case, ctx: Ctx) -> None:
    if case.asynchronous:
        asyncio.run(case.run(ctx))
    else:
        case.run(ctx)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sdk_path(
    case: Case,
    llm_server: LocalLLMServer,
    inst: Instrumentation,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sdk = require_sdk(case.sdk)
    caplog.set_level(logging.DEBUG, logger="instrument")
    requests_before = len(llm_server.requests)
    run(case, Ctx(llm_server, inst, sdk))
    assert len(llm_server.requests) - requests_before == case.expect.requests
    check(registry, case)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("instrument"))
    for key in KEYS.values():
        assert key not in logged


def test_the_guard_watches_the_sdks(llm_server: LocalLLMServer) -> None:
    """The guard sees the SDKs' loopback connections (so it would see others too), and
    refuses a connection anywhere else."""
    import socket

    seen = NETWORK_GUARD.loopback_seen
    with socket.create_connection((llm_server.host, llm_server.port), timeout=5):
        pass
    assert NETWORK_GUARD.loopback_seen == seen + 1
    with pytest.raises(ConnectionRefusedError, match=r"127\.0\.0\.1 only"):
        socket.getaddrinfo("example.com", 443)
    assert NETWORK_GUARD.outside.pop() == "socket.getaddrinfo 'example.com'"


def test_a_guard_leaves_the_socket_module_as_it_found_it() -> None:
    """Started inside the module's guard and stopped, a second guard restores exactly what
    it wrapped: the module's guard still refuses, and stopping that one too would leave
    the socket module's own functions."""
    import socket

    before = (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)
    guard = NetworkGuard()
    guard.start()
    with pytest.raises(ConnectionRefusedError):
        socket.getaddrinfo("example.org", 443)
    assert guard.outside == ["socket.getaddrinfo 'example.org'"]
    guard.stop()
    assert (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex) == before
    assert not guard.on and NETWORK_GUARD.on
    with pytest.raises(ConnectionRefusedError):  # the module's guard is still in place
        socket.getaddrinfo("example.net", 443)
    assert NETWORK_GUARD.outside.pop() == "socket.getaddrinfo 'example.net'"


# -- hostile cases: echoed secrets, streams failing midway, concurrency, early exits --------


def _label_values(registry: CollectorRegistry) -> set[str]:
    return {
        value
        for family in registry.collect()
        for s in family.samples
        for value in (*s.labels.values(), s.name)
    }


ECHOING_401: dict[str, tuple[str, Callable[[Ctx], Any], str]] = {
    "openai": (
        "openai",
        lambda ctx: openai_client(ctx).chat.completions.create(
            model=UNAUTHORIZED, messages=MESSAGES
        ),
        "AuthenticationError",
    ),
    "anthropic": (
        "anthropic",
        lambda ctx: anthropic_client(ctx).messages.create(**{**CLAUDE_ARGS, "model": UNAUTHORIZED}),
        "AuthenticationError",
    ),
    "google-genai": (
        "gemini",
        lambda ctx: genai_client(ctx).models.generate_content(model=UNAUTHORIZED, contents=PROMPT),
        "ClientError",
    ),
    "mistralai": (
        "mistral",
        lambda ctx: mistral_client(ctx).chat.complete(model=UNAUTHORIZED, messages=MESSAGES),
        "SDKError",
    ),
    "cohere": (
        "cohere",
        lambda ctx: cohere_client(ctx).chat(
            model=UNAUTHORIZED, messages=MESSAGES, request_options=NO_RETRIES
        ),
        "UnauthorizedError",
    ),
}


@pytest.mark.parametrize("sdk", sorted(ECHOING_401))
def test_an_api_key_the_server_echoes_goes_nowhere(
    sdk: str,
    llm_server: LocalLLMServer,
    inst: Instrumentation,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 whose body quotes the key (unmasked): the SDK's exception carries it, and the
    instrument records the class and status only, logging nothing of it."""
    provider, call, error_type = ECHOING_401[sdk]
    ctx = Ctx(llm_server, inst, require_sdk(sdk))
    caplog.set_level(logging.DEBUG, logger="instrument")
    key = KEYS[provider]

    @inst.track_ai_call(provider, "m")
    def ask() -> Any:
        return call(ctx)

    with pytest.raises(Exception) as raised:
        ask()
    assert key in str(raised.value)  # the echo reached the caller, as a provider's would
    labels = {"provider": provider, "model": "m"}
    errors = {"error_type": error_type, "http_status": "401"}
    assert registry.get_sample_value("codomyrmex_ai_api_errors_total", {**labels, **errors}) == 1
    assert not any(key in value for value in _label_values(registry))
    assert key not in "\n".join(r.getMessage() for r in caplog.records)


MIDWAY: dict[str, tuple[str, str, Callable[[Ctx], Any], tuple[str, str]]] = {
    # sdk: (provider, model, the stream, (error class, http_status the error should carry))
    "openai chat (an error chunk)": (
        "openai",
        UNAVAILABLE_MIDWAY,
        lambda ctx: openai_client(ctx).chat.completions.create(
            model=UNAVAILABLE_MIDWAY, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        ),
        ("APIError", ""),
    ),
    "openai responses (connection dropped)": (
        "openai",
        UNAVAILABLE_MIDWAY,
        lambda ctx: openai_client(ctx).responses.create(
            model=UNAVAILABLE_MIDWAY, input=PROMPT, stream=True
        ),
        ("APIConnectionError", ""),
    ),
    # The SDK raises APIStatusError with the stream's own 200: no HTTP error status.
    "anthropic (an error event)": (
        "anthropic",
        OVERLOADED_MIDWAY,
        lambda ctx: anthropic_client(ctx).messages.create(
            **{**CLAUDE_ARGS, "model": OVERLOADED_MIDWAY}, stream=True
        ),
        ("APIStatusError", ""),
    ),
    # google-genai's error carries the code of the error chunk; its .response is the 200.
    "google-genai (an error chunk)": (
        "gemini",
        UNAVAILABLE_MIDWAY,
        lambda ctx: genai_client(ctx).models.generate_content_stream(
            model=UNAVAILABLE_MIDWAY, contents=PROMPT
        ),
        ("ServerError", "503"),
    ),
    "mistralai (connection dropped)": (
        "mistral",
        UNAVAILABLE_MIDWAY,
        lambda ctx: mistral_client(ctx).chat.stream(model=UNAVAILABLE_MIDWAY, messages=MESSAGES),
        ("RemoteProtocolError", ""),
    ),
    "cohere (connection dropped)": (
        "cohere",
        UNAVAILABLE_MIDWAY,
        lambda ctx: cohere_client(ctx).chat_stream(
            model=UNAVAILABLE_MIDWAY, messages=MESSAGES, request_options=NO_RETRIES
        ),
        ("RemoteProtocolError", ""),
    ),
}
_MIDWAY_SDK = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google-genai",
    "mistral": "mistralai",
    "cohere": "cohere",
}


@pytest.mark.parametrize("path", sorted(MIDWAY))
def test_a_stream_failing_midway_is_one_error_after_its_first_token(
    path: str, llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """The first content chunk arrives, then the provider's in-stream error (or a dropped
    connection): one call, an error of the SDK's class and no HTTP error status but a real
    one, time to first token recorded, nothing left in flight."""
    provider, model, stream, (error_type, http_status) = MIDWAY[path]
    ctx = Ctx(llm_server, inst, require_sdk(_MIDWAY_SDK[provider]))

    @inst.track_ai_call(provider, model)
    def ask() -> Any:
        return stream(ctx)

    received = []
    with pytest.raises(Exception) as raised:
        for chunk in ask():
            received.append(chunk)
    assert type(raised.value).__name__ == error_type
    assert received  # the stream was under way
    labels = {"provider": provider, "model": model}
    errors = {"error_type": error_type, "http_status": http_status}
    observed = {
        "errors": counted(registry, "ai_api_errors_total", **labels, **errors),
        "error calls": counted(registry, "ai_api_calls_total", status="error", **labels),
        "success calls": counted(registry, "ai_api_calls_total", status="success", **labels),
        "ttft": counted(registry, "ai_time_to_first_token_seconds_count", **labels),
        "active": registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}),
    }
    assert observed == {"errors": 1, "error calls": 1, "success calls": 0, "ttft": 1, "active": 0}
    ttft = counted(registry, "ai_time_to_first_token_seconds_sum", **labels)
    assert ttft >= FIRST_CONTENT_DELAY


def test_concurrent_streams_and_threads_add_up_exactly(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Eight AsyncOpenAI streams at once on one decorated function, and four threads with
    sync Anthropic streams: every token and every first token counted once."""
    import threading

    ctx = Ctx(llm_server, inst, require_sdk("openai"))
    anthropic_ctx = Ctx(llm_server, inst, require_sdk("anthropic"))
    client = openai_client(ctx, asynchronous=True)
    claude = anthropic_client(anthropic_ctx)

    @inst.track_ai_call("openai", GPT)
    async def ask() -> Any:
        return await client.chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    @inst.track_ai_call("anthropic", CLAUDE)
    def ask_claude() -> Any:
        return claude.messages.create(**CLAUDE_ARGS, stream=True)

    async def one() -> int:
        return await adrain(await ask())

    async def streams() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(8))))

    threads = [threading.Thread(target=lambda: drain(ask_claude())) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert asyncio.run(streams()) == [DEFAULT_COMPLETION_TOKENS + 3] * 8
    for thread in threads:
        thread.join()
    for provider, model, dialect, calls, reply in (
        ("openai", GPT, "openai", 8, DEFAULT_COMPLETION_TOKENS),
        ("anthropic", CLAUDE, "anthropic", 4, LIMIT),
    ):
        expect = usage_of(dialect, reply=reply, calls=calls)
        case = Case("", "", "", provider, model, streamed(expect), drain)
        check(registry, case)


def test_a_stream_left_early_is_one_cancelled_call(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Leaving the SDK stream's with-block after the first word: cancelled, not a success,
    its time to first token kept, nothing in flight."""
    ctx = Ctx(llm_server, inst, require_sdk("openai"))
    client = openai_client(ctx)

    @inst.track_ai_call("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    with ask() as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    labels = {"provider": "openai", "model": GPT}
    observed = {
        status: counted(registry, "ai_api_calls_total", status=status, **labels)
        for status in ("success", "error", "cancelled")
    }
    assert observed == {"success": 0, "error": 0, "cancelled": 1}
    assert counted(registry, "ai_time_to_first_token_seconds_count", **labels) == 1
    assert counted(registry, "ai_time_to_first_token_seconds_sum", **labels) >= FIRST_CONTENT_DELAY
    assert registry.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0


@settings(max_examples=25, deadline=None)
@given(
    model=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
    prompt=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    reply=st.integers(min_value=1, max_value=40),
)
def test_any_model_name_and_prompt_are_counted_exactly(
    llm_server: LocalLLMServer, model: str, prompt: str, reply: int
) -> None:
    """Whatever the model name (the label, taken from the call's argument) and the prompt
    (unicode whitespace included), the real SDK's usage lands exactly under that label."""
    openai = require_sdk("openai")
    client = openai.OpenAI(api_key=KEYS["openai"], base_url=llm_server.base_url, max_retries=0)
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:

        @inst.track_ai_call("openai", None)
        def ask(model: str) -> Any:
            return client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_completion_tokens=reply,
            )

        ask(model)
        labels = {"provider": "openai", "model": model}
        tokens = {
            kind: counted(registry, "ai_tokens_used_total", token_type=kind, **labels)
            for kind in ("input", "output")
        }
        assert tokens == {"input": count_tokens(prompt), "output": reply + REASONING}
        assert counted(registry, "ai_api_calls_total", status="success", **labels) == 1
    finally:
        inst.close()


# -- the README's table --------------------------------------------------------------------------


def supported_paths_table(cases: list[Case] = CASES) -> str:
    """The README's table of supported SDK paths: one row per path of the matrix, its sync
    and async cases and its failures together, saying what their assertions check."""
    rows: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        rows.setdefault((c.sdk, c.path), []).append(c)
    lines = [
        "| SDK | call | tokens | details | TTFT | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (sdk, path), group in rows.items():
        kinds = sorted({"async" if c.asynchronous else "sync" for c in group}, reverse=True)
        answered = [c.expect for c in group if c.expect.error is None]
        if any(e.usage_missing for e in answered):
            tokens = "none sent: `usage_missing`"
        elif answered:
            tokens = "exact"
        else:
            tokens = ""
        details = sorted({d for e in answered for d in e.details}, key=Expect.DETAILS.index)
        ttft = ">= first content" if any(e.streamed for e in answered) else ""
        errors = ", ".join(
            f"`{c.expect.error[0]}` {c.expect.error[1]}" for c in group if c.expect.error
        )
        lines.append(
            f"| {sdk} | `{path}` ({', '.join(kinds)}) | {tokens} | {', '.join(details)} "
            f"| {ttft} | {errors} |"
        )
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
TABLE_START = "<!-- sdk-matrix: generated by `python -m tests.ai.test_sdk_matrix` -->\n"
TABLE_END = "<!-- /sdk-matrix -->"


def test_the_readme_lists_the_matrix() -> None:
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text, "README lost the sdk-matrix markers"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert table == supported_paths_table(), (
        "README's table of SDK paths is out of date: run `python -m tests.ai.test_sdk_matrix` "
        "and paste its output between the sdk-matrix markers"
    )


# -- the server's own promises ---------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        {"first_content_delay": -0.1},
        {"chunk_delay": True},
        {"latency": "1"},
        {"cache_read_tokens": -1},
        {"reasoning_tokens": 1.5},
        {"failures": {"m": 200}},
        {"failures": {"m": True}},
    ],
)
def test_the_server_rejects_bad_options(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        LocalLLMServer(**option)


if __name__ == "__main__":
    print(supported_paths_table(), end="")


# -- wave 3 (rev-ai): paths the reviewers found losing usage -----------------------------------


def test_a_generator_relaying_two_openai_streams_adds_both(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """A tool-call round then the answer, each a real stream, relayed by one generator:
    both responses count, as they do when recorded in one with-block."""
    client = openai_client(Ctx(llm_server, inst, require_sdk("openai")))

    def one(prompt: str) -> Any:
        return client.chat.completions.create(
            model=GPT,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            **INCLUDE_USAGE,
        )

    @inst.track_ai_call("openai", "agent")
    def agent() -> Iterator[Any]:
        yield from one("a b c d e f g h i j")
        yield from one("a b c")

    with inst.track_ai_call("openai", "block") as call:
        for stream in (one("a b c d e f g h i j"), one("a b c")):
            drain(call.record_response(stream))
    reported = [chunk.usage for chunk in agent() if chunk.usage]
    assert [u.prompt_tokens for u in reported] == [10, 3]
    output = sum(u.completion_tokens for u in reported)
    for model in ("agent", "block"):
        labels = {"provider": "openai", "model": model}
        assert (
            registry.get_sample_value(
                "codomyrmex_ai_tokens_used_total", {**labels, "token_type": "input"}
            )
            == 13
        )
        assert (
            registry.get_sample_value(
                "codomyrmex_ai_tokens_used_total", {**labels, "token_type": "output"}
            )
            == output
        )
