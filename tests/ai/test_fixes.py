"""Regressions for the AI tracking defects of the last hostile review (rev-ai 7, 8, 11, 12,
and the coroutine-function look of decorated callable instances), and the hostile tests
around them.

SDK paths run the real SDKs against the local wire-format server, as tests/ai/test_sdk_matrix.py
does (its fixtures, cases and checks are reused; they are marked ``sdk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import gc
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import instrument
from instrument import Instrumentation
from instrument.ai import OTHER_MODEL, record_abandoned_streams
from instrument.demo.llm_server import DEFAULT_COMPLETION_TOKENS, LocalLLMServer
from instrument.testing import isolated_instrumentation

from ..ai_fakes import as_object, openai_chat_chunks
from ..support import active, calls, counted, require_sdk, sample, token_counts, ttft
from .test_sdk_matrix import (
    CLAUDE,
    CLAUDE_ARGS,
    COMMAND,
    GEMINI,
    GPT,
    INCLUDE_USAGE,
    LIMIT,
    MESSAGES,
    MISTRAL,
    NO_RETRIES,
    PROMPT,
    Case,
    Ctx,
    Expect,
    adrain,
    anthropic_client,
    check,
    cohere_client,
    drain,
    genai_client,
    litellm_args,
    matrix_server,
    mistral_client,
    openai_client,
    run,
    streamed,
    usage_of,
)
from .test_sdk_matrix import _nothing_leaves_loopback as _nothing_leaves_loopback

sdk = pytest.mark.sdk


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[LocalLLMServer]:
    """The matrix's server, for this module only: its thread must not outlive the module
    (tests/test_hostile_delivery.py checks every ``instrument-*`` thread it finds)."""
    with matrix_server() as server:
        yield server


# == rev-ai 7: a raw or streaming response whose parse() gives the stream ======================

RAW_CASES: list[Case] = []


def raw_case(
    sdk_name: str, call: str, expect: Expect, *, model: str, provider: str | None = None
) -> Callable[[Callable[[Ctx], Any]], Callable[[Ctx], Any]]:
    """A case like the matrix's, kept out of the matrix's own list (and README table)."""

    def register(body: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        RAW_CASES.append(Case(sdk_name, call, call, provider or sdk_name, model, expect, body))
        return body

    return register


CLAUDE_STREAMED = streamed(usage_of("anthropic", reply=LIMIT))
GPT_STREAMED = streamed(usage_of("openai"))


@raw_case(
    "anthropic",
    "AsyncAnthropic messages.with_raw_response.create(stream=True), await raw.parse()",
    CLAUDE_STREAMED,
    model=CLAUDE,
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)

    raw = await ask()
    assert raw.headers["request-id"]  # the raw response, headers and all
    stream = await raw.parse()
    assert await raw.parse() is stream  # the SDK's cached body, the same proxy
    assert await adrain(stream) == LIMIT + 5


@raw_case(
    "anthropic",
    "AsyncAnthropic messages.with_streaming_response.create(stream=True) in async with",
    CLAUDE_STREAMED,
    model=CLAUDE,
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.with_streaming_response.create(**CLAUDE_ARGS, stream=True)

    async with ask() as response:
        assert response.http_response.status_code == 200
        assert await adrain(await response.parse()) == LIMIT + 5


@raw_case(
    "anthropic",
    "messages.with_streaming_response.create(stream=True) in a with-block",
    CLAUDE_STREAMED,
    model=CLAUDE,
)
def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.with_streaming_response.create(**CLAUDE_ARGS, stream=True)

    with ask() as response:
        assert drain(response.parse()) == LIMIT + 5


@raw_case(
    "anthropic",
    "AsyncAnthropic messages.with_streaming_response.create, await response.parse()",
    usage_of("anthropic", reply=LIMIT),
    model=CLAUDE,
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)

    @ctx.track("anthropic", CLAUDE)
    def ask() -> Any:
        return client.messages.with_streaming_response.create(**CLAUDE_ARGS)

    async with ask() as response:
        assert (await response.parse()).usage.output_tokens == LIMIT


@raw_case(
    "anthropic",
    "messages.with_raw_response.create(stream=True) recorded in a with-block",
    CLAUDE_STREAMED,
    model=CLAUDE,
)
async def _(ctx: Ctx) -> None:
    client = anthropic_client(ctx, asynchronous=True)
    async with ctx.track("anthropic", CLAUDE) as call:
        raw = call.record_response(
            await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)
        )
        assert await adrain(await raw.parse()) == LIMIT + 5


@raw_case(
    "openai",
    "chat.completions.with_streaming_response.create(stream=True) in a with-block",
    GPT_STREAMED,
    model=GPT,
)
def _(ctx: Ctx) -> None:
    client = openai_client(ctx)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.with_streaming_response.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    with ask() as response:
        assert drain(response.parse()) == DEFAULT_COMPLETION_TOKENS + 3


@raw_case(
    "openai",
    "AsyncOpenAI chat.completions.with_streaming_response.create(stream=True) in async with",
    GPT_STREAMED,
    model=GPT,
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.chat.completions.with_streaming_response.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    async with ask() as response:
        assert await adrain(await response.parse()) == DEFAULT_COMPLETION_TOKENS + 3


@raw_case(
    "openai",
    "AsyncOpenAI responses.with_streaming_response.create(stream=True) in async with",
    GPT_STREAMED,
    model=GPT,
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    def ask() -> Any:
        return client.responses.with_streaming_response.create(
            model=GPT, input=PROMPT, instructions="You are terse.", stream=True
        )

    async with ask() as response:
        assert await adrain(await response.parse()) == DEFAULT_COMPLETION_TOKENS + 8


@raw_case(
    "openai",
    "AsyncOpenAI chat.completions.with_raw_response.create(stream=True)",
    GPT_STREAMED,
    model=GPT,
)
async def _(ctx: Ctx) -> None:
    client = openai_client(ctx, asynchronous=True)

    @ctx.track("openai", GPT)
    async def ask() -> Any:
        return await client.chat.completions.with_raw_response.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        )

    raw = await ask()
    assert raw.headers["x-request-id"] == "req_local"
    assert await adrain(raw.parse()) == DEFAULT_COMPLETION_TOKENS + 3  # openai's parse() is sync


@raw_case(
    "cohere",
    "ClientV2.with_raw_response.chat_stream in a with-block",
    streamed(usage_of("cohere")),
    model=COMMAND,
)
def _(ctx: Ctx) -> None:
    client = cohere_client(ctx)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.with_raw_response.chat_stream(
            model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES
        )

    with ask() as response:
        assert response.headers["x-endpoint-monthly-call-limit"] == "1000"
        assert drain(response.data) == DEFAULT_COMPLETION_TOKENS + 4


@raw_case(
    "cohere",
    "AsyncClientV2.with_raw_response.chat_stream in async with",
    streamed(usage_of("cohere")),
    model=COMMAND,
)
async def _(ctx: Ctx) -> None:
    client = cohere_client(ctx, asynchronous=True)

    @ctx.track("cohere", COMMAND)
    def ask() -> Any:
        return client.with_raw_response.chat_stream(
            model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES
        )

    async with ask() as response:
        assert await adrain(response.data) == DEFAULT_COMPLETION_TOKENS + 4


@sdk
@pytest.mark.parametrize("case", RAW_CASES, ids=[c.call for c in RAW_CASES])
def test_a_raw_response_is_followed_to_the_stream_its_parse_gives(
    case: Case, llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """rev-ai 7: exact tokens and time to first token (at least the server's delay), no
    usage_missing, one request, nothing left in flight."""
    requests = len(llm_server.requests)
    run(case, Ctx(llm_server, inst, require_sdk(case.sdk)))
    assert len(llm_server.requests) - requests == case.expect.requests
    check(registry, case)


@sdk
def test_an_async_raw_stream_left_early_is_one_cancelled_call(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """The first text, then the caller leaves: cancelled, its first token kept."""
    client = anthropic_client(Ctx(llm_server, inst, require_sdk("anthropic")), asynchronous=True)

    @inst.track_ai_call("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)

    async def leave_early() -> None:
        stream = await (await ask()).parse()
        async for event in stream:
            if event.type == "content_block_delta":
                break
        await stream.close()

    asyncio.run(leave_early())
    assert calls(registry, "anthropic", CLAUDE) == {"cancelled": 1}
    assert ttft(registry, "anthropic", CLAUDE)[0] == 1
    assert active(registry, "ai_call") == 0


@sdk
def test_an_async_raw_stream_never_parsed_is_cancelled_when_dropped(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    client = anthropic_client(Ctx(llm_server, inst, require_sdk("anthropic")), asynchronous=True)

    @inst.track_ai_call("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)

    async def drop() -> None:
        raw = await ask()
        assert active(registry, "ai_call") == 1  # its stream is still to be read
        await raw.http_response.aclose()

    asyncio.run(drop())
    gc.collect()
    record_abandoned_streams()
    assert calls(registry, "anthropic", CLAUDE) == {"cancelled": 1}
    assert active(registry, "ai_call") == 0


@sdk
def test_a_raw_stream_whose_parse_fails_is_one_error(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """parse() raising (here: the SDK refuses a cast) is the caller's error, and the call's."""
    client = anthropic_client(Ctx(llm_server, inst, require_sdk("anthropic")), asynchronous=True)

    @inst.track_ai_call("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)

    async def parse_badly() -> None:
        raw = await ask()
        with pytest.raises(Exception) as raised:
            await raw.parse(to=int)
        assert type(raised.value).__name__ != "AssertionError"
        await raw.http_response.aclose()

    asyncio.run(parse_badly())
    assert sum(calls(registry, "anthropic", CLAUDE).values()) == 1
    assert calls(registry, "anthropic", CLAUDE).get("error") == 1
    assert active(registry, "ai_call") == 0


# == rev-ai 8: a stream proxy has the methods its stream has, and no others ====================

#: The protocol methods a proxy watches when the stream has them; each must be present on
#: the proxy exactly when it is on the stream.
PROTOCOL = (
    "send",
    "throw",
    "close",
    "asend",
    "athrow",
    "aclose",
    "__next__",
    "__anext__",
    "__iter__",
    "__aiter__",
)


def _has(obj: Any, name: str) -> bool | str:
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    except Exception as exc:  # a property that raises (a snapshot before its first event)
        return type(exc).__name__
    return True


def differences(stream: Any, proxy: Any) -> dict[str, tuple[bool | str, bool | str]]:
    """The names (the protocol's, and every public one of either type) on which the
    stream and its proxy disagree."""
    names = {*PROTOCOL}
    for obj in (stream, proxy):
        names |= {n for n in dir(type(obj)) if not n.startswith("_")}
    found = {n: (_has(stream, n), _has(proxy, n)) for n in sorted(names)}
    return {n: pair for n, pair in found.items() if pair[0] != pair[1]}


def _litellm_stream(ctx: Ctx) -> Any:
    return ctx.sdk.completion(**litellm_args(ctx, stream=True, **INCLUDE_USAGE))


async def _litellm_astream(ctx: Ctx) -> Any:
    return await ctx.sdk.acompletion(**litellm_args(ctx, stream=True, **INCLUDE_USAGE))


async def _openai_astream(ctx: Ctx) -> Any:
    return await openai_client(ctx, asynchronous=True).chat.completions.create(
        model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
    )


async def _anthropic_astream(ctx: Ctx) -> Any:
    client = anthropic_client(ctx, asynchronous=True)
    return await client.messages.create(**CLAUDE_ARGS, stream=True)


async def _genai_astream(ctx: Ctx) -> Any:
    return await genai_client(ctx).aio.models.generate_content_stream(model=GEMINI, contents=PROMPT)


async def _mistral_astream(ctx: Ctx) -> Any:
    return await mistral_client(ctx).chat.stream_async(model=MISTRAL, messages=MESSAGES)


#: Every SDK's stream class: (SDK, provider, model, how it is iterated, how it is made).
SDK_STREAMS: dict[str, tuple[str, str, str, str, Callable[[Ctx], Any]]] = {
    "openai Stream": (
        "openai",
        "openai",
        GPT,
        "sync",
        lambda ctx: openai_client(ctx).chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, **INCLUDE_USAGE
        ),
    ),
    "openai AsyncStream": ("openai", "openai", GPT, "async", _openai_astream),
    "anthropic Stream": (
        "anthropic",
        "anthropic",
        CLAUDE,
        "sync",
        lambda ctx: anthropic_client(ctx).messages.create(**CLAUDE_ARGS, stream=True),
    ),
    "anthropic AsyncStream": ("anthropic", "anthropic", CLAUDE, "async", _anthropic_astream),
    "anthropic MessageStream": (
        "anthropic",
        "anthropic",
        CLAUDE,
        "manager",
        lambda ctx: anthropic_client(ctx).messages.stream(**CLAUDE_ARGS),
    ),
    "anthropic AsyncMessageStream": (
        "anthropic",
        "anthropic",
        CLAUDE,
        "async manager",
        lambda ctx: anthropic_client(ctx, asynchronous=True).messages.stream(**CLAUDE_ARGS),
    ),
    "google-genai generator": (
        "google-genai",
        "gemini",
        GEMINI,
        "sync",
        lambda ctx: genai_client(ctx).models.generate_content_stream(model=GEMINI, contents=PROMPT),
    ),
    "google-genai async generator": ("google-genai", "gemini", GEMINI, "async", _genai_astream),
    "mistralai EventStream": (
        "mistralai",
        "mistral",
        MISTRAL,
        "sync",
        lambda ctx: mistral_client(ctx).chat.stream(model=MISTRAL, messages=MESSAGES),
    ),
    "mistralai EventStreamAsync": ("mistralai", "mistral", MISTRAL, "async", _mistral_astream),
    "cohere generator": (
        "cohere",
        "cohere",
        COMMAND,
        "sync",
        lambda ctx: cohere_client(ctx).chat_stream(
            model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES
        ),
    ),
    "cohere async generator": (
        "cohere",
        "cohere",
        COMMAND,
        "async",
        lambda ctx: cohere_client(ctx, asynchronous=True).chat_stream(
            model=COMMAND, messages=MESSAGES, request_options=NO_RETRIES
        ),
    ),
    "litellm CustomStreamWrapper": ("litellm", "litellm", GPT, "sync", _litellm_stream),
    "litellm CustomStreamWrapper (acompletion)": (
        "litellm",
        "litellm",
        GPT,
        "async",
        _litellm_astream,
    ),
}


async def _made(make: Callable[[Ctx], Any], ctx: Ctx) -> Any:
    made = make(ctx)
    return await made if inspect.isawaitable(made) else made


@sdk
@pytest.mark.parametrize("path", sorted(SDK_STREAMS))
def test_a_stream_proxy_has_exactly_the_methods_of_its_stream(
    path: str, llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """rev-ai 8: ``hasattr(proxy, name) == hasattr(stream, name)`` for the protocol methods
    and every public name, on each SDK's own stream class; read to its end, the call counts
    once."""
    sdk_name, provider, model, protocol, make = SDK_STREAMS[path]
    ctx = Ctx(llm_server, inst, require_sdk(sdk_name))
    tracked = inst.track_ai_call(provider, model)(make)

    async def compare_async() -> dict[str, Any]:
        stream, proxy = await _made(make, ctx), await _made(tracked, ctx)
        if protocol == "async manager":
            async with stream as plain, proxy as watched:
                found = differences(plain, watched)
                await adrain(plain), await adrain(watched)
            return found
        found = differences(stream, proxy)
        await adrain(stream), await adrain(proxy)
        return found

    if protocol == "sync":
        stream, proxy = make(ctx), tracked(ctx)
        found = differences(stream, proxy)
        drain(stream), drain(proxy)
    elif protocol == "manager":
        with make(ctx) as stream, tracked(ctx) as proxy:
            found = differences(stream, proxy)
            drain(stream), drain(proxy)
    else:
        found = asyncio.run(compare_async())
    assert found == {}
    assert calls(registry, provider, model) == {"success": 1}
    assert active(registry, "ai_call") == 0


@sdk
@pytest.mark.parametrize(
    "path", sorted(p for p in SDK_STREAMS if "manager" not in SDK_STREAMS[p][3])
)
def test_closing_an_sdk_stream_through_its_proxy_after_the_first_chunk_is_one_cancel(
    path: str, llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Every close the stream has (close, aclose) is watched: one cancelled call."""
    sdk_name, provider, model, protocol, make = SDK_STREAMS[path]
    ctx = Ctx(llm_server, inst, require_sdk(sdk_name))
    tracked = inst.track_ai_call(provider, model)(make)

    async def first_then_close() -> None:
        proxy = await _made(tracked, ctx)
        await proxy.__anext__()
        closed = proxy.aclose() if hasattr(proxy, "aclose") else proxy.close()
        if inspect.isawaitable(closed):
            await closed

    if protocol == "sync":
        proxy = tracked(ctx)
        next(proxy)
        proxy.close()
    else:
        asyncio.run(first_then_close())
    assert calls(registry, provider, model) == {"cancelled": 1}
    assert active(registry, "ai_call") == 0


# A property over stream types made up of any subset of the protocol: the proxy of each
# has exactly the subset, and whichever protocol it has reads the chunks and ends the call.

_SYNC_ONLY = ("send", "throw", "close")
_ASYNC_ONLY = ("asend", "athrow", "aclose")


async def _each(chunks: list[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


def _stream_type(names: frozenset[str]) -> type:
    """A stream class with the given protocol methods over a fixed list of chunks."""

    def init(self: Any, chunks: list[Any]) -> None:
        self.chunks = list(chunks)
        self.closed = False

    def step(self: Any) -> Any:
        if self.closed or not self.chunks:
            raise StopIteration
        return self.chunks.pop(0)

    async def astep(self: Any) -> Any:
        if self.closed or not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    def close(self: Any) -> None:
        self.closed = True

    async def aclose(self: Any) -> None:
        self.closed = True

    namespace: dict[str, Any] = {"__init__": init}
    methods: dict[str, Any] = {
        "__next__": step,
        "__iter__": lambda self: self if hasattr(type(self), "__next__") else iter(self.chunks),
        "__anext__": astep,
        "__aiter__": lambda self: self if hasattr(type(self), "__anext__") else _each(self.chunks),
        "send": lambda self, value: step(self),
        "throw": lambda self, *exc: step(self),
        "close": close,
        "asend": lambda self, value: astep(self),
        "athrow": lambda self, *exc: astep(self),
        "aclose": aclose,
    }
    namespace.update((name, methods[name]) for name in names)
    return type("Made", (), namespace)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.frozensets(st.sampled_from(PROTOCOL)))
def test_any_mix_of_protocol_methods_is_mirrored_by_the_proxy(names: frozenset[str]) -> None:
    cls = _stream_type(names)
    chunks = openai_chat_chunks(prompt=5, completion=3)
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:
        proxy = inst.track_ai_call("openai", "gpt-4o", stream=True)(lambda: cls(chunks))()
        stream = cls(chunks)
        assert {n: _has(proxy, n) for n in PROTOCOL} == {n: _has(stream, n) for n in PROTOCOL}
        if "__iter__" in names:
            assert list(proxy) == chunks
        elif "__next__" in names:
            assert [next(proxy) for _ in chunks] == chunks
            with pytest.raises(StopIteration):
                next(proxy)
        elif "__aiter__" in names or "__anext__" in names:

            async def read() -> list[Any]:
                if "__aiter__" in names:
                    return [c async for c in proxy]
                read = [await proxy.__anext__() for _ in chunks]
                with pytest.raises(StopAsyncIteration):
                    await proxy.__anext__()
                return read

            assert asyncio.run(read()) == chunks
        else:  # not a stream: handed back as it is, read as a response
            assert type(proxy) is cls
            assert calls(registry, "openai", "gpt-4o") == {"success": 1}
            return
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 5, "output": 3}
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


# == rev-ai 11: an iterable (a list of chunks) under stream=True, iterated more than once =====


def test_a_returned_list_iterated_twice_gives_its_chunks_both_times_and_counts_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    chunks = openai_chat_chunks(prompt=6, completion=3)

    @inst.track_ai_call("openai", "gpt-4o", stream=True)
    def ask() -> list[Any]:
        return list(chunks)

    handed = ask()
    assert isinstance(handed, list) and len(handed) == len(chunks) and handed[1] == chunks[1]
    first = list(handed)
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    second = list(handed)
    assert first == second == chunks
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 6, "output": 3}
    assert ttft(registry, "openai", "gpt-4o")[0] == 1
    assert active(registry, "ai_call") == 0


class AsyncChunks:
    """An async iterable that is no async iterator: each ``async for`` starts afresh."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> AsyncIterator[Any]:
        return _each(self.chunks)


def test_an_async_iterable_iterated_twice_gives_its_chunks_both_times_and_counts_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    chunks = [as_object(c) for c in openai_chat_chunks(prompt=4, completion=2)]

    @inst.track_ai_call("openai", "gpt-4o", stream=True)
    async def ask() -> AsyncChunks:
        return AsyncChunks(chunks)

    async def twice() -> tuple[list[Any], list[Any]]:
        handed = await ask()
        return [c async for c in handed], [c async for c in handed]

    first, second = asyncio.run(twice())
    assert first == second == chunks
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 4, "output": 2}
    assert active(registry, "ai_call") == 0


@settings(max_examples=60, deadline=None)
@given(
    container=st.sampled_from([list, tuple]),
    stops=st.lists(st.integers(min_value=0, max_value=8), max_size=3),
    passes_after=st.integers(min_value=1, max_value=3),
)
def test_passes_left_early_then_read_to_the_end_count_the_chunks_once(
    container: Callable[[list[Any]], Any], stops: list[int], passes_after: int
) -> None:
    """Any passes broken off after a few chunks, then whole passes: every pass gives the
    same chunks, and the call is one success with the usage counted once."""
    chunks = openai_chat_chunks(prompt=7, completion=3)
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:
        handed = inst.track_ai_call("openai", "gpt-4o", stream=True)(lambda: container(chunks))()
        for stop in stops:
            assert list(itertools.islice(handed, stop)) == chunks[:stop]
        for _ in range(passes_after):
            assert list(handed) == chunks
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 7, "output": 3}
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


def test_an_empty_list_is_one_call_without_usage(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    handed = inst.track_ai_call("openai", "gpt-4o", stream=True)(list)()
    assert list(handed) == [] and list(handed) == []
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert sample(registry, "ai_usage_missing_total", provider="openai", model="gpt-4o") == 1
    assert active(registry, "ai_call") == 0


# == rev-ai 12: record_ai_api_call goes through the model guard ===============================


def _models(registry: CollectorRegistry, provider: str) -> dict[str, float]:
    """Calls per model label of one provider, read back from the registry."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "codomyrmex_ai_api_calls_total" and s.labels["provider"] == provider:
                found[s.labels["model"]] = found.get(s.labels["model"], 0) + s.value
    return found


def test_record_ai_api_call_beyond_max_models_reports_other() -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, max_models=3)
    try:
        for i in range(10):
            inst.record_ai_api_call("openai", f"m{i}", success=i % 2 == 0, input_tokens=i)
        assert _models(registry, "openai") == {"m0": 1, "m1": 1, "m2": 1, OTHER_MODEL: 7}
        other = {"provider": "openai", "model": OTHER_MODEL}
        assert sample(registry, "ai_api_calls_total", **other, status="success") == 3
        assert sample(registry, "ai_api_calls_total", **other, status="error") == 4
        assert sample(registry, "ai_tokens_used_total", **other, token_type="input") == sum(
            range(3, 10)
        )
    finally:
        inst.close()


def test_the_seeds_record_ai_api_call_shares_the_guard_with_tracked_calls() -> None:
    """compat.record_ai_api_call on the default instrumentation, mixed with decorated
    calls: one model budget per provider, whoever records."""
    with isolated_instrumentation(max_models=2) as inst:
        tracked = inst.track_ai_call("anthropic", None)

        @tracked
        def ask(model: str) -> dict[str, Any]:
            return {"usage": {"input_tokens": 2, "output_tokens": 1}}

        ask("claude-a")
        instrument.record_ai_api_call("anthropic", "claude-b", True, 5, 6)
        instrument.record_ai_api_call("anthropic", "claude-c", True, 7, 8)
        ask("claude-d")
        registry = inst.registry
        assert _models(registry, "anthropic") == {"claude-a": 1, "claude-b": 1, OTHER_MODEL: 2}
        assert token_counts(registry, "anthropic", OTHER_MODEL) == {"input": 9, "output": 9}


@settings(max_examples=40, deadline=None)
@given(
    models=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
        min_size=1,
        max_size=30,
    ),
    limit=st.integers(min_value=1, max_value=6),
)
def test_no_sequence_of_record_ai_api_call_grows_past_max_models(
    models: list[str], limit: int
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, max_models=limit)
    try:
        for model in models:
            inst.record_ai_api_call("p", model, input_tokens=1)
        seen = _models(registry, "p")
        first = list(dict.fromkeys(models))[:limit]  # the models that get their own series
        assert set(seen) - {OTHER_MODEL} == set(first) - {OTHER_MODEL}
        assert sum(seen.values()) == len(models)  # no call lost
        tokens = sum(
            sample(registry, "ai_tokens_used_total", provider="p", model=m, token_type="input") or 0
            for m in seen
        )
        assert tokens == len(models)
    finally:
        inst.close()


# == a decorated async callable instance looks like the coroutine function it is ==============


class AskAsync:
    """A client object whose calls are coroutines (``async def __call__``)."""

    async def __call__(self, prompt: str, *, model: str = "gpt-4o") -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"model": model, "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}}


class StreamAsync:
    async def __call__(self, n: int) -> AsyncIterator[dict[str, Any]]:
        for chunk in openai_chat_chunks(prompt=n, completion=2):
            yield chunk


class StreamSync:
    def __call__(self, n: int) -> Iterator[dict[str, Any]]:
        yield from openai_chat_chunks(prompt=n, completion=2)


class AskSync:
    def __call__(self, prompt: str) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}}


#: (callable instance, the inspect check that must say True of the decorated one)
INSTANCES: dict[str, tuple[Callable[[], Any], Callable[[Any], bool] | None]] = {
    "async __call__": (AskAsync, inspect.iscoroutinefunction),
    "async generator __call__": (StreamAsync, inspect.isasyncgenfunction),
    "generator __call__": (StreamSync, inspect.isgeneratorfunction),
    "sync __call__": (AskSync, None),
}
CHECKS = (inspect.iscoroutinefunction, inspect.isasyncgenfunction, inspect.isgeneratorfunction)


@pytest.mark.parametrize("shape", list(INSTANCES))
@pytest.mark.parametrize("decorate", ["track_ai_call", "monitored_analysis"])
def test_a_decorated_callable_instance_says_what_its_calls_make(
    shape: str, decorate: str, inst: Instrumentation
) -> None:
    make, says = INSTANCES[shape]
    original = make()
    if decorate == "track_ai_call":
        wrapped = inst.track_ai_call("openai", "gpt-4o")(original)
    else:
        wrapped = inst.monitored_analysis("m", "t")(original)
    assert {c.__name__: c(wrapped) for c in CHECKS} == {c.__name__: c is says for c in CHECKS}
    assert asyncio.iscoroutinefunction(wrapped) == (says is inspect.iscoroutinefunction)
    # The rest of its look is the instance's own.
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert isinstance(wrapped, make) and not inspect.isfunction(wrapped)
    if says is None:
        assert not hasattr(wrapped, "__name__")  # as the instance: nothing added
    else:
        assert wrapped.__name__ == make.__name__  # the instance has none: its class's
    copied = copy.copy(wrapped)
    assert type(copied) is type(wrapped) and copied.__wrapped__ is not original
    assert all(c(copied) == c(wrapped) for c in CHECKS)


async def test_a_decorated_async_callable_instance_is_awaited_and_counted(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    asked = inst.track_ai_call("openai", None)(AskAsync())
    assert inspect.iscoroutinefunction(asked)
    pending = asked("abc", model="gpt-4o-mini")
    assert inspect.iscoroutine(pending)
    assert (await pending)["model"] == "gpt-4o-mini"
    assert calls(registry, "openai", "gpt-4o-mini") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o-mini") == {"input": 3, "output": 1}

    streamed = inst.track_ai_call("openai", "gpt-4o")(StreamAsync())
    assert inspect.isasyncgenfunction(streamed)
    assert len([c async for c in streamed(4)]) == 6
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 4, "output": 2}
    assert active(registry, "ai_call") == 0


def test_a_partial_of_an_async_callable_instance_still_answers_as_the_partial_does(
    inst: Instrumentation,
) -> None:
    """inspect looks through a partial by its ``func``, which the proxy must leave as the
    partial's own (the instance): the answer stays the undecorated partial's."""
    original = functools.partial(AskAsync(), "abc")
    wrapped = inst.track_ai_call("openai", "gpt-4o")(original)
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(original)
    assert wrapped.func is original.func
    assert inspect.iscoroutinefunction(wrapped.__call__)  # what Starlette asks next


# == hostile: any chunk sequence, usage anywhere, any way of ending ============================

from ..ai_fakes import FakeAsyncStream, FakeStream, RateLimitError  # noqa: E402


def _chunk(
    content: str | None,
    usage: tuple[int, int] | None,
    *,
    rid: str | None = "chatcmpl-1",
    finish: str | None = None,
) -> dict[str, Any]:
    """An OpenAI Chat chunk: a content delta (or none: a bookkeeping chunk), and a usage
    report when given; ``rid`` None: a chunk without an id; ``finish``: its reason."""
    choices: list[dict[str, Any]] = (
        [] if content is None else [{"index": 0, "delta": {"content": content}}]
    )
    if finish is not None and choices:
        choices[0]["finish_reason"] = finish
    chunk: dict[str, Any] = {"model": "gpt-4o", "choices": choices}
    if rid is not None:
        chunk["id"] = rid
    chunk["usage"] = None
    if usage is not None:
        chunk["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return chunk


_report = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6))
_chunks = st.lists(
    st.tuples(st.one_of(st.none(), st.text(max_size=3)), st.one_of(st.none(), _report)),
    max_size=8,
)
_SOURCES = ("stream", "async stream", "list", "generator", "async generator")


def _relay(chunks: list[Any], fail_at: int | None) -> Iterator[Any]:
    for i, chunk in enumerate(chunks):
        if i == fail_at:
            raise RateLimitError()
        yield chunk
    if fail_at is not None and fail_at >= len(chunks):
        raise RateLimitError()


async def _arelay(chunks: list[Any], fail_at: int | None) -> AsyncIterator[Any]:
    for chunk in _relay(chunks, fail_at):
        await asyncio.sleep(0)
        yield chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=_chunks,
    objects=st.booleans(),
    source=st.sampled_from(_SOURCES),
    ending=st.sampled_from(["end", "close", "fail", "drop"]),
    at=st.integers(0, 9),
)
def test_any_chunk_sequence_counts_what_was_reported_before_the_end(
    spec: list[tuple[str | None, tuple[int, int] | None]],
    objects: bool,
    source: str,
    ending: str,
    at: int,
) -> None:
    """Usage in no chunk, the first, the last or many (running totals merge to the largest
    of each field); dicts or SDK-like objects; read to the end, closed, failing or dropped
    after ``at`` chunks: one call, its status, exactly the usage reported up to then, the
    first token if content came, usage_missing when nothing was reported, nothing open."""
    if source == "list" and ending == "fail":
        ending = "drop"  # a list cannot fail midway
    chunks = [_chunk(content, usage) for content, usage in spec]
    if objects:
        chunks = [as_object(c) for c in chunks]
    at = min(at, len(chunks))
    read = chunks if ending == "end" else chunks[:at]
    fail_at = at if ending == "fail" else None
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    track = inst.track_ai_call("openai", "gpt-4o", stream=True)
    made: dict[str, Callable[[], Any]] = {
        "stream": lambda: FakeStream(
            chunks, fail_after=fail_at, error=RateLimitError() if fail_at is not None else None
        ),
        "async stream": lambda: FakeAsyncStream(
            chunks, fail_after=fail_at, error=RateLimitError() if fail_at is not None else None
        ),
        "list": lambda: list(chunks),
        "generator": lambda: _relay(chunks, fail_at),
        "async generator": lambda: _arelay(chunks, fail_at),
    }
    ask: Any = track(made[source]) if "generator" not in source else None
    if source == "generator":

        @track
        def ask() -> Iterator[Any]:
            yield from _relay(chunks, fail_at)

    elif source == "async generator":

        @track
        async def ask() -> AsyncIterator[Any]:
            async for chunk in _arelay(chunks, fail_at):
                yield chunk

    async def consume_async(stream: Any) -> list[Any]:
        if ending in ("close", "drop"):  # ``at`` chunks, then the caller leaves
            it = aiter(stream)
            got = [await anext(it) for _ in range(at)]
            if ending == "close":
                await (stream.aclose() if hasattr(stream, "aclose") else stream.close())
            return got
        got = []
        with contextlib.suppress(RateLimitError):
            async for chunk in stream:
                got.append(chunk)
        return got

    def consume(stream: Any) -> list[Any]:
        if ending in ("close", "drop"):
            it = iter(stream)
            got = [next(it) for _ in range(at)]
            if ending == "close" and hasattr(stream, "close"):
                stream.close()
            return got
        got = []
        with contextlib.suppress(RateLimitError):
            for chunk in stream:
                got.append(chunk)
        return got

    try:
        got = asyncio.run(consume_async(ask())) if "async" in source else consume(ask())
        gc.collect()
        record_abandoned_streams()
        assert got == read
        if "generator" in source and at == 0 and ending in ("close", "drop"):
            # A generator function's job starts at its first step: never started, no call.
            assert calls(registry, "openai", "gpt-4o") == {}
            assert active(registry, "ai_call") == 0
            return
        status = {"end": "success", "fail": "error"}.get(ending, "cancelled")
        if ending == "close" and source == "list":
            status = "cancelled"  # a list has no close: dropped, so abandoned
        assert calls(registry, "openai", "gpt-4o") == {status: 1}
        reports = [usage for _, usage in spec[: len(read)] if usage is not None]
        tokens = {
            kind: sample(
                registry, "ai_tokens_used_total", provider="openai", model="gpt-4o", token_type=kind
            )
            for kind in ("input", "output")
        }
        assert tokens == {
            "input": max((r[0] for r in reports), default=0),
            "output": max((r[1] for r in reports), default=0),
        }
        missing = sample(registry, "ai_usage_missing_total", provider="openai", model="gpt-4o")
        assert missing == (1 if not reports and status != "error" else 0)
        first_token = any(content for content, _ in spec[: len(read)])
        assert ttft(registry, "openai", "gpt-4o")[0] == (1 if first_token else None)
        assert active(registry, "ai_call") == 0
    finally:
        inst.close()


class _Unread:
    """httpx's Response before its body is read: ``content`` raises."""

    status_code = 200

    @property
    def content(self) -> bytes:
        raise RuntimeError("Attempted to access streaming response content, without read()")


class AsyncRaw:
    """Like anthropic's AsyncAPIResponse of a stream: ``await parse()``, cached."""

    def __init__(self, body: Any) -> None:
        self.http_response = _Unread()
        self._body = body
        self.parsed = 0

    async def parse(self) -> Any:
        self.parsed += 1
        return self._body


class Unwrappable:
    """An iterator whose step cannot even be looked up: wrapping it fails."""

    def __iter__(self) -> Unwrappable:
        return self

    @property
    def __next__(self) -> Any:
        raise RuntimeError("no step")


def test_an_async_raw_stream_read_through_a_cached_parse_counts_once(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    chunks = [as_object(c) for c in openai_chat_chunks(prompt=5, completion=3)]
    raw = AsyncRaw(FakeAsyncStream(chunks))

    @inst.track_ai_call("openai", "gpt-4o")
    async def ask() -> AsyncRaw:
        return raw

    async def read() -> list[Any]:
        handed = await ask()
        stream = await handed.parse()
        assert await handed.parse() is stream
        return [c async for c in stream]

    assert asyncio.run(read()) == chunks
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert token_counts(registry, "openai", "gpt-4o") == {"input": 5, "output": 3}
    assert active(registry, "ai_call") == 0


@pytest.mark.parametrize("parse", ["sync", "async"])
def test_a_raw_body_that_cannot_be_wrapped_is_handed_back_and_the_call_ends(
    parse: str, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Fault injection: the parsed stream breaks our wrapping. The caller gets the body as
    the SDK gave it, and the call ends once (not left open for ever)."""
    body = Unwrappable()

    class SyncRaw:
        http_response = SimpleNamespace(status_code=200)

        def parse(self) -> Any:
            return body

    @inst.track_ai_call("openai", "gpt-4o")
    async def ask() -> Any:
        return SyncRaw() if parse == "sync" else AsyncRaw(body)

    async def read() -> Any:
        handed = await ask()
        parsed = handed.parse()
        return await parsed if inspect.isawaitable(parsed) else parsed

    assert asyncio.run(read()) is body
    gc.collect()
    record_abandoned_streams()
    assert calls(registry, "openai", "gpt-4o") == {"success": 1}
    assert active(registry, "ai_call") == 0


def test_record_ai_api_call_from_many_threads_loses_nothing_and_stays_bounded() -> None:
    import threading

    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, max_models=5)
    try:

        def work(offset: int) -> None:
            for i in range(200):
                inst.record_ai_api_call("p", f"m{(i + offset) % 20}", input_tokens=2)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen = _models(registry, "p")
        assert len(set(seen) - {OTHER_MODEL}) == 5 and OTHER_MODEL in seen
        assert sum(seen.values()) == 1600
        tokens = sum(
            sample(registry, "ai_tokens_used_total", provider="p", model=m, token_type="input") or 0
            for m in seen
        )
        assert tokens == 3200
    finally:
        inst.close()


@sdk
def test_concurrent_async_raw_streams_each_count_once(
    llm_server: LocalLLMServer, inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Eight AsyncAnthropic raw streams and eight streaming responses at once, each parsed
    once or twice: every token and first token counted once."""
    client = anthropic_client(Ctx(llm_server, inst, require_sdk("anthropic")), asynchronous=True)

    @inst.track_ai_call("anthropic", CLAUDE)
    async def ask() -> Any:
        return await client.messages.with_raw_response.create(**CLAUDE_ARGS, stream=True)

    @inst.track_ai_call("anthropic", CLAUDE)
    def open_response() -> Any:
        return client.messages.with_streaming_response.create(**CLAUDE_ARGS, stream=True)

    async def raw(twice: bool) -> int:
        response = await ask()
        if twice:
            await response.parse()
        return await adrain(await response.parse())

    async def streaming() -> int:
        async with open_response() as response:
            return await adrain(await response.parse())

    async def all_at_once() -> list[int]:
        jobs = [raw(n % 2 == 0) for n in range(8)] + [streaming() for _ in range(8)]
        return list(await asyncio.gather(*jobs))

    assert asyncio.run(all_at_once()) == [LIMIT + 5] * 16
    expect = usage_of("anthropic", reply=LIMIT, calls=16)
    check(registry, Case("", "", "", "anthropic", CLAUDE, streamed(expect), drain))


# -- a with-block's stream whose proxy is dropped while its helper still reads ----------------


class _HelperStream:
    """A stream helper as the SDKs have: iterating yields chunks, ``get_final()`` reads to
    the end itself and keeps the accumulated response (its snapshot); ``meanwhile`` runs
    while it reads (what a scrape or another call in the process does at that moment)."""

    def __init__(self, meanwhile: Callable[[], object]) -> None:
        self.left = 3
        self.snapshot: dict[str, Any] | None = None
        self.meanwhile = meanwhile

    @property
    def current_completion_snapshot(self) -> dict[str, Any] | None:
        return self.snapshot

    def __iter__(self) -> _HelperStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.left:
            raise StopIteration
        self.left -= 1
        return {"model": "gpt-4o", "choices": [{"delta": {"content": "x"}}]}

    def get_final(self) -> dict[str, Any]:
        self.meanwhile()
        for _ in self:
            pass
        self.snapshot = {"model": "gpt-4o", "usage": {"prompt_tokens": 13, "completion_tokens": 16}}
        return self.snapshot


@pytest.mark.parametrize("meanwhile", ["deferred work", "a scrape"])
def test_a_with_blocks_stream_read_by_its_helper_after_the_proxy_is_dropped_keeps_its_usage(
    meanwhile: str,
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry)
    try:
        run = record_abandoned_streams if meanwhile == "deferred work" else registry.collect
        stream = _HelperStream(lambda: list(run() or ()))
        with inst.track_ai_call("openai", "gpt-4o") as call:
            final = call.record_response(stream).get_final()  # the proxy is dropped at once
        assert final["usage"]["prompt_tokens"] == 13
        assert token_counts(registry, "openai", "gpt-4o") == {"input": 13, "output": 16}
        assert calls(registry, "openai", "gpt-4o") == {"success": 1}
        assert (
            registry.get_sample_value(
                "codomyrmex_ai_usage_missing_total", {"provider": "openai", "model": "gpt-4o"}
            )
            == 0
        )
    finally:
        inst.close()


# -- a second review of the streams (the sixth pass) ------------------------------------------


def _stops(registry: CollectorRegistry) -> float:
    return counted(
        registry, "ai_finish_reasons_total", provider="openai", model="m", finish_reason="stop"
    )


def test_a_stream_recorded_again_in_its_own_call_counts_once() -> None:
    """``call.record_response(s)`` of the proxy it gave out wrapped it a second time, and
    both proxies read every chunk: the tokens and the finish reason counted twice."""
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, push_mode="off")
    with inst.track_ai_call("openai", "m") as call:
        stream = call.record_response(
            iter([_chunk("x", None, rid="c1"), _chunk("x", (10, 5), rid="c1", finish="stop")])
        )
        again = call.record_response(stream)
        assert again is stream
        assert [c.get("id") for c in again] == ["c1", "c1"]
    assert token_counts(registry, "openai", "m") == {"input": 10, "output": 5}
    assert _stops(registry) == 1
    assert calls(registry, "openai", "m") == {"success": 1}
    inst.close()


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        # An id-less running total after the reports with an id: the same response.
        (
            [_chunk("x", (10, 2), rid="c1"), _chunk("x", (10, 5), rid=None)],
            {"input": 10, "output": 5},
        ),
        # Two responses by their ids: they add up.
        (
            [_chunk("x", (10, 5), rid="c1"), _chunk("x", (3, 1), rid="c2")],
            {"input": 13, "output": 6},
        ),
        # A whole response without an id, then another one's chunk: two responses.
        (
            [
                {
                    "choices": [{"message": {"content": "a"}}],
                    "usage": _chunk("x", (10, 5), rid=None)["usage"],
                },
                _chunk("x", (3, 1), rid="c2"),
            ],
            {"input": 13, "output": 6},
        ),
    ],
    ids=["id then id-less", "two ids", "whole id-less then an id"],
)
def test_running_totals_merge_and_responses_by_id_add_up(
    chunks: list[Any], expected: dict[str, float]
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, push_mode="off")
    with inst.track_ai_call("openai", "m") as call:
        for _ in call.record_response(iter(chunks)):
            pass
    assert token_counts(registry, "openai", "m") == expected
    inst.close()


def test_a_watched_stream_copies_and_pickles_as_the_stream_itself_does() -> None:
    """wrapt's proxy refused copy and pickle (NotImplementedError) where the stream allows
    them, or raises its own error: the proxy now does what the stream does, and the copy
    is the stream's own (read on its own, it is not the call's)."""
    import pickle

    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, push_mode="off")
    chunks = [_chunk("x", None, rid="c1"), _chunk("x", (10, 5), rid="c1", finish="stop")]

    @inst.track_ai_call("openai", "m")
    def listed() -> Any:
        return iter(chunks)

    @inst.track_ai_call("openai", "m")
    def generated() -> Any:
        return (c for c in chunks)

    watched = listed()
    assert list(copy.copy(watched)) == chunks == list(copy.copy(iter(chunks)))
    assert list(copy.deepcopy(watched)) == chunks
    assert list(pickle.loads(pickle.dumps(watched))) == chunks
    with pytest.raises(TypeError, match="generator"):
        pickle.dumps(c for c in chunks)  # the stream's own error...
    with pytest.raises(TypeError, match="generator"):
        pickle.dumps(generated())  # ... is the proxy's
    assert list(watched) == chunks  # and the call still reads its own chunks, once
    del watched
    gc.collect()
    record_abandoned_streams()
    assert token_counts(registry, "openai", "m") == {"input": 10, "output": 5}
    assert calls(registry, "openai", "m") == {"success": 1, "cancelled": 1}
    inst.close()
