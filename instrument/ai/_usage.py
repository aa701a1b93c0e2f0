"""Token usage read from LLM responses by their shape, with no SDK imported.

Five shapes are known, as SDK objects (attributes) or plain dicts (keys) alike:

- OpenAI Chat Completions (and what LiteLLM and Mistral return): ``usage.prompt_tokens`` /
  ``completion_tokens``, with ``prompt_tokens_details.cached_tokens`` (or LiteLLM's
  ``cache_read_input_tokens``), the cache writes in ``prompt_tokens_details.cache_write_tokens``
  (or ``cache_creation_tokens``, or LiteLLM's ``cache_creation_input_tokens``), and
  ``completion_tokens_details.reasoning_tokens``. ``prompt_tokens`` includes the cache.
- OpenAI Responses: ``usage.input_tokens`` / ``output_tokens``, with
  ``input_tokens_details.cached_tokens`` / ``cache_write_tokens`` and
  ``output_tokens_details.reasoning_tokens``.
- Anthropic Messages: ``usage.input_tokens`` excludes the cache, so the input is
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
- Gemini: ``usage_metadata.prompt_token_count`` (cache included), output
  ``candidates_token_count + thoughts_token_count``; REST's camelCase keys too.
- Cohere v2: ``usage.billed_units.input_tokens`` / ``output_tokens`` (what is billed),
  else the same fields of ``usage.tokens`` (which add Cohere's prompt template), and
  ``usage.cached_tokens``.

The usage block sits on the response (``usage``), or inside what carries the response: a
stream event's ``message`` (Anthropic), ``response`` (OpenAI Responses), ``chunk`` (the
OpenAI stream helper), ``data`` (Mistral) or ``delta`` (Cohere).

The shape picks the reader, never the provider name, so an OpenAI-compatible endpoint
tracked under another provider still counts. Counts follow the OpenTelemetry GenAI
conventions: input includes cached input and output includes reasoning, so adding input
and output never counts a token twice. A missing or malformed count is skipped (logged at
debug level), never guessed; the tracker counts and reports a call that ends without any.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "MAX_TOKENS",
    "USAGE_FIELDS",
    "Usage",
    "carries_content",
    "extract_usage",
    "response_body",
    "response_model",
    "stream_finished",
    "stream_snapshot",
    "usage_from",
]

logger = logging.getLogger("instrument")

#: The largest token count taken as real: counters are floats, exact up to 2**53, and a
#: larger count is a malformed field, not a call.
MAX_TOKENS = 2**53


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call. ``input_tokens`` includes ``cache_read`` and
    ``cache_creation``; ``output_tokens`` includes ``reasoning``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read + other.cache_read,
            self.cache_creation + other.cache_creation,
            self.reasoning + other.reasoning,
        )

    def latest(self, other: Usage) -> Usage:
        """Merge two usage reports of one stream.

        Every provider streams running totals (OpenAI and OpenAI Responses once at the end,
        Anthropic in message_start then message_delta, Gemini on each chunk), so the larger
        count of each field is the later one and reports are never added up; a field one
        chunk leaves out (Anthropic's message_delta carries only output) keeps its value.
        """
        if (
            other.input_tokens >= self.input_tokens
            and other.output_tokens >= self.output_tokens
            and other.cache_read >= self.cache_read
            and other.cache_creation >= self.cache_creation
            and other.reasoning >= self.reasoning
        ):
            return other  # the usual running total: no new object for every chunk
        return Usage(
            max(self.input_tokens, other.input_tokens),
            max(self.output_tokens, other.output_tokens),
            max(self.cache_read, other.cache_read),
            max(self.cache_creation, other.cache_creation),
            max(self.reasoning, other.reasoning),
        )


USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage))


def _attribute(obj: Any, name: str) -> Any:
    """``obj.name``, None when absent."""
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of a foreign object may raise anything
        return None


def _key(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping other than a dict, None when absent."""
    return obj.get(name)


def _nothing(obj: Any, name: str) -> None:
    """None, str and bytes: no fields to read."""
    return None


_Reader = Callable[[Any, str], Any]

# How to read the fields of each type, remembered: the Mapping ABC check costs more than
# a read, and a stream reads several fields of every chunk, all of the same few types.
_readers: dict[type, _Reader] = {
    dict: dict.get,
    str: _nothing,
    bytes: _nothing,
    type(None): _nothing,
}


def _reader(obj: Any) -> _Reader:
    """How to read the fields of ``obj``: by key, by attribute, or not at all."""
    kind = type(obj)
    read = _readers.get(kind)
    if read is None:
        if isinstance(obj, str | bytes):
            read = _nothing
        elif isinstance(obj, Mapping):
            read = _key
        else:
            read = _attribute
        _readers[kind] = read
    return read


def _get(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; None when absent."""
    read = _readers.get(type(obj)) or _reader(obj)
    if read is not _attribute:
        return read(obj, name)
    try:  # inlined: the common case, one call per field rather than two
        return getattr(obj, name, None)
    except Exception:  # a property of a foreign object may raise anything
        return None


def _count(container: Any, *names: str) -> int | None:
    """The first of ``names`` present in ``container`` as a token count, or None.

    None (not reported) is silent; a negative, fractional or huge number, a string or any
    other type is logged at debug level and skipped.
    """
    for name in names:
        value = _get(container, name)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
            return value
        if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKENS:
            return int(value)
        logger.debug("instrument: malformed usage field %s=%r skipped", name, value)
        return None
    return None


def _nested(container: Any, parent: str, name: str) -> int | None:
    inner = _get(container, parent)
    return None if inner is None else _count(inner, name)


def _usage(
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    reasoning: int | None = None,
) -> Usage | None:
    if (
        input_tokens is None
        and output_tokens is None
        and cache_read is None
        and cache_creation is None
        and reasoning is None
    ):
        return None
    return Usage(
        input_tokens or 0, output_tokens or 0, cache_read or 0, cache_creation or 0, reasoning or 0
    )


def _first(*counts: int | None) -> int | None:
    """The first count reported: one quantity that several fields may carry."""
    for count in counts:
        if count is not None:
            return count
    return None


def _openai_chat(usage: Any) -> Usage | None:
    # prompt_tokens includes the cache, reads and writes alike (LiteLLM adds Anthropic's
    # cache fields into it); LiteLLM also repeats them beside prompt_tokens, Anthropic-named.
    details = _get(usage, "prompt_tokens_details")
    cached = written = None
    if details is not None:
        cached = _count(details, "cached_tokens")
        written = _count(details, "cache_write_tokens", "cache_creation_tokens")
    return _usage(
        _count(usage, "prompt_tokens"),
        _count(usage, "completion_tokens"),
        cache_read=_first(cached, _count(usage, "cache_read_input_tokens")),
        cache_creation=_first(written, _count(usage, "cache_creation_input_tokens")),
        reasoning=_nested(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def _input_output(usage: Any) -> Usage | None:
    """OpenAI Responses and Anthropic Messages: both say input_tokens/output_tokens."""
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_creation = _count(usage, "cache_creation_input_tokens")
    if cache_read is None and cache_creation is None:
        # OpenAI Responses (or Anthropic without caching, which reads the same): its
        # input_tokens includes the cache.
        details = _get(usage, "input_tokens_details")
        return _usage(
            _count(usage, "input_tokens"),
            _count(usage, "output_tokens"),
            cache_read=None if details is None else _count(details, "cached_tokens"),
            cache_creation=None if details is None else _count(details, "cache_write_tokens"),
            reasoning=_nested(usage, "output_tokens_details", "reasoning_tokens"),
        )
    # Anthropic: input_tokens counts only what came after the last cache breakpoint.
    uncached = _count(usage, "input_tokens")
    total_input = (uncached or 0) + (cache_read or 0) + (cache_creation or 0)
    return _usage(
        total_input,
        _count(usage, "output_tokens"),
        cache_read=cache_read,
        cache_creation=cache_creation,
    )


def _gemini(meta: Any) -> Usage | None:
    prompt = _count(meta, "prompt_token_count", "promptTokenCount")
    # Tool-use prompt tokens are billed as input and are part of total_token_count.
    tool_prompt = _count(meta, "tool_use_prompt_token_count", "toolUsePromptTokenCount")
    candidates = _count(meta, "candidates_token_count", "candidatesTokenCount")
    thoughts = _count(meta, "thoughts_token_count", "thoughtsTokenCount")
    input_tokens = (
        None if prompt is None and tool_prompt is None else (prompt or 0) + (tool_prompt or 0)
    )
    output_tokens = (
        None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    )
    return _usage(
        input_tokens,
        output_tokens,
        cache_read=_count(meta, "cached_content_token_count", "cachedContentTokenCount"),
        reasoning=thoughts,
    )


def _cohere(usage: Any) -> Usage | None:
    # billed_units are what is billed and priced; tokens also count the prompt template
    # Cohere wraps around the messages, so they are the fallback only.
    billed = _get(usage, "billed_units")
    tokens = _get(usage, "tokens")
    input_tokens, output_tokens = (
        _first(
            None if billed is None else _count(billed, name),
            None if tokens is None else _count(tokens, name),
        )
        for name in ("input_tokens", "output_tokens")
    )
    return _usage(input_tokens, output_tokens, cache_read=_count(usage, "cached_tokens"))


def _read_usage(usage: Any) -> Usage | None:
    """Pick the reader by the usage block's own fields."""
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        return _openai_chat(usage)
    if _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:
        return _input_output(usage)
    if _get(usage, "cache_read_input_tokens") is not None:
        return _input_output(usage)
    if (
        _get(usage, "prompt_token_count") is not None
        or _get(usage, "promptTokenCount") is not None
        or _get(usage, "candidates_token_count") is not None
        or _get(usage, "candidatesTokenCount") is not None
    ):
        return _gemini(usage)
    if _get(usage, "tokens") is not None or _get(usage, "billed_units") is not None:
        return _cohere(usage)
    logger.debug("instrument: usage block of unknown shape skipped: %s", type(usage).__name__)
    return None


# What carries a response inside a stream event, in the order they are tried.
_HOLDERS = ("message", "response", "chunk", "data", "delta")


def extract_usage(response: Any) -> Usage | None:
    """The token usage a response (or stream chunk) carries, or None.

    >>> extract_usage({"usage": {"prompt_tokens": 12, "completion_tokens": 5}})
    Usage(input_tokens=12, output_tokens=5, cache_read=0, cache_creation=0, reasoning=0)
    """
    # One reader for the response's fields: every chunk of a stream comes through here.
    get = _readers.get(type(response)) or _reader(response)
    if get is _nothing:
        return None
    usage = get(response, "usage")
    if usage is not None and not callable(usage):
        return _read_usage(usage)
    meta = get(response, "usage_metadata")
    if meta is None:
        meta = get(response, "usageMetadata")
    if meta is not None:
        return _gemini(meta)
    # Anthropic's message_start event holds the usage in .message, OpenAI Responses'
    # response.completed event in .response, the OpenAI stream helper's chunk event in
    # .chunk, Mistral's stream events in .data, Cohere's message-end in .delta.
    for holder in _HOLDERS:
        inner = get(response, holder)
        if inner is not None and not isinstance(inner, str | bytes):
            usage = _get(inner, "usage")
            if usage is not None and not callable(usage):
                return _read_usage(usage)
    return None


def response_model(response: Any) -> str | None:
    """The model name a response (or stream chunk) reports, or None."""
    get = _readers.get(type(response)) or _reader(response)
    if get is _nothing:
        return None
    for name in ("model", "model_version", "modelVersion"):
        value = get(response, name)
        if isinstance(value, str) and value:
            return value
    for holder in _HOLDERS:
        inner = get(response, holder)
        if inner is not None and not isinstance(inner, str | bytes):
            value = _get(inner, "model")
            if isinstance(value, str) and value:
                return value
    return None


def usage_from(value: Any) -> Usage | None:
    """A custom extractor's answer as a Usage: a Usage, a mapping with Usage's field
    names (``input_tokens``, ``output_tokens``, ``cache_read``, ``cache_creation``,
    ``reasoning``), or None. Anything else is logged at debug level and skipped."""
    if value is None or isinstance(value, Usage):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(USAGE_FIELDS)
        if unknown:
            logger.debug("instrument: usage keys %s not understood; skipped", sorted(unknown))
            return None
        return _usage(*(_count(value, name) for name in USAGE_FIELDS))
    logger.debug("instrument: usage extractor returned %r, not a Usage or mapping", value)
    return None


# -- generated content, for the time to first token ----------------------------------------------

# Fields that hold generated text: OpenAI Chat deltas (content, refusal, and the reasoning of
# OpenAI-compatible servers), Anthropic deltas (text, thinking, partial_json of a tool call),
# Gemini parts (text), Cohere deltas (text, thinking, tool_plan).
_TEXT_FIELDS = (
    "content",
    "text",
    "thinking",
    "partial_json",
    "reasoning_content",
    "reasoning",
    "refusal",
    "tool_plan",
)
# Fields whose mere presence is generated content: tool calls, code, audio, images.
_PRESENT_FIELDS = (
    "tool_calls",
    "function_call",
    "functionCall",
    "executable_code",
    "executableCode",
    "inline_data",
    "inlineData",
    "audio",
)
# Fields that lead to the above: a Chat choice's delta, a Cohere delta's message, a Gemini
# candidate's content and its parts.
_NESTED_FIELDS = ("delta", "message", "parts")
# Top-level fields that say a chunk has a known envelope: without content in it, such a
# chunk is bookkeeping (a role, a start or stop event, a usage report), not a token.
_ENVELOPE_FIELDS = (
    "choices",
    "candidates",
    "type",
    "delta",
    "usage",
    "usage_metadata",
    "usageMetadata",
    "message",
    "response",
)
_MAX_DEPTH = 6


def _present(value: Any) -> bool:
    """Set to something: SDK models fill absent fields with None, or a falsy sentinel
    (Mistral's ``Unset()``)."""
    if value is None:
        return False
    try:
        return bool(value)
    except Exception:  # a foreign object without a truth value is still there
        return True


def _generated(value: Any, depth: int = 0) -> bool:
    if value is None:
        return False
    if isinstance(value, str | bytes):
        return bool(value)
    if depth > _MAX_DEPTH or isinstance(value, int | float):
        return False
    if isinstance(value, list | tuple):
        return any(_generated(item, depth + 1) for item in value)
    for name in _TEXT_FIELDS:
        if _generated(_get(value, name), depth + 1):
            return True
    for name in _PRESENT_FIELDS:
        if _present(_get(value, name)):
            return True
    return any(_generated(_get(value, name), depth + 1) for name in _NESTED_FIELDS)


def carries_content(chunk: Any) -> bool:
    """Whether a stream chunk carries generated content: a text, reasoning or tool-call delta.

    By shape: an OpenAI Chat chunk's ``choices[].delta``, a Gemini chunk's candidate parts,
    an event's ``delta`` (Anthropic, OpenAI Responses, Cohere), the chunk inside the OpenAI
    stream helper's and Mistral's events. A role-only first chunk, Anthropic's
    ``message_start`` and OpenAI Responses' ``response.created`` carry none. A non-empty
    string (a ``text_stream``) is content; so is a chunk of no known shape, which cannot
    be told apart from content.

    >>> carries_content({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    False
    """
    if chunk is None:
        return False
    if isinstance(chunk, str | bytes):
        return bool(chunk)
    get = _readers.get(type(chunk)) or _reader(chunk)
    known = False
    for name in ("choices", "candidates"):
        found = get(chunk, name)
        if found is not None:
            if _generated(found):
                return True
            known = True
    if known:
        return False
    for holder in ("chunk", "data"):
        inner = get(chunk, holder)
        if inner is not None and not isinstance(inner, str | bytes | list | tuple):
            return carries_content(inner)
    delta = get(chunk, "delta")
    if delta is not None:
        return _generated(delta)
    if isinstance(get(chunk, "type"), str):
        # An event without a delta: the stream helpers' own text events carry the text
        # itself (Anthropic's "text", "thinking", "input_json"); the rest are bookkeeping.
        return any(_generated(get(chunk, name)) for name in ("text", "thinking", "partial_json"))
    return not any(get(chunk, name) is not None for name in _ENVELOPE_FIELDS)


# -- the response a stream helper accumulates ---------------------------------------------------

_snapshot_names: dict[type, tuple[str, ...]] = {}


def stream_snapshot(stream: Any) -> Any:
    """The response a stream helper has accumulated so far, or None.

    The SDKs' stream helpers keep it as a ``current_<kind>_snapshot`` property (Anthropic's
    ``MessageStream.current_message_snapshot``, OpenAI's ``current_completion_snapshot``);
    it carries the usage when a caller reads the stream another way (``text_stream``).
    """
    kind = type(stream)
    names = _snapshot_names.get(kind)
    if names is None:
        names = _snapshot_names[kind] = tuple(
            name for name in dir(kind) if name.startswith("current_") and name.endswith("_snapshot")
        )
    for name in names:
        value = _attribute(stream, name)  # the property raises until the first event
        if value is not None:
            return value
    return None


def stream_finished(snapshot: Any) -> bool:
    """Whether an accumulated response says the model finished: Anthropic's
    ``stop_reason``, a Chat choice's ``finish_reason``, a Responses ``status`` of
    "completed"."""
    if _get(snapshot, "stop_reason") is not None:
        return True
    if _get(snapshot, "status") == "completed":
        return True
    choices = _get(snapshot, "choices")
    if isinstance(choices, list | tuple) and choices:
        return _get(choices[0], "finish_reason") is not None
    return False


# -- raw HTTP responses ----------------------------------------------------------------------------


def response_body(response: Any) -> Any:
    """The parsed body of a raw HTTP response wrapper, or None.

    The SDKs' ``with_raw_response`` calls return an object with ``http_response`` and a
    ``parse()`` that gives the usual response (or stream) and caches it, so reading it
    here changes nothing the caller gets. An ``async def parse()`` cannot run here: the
    body, when it was already read, is parsed as the JSON it is instead.
    """
    parse = getattr(type(response), "parse", None)  # on the class: cheap for every result
    if parse is None or not callable(parse) or isinstance(response, type):
        return None
    http_response = _attribute(response, "http_response")
    if http_response is None:
        return None
    if inspect.iscoroutinefunction(parse):
        content = _attribute(http_response, "content")  # raises while the body is unread
        if not isinstance(content, bytes) or not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            return None
    return response.parse()
