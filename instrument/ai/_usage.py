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

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ._fields import READERS, Reader, attribute, learn, no_fields, read_field, reader_of

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
        return Usage(*add_tokens(tokens_of(self), tokens_of(other)))

    def latest(self, other: Usage) -> Usage:
        """Merge two usage reports of one stream (see :func:`latest_tokens`)."""
        later = tokens_of(other)
        merged = latest_tokens(tokens_of(self), later)
        return other if merged is later else Usage(*merged)


def tokens_of(usage: Usage) -> Tokens:
    """The counts of ``usage`` (or of anything with its fields) as Tokens."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read,
        usage.cache_creation,
        usage.reasoning,
    )


#: Token counts as the readers give them: Usage's fields in their order (input, output,
#: cache_read, cache_creation, reasoning), as a plain tuple. One is read for nearly every
#: response and chunk, and a Usage costs ten times a tuple to make; what the public API
#: gives back is a Usage (:func:`as_usage`).
Tokens = tuple[int, int, int, int, int]


def as_usage(tokens: Tokens | None) -> Usage | None:
    return None if tokens is None else Usage(*tokens)


def add_tokens(a: Tokens, b: Tokens) -> Tokens:
    """The counts of two calls (or responses) together."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])


def latest_tokens(earlier: Tokens, later: Tokens) -> Tokens:
    """Merge two usage reports of one stream.

    Every provider streams running totals (OpenAI and OpenAI Responses once at the end,
    Anthropic in message_start then message_delta, Gemini on each chunk), so the larger
    count of each field is the later one and reports are never added up; a field one
    chunk leaves out (Anthropic's message_delta carries only output) keeps its value.
    """
    if (
        later[0] >= earlier[0]
        and later[1] >= earlier[1]
        and later[2] >= earlier[2]
        and later[3] >= earlier[3]
        and later[4] >= earlier[4]
    ):
        return later  # the usual running total
    return (
        max(earlier[0], later[0]),
        max(earlier[1], later[1]),
        max(earlier[2], later[2]),
        max(earlier[3], later[3]),
        max(earlier[4], later[4]),
    )


USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage))


def checked_tokens(*counts: int) -> Tokens:
    """Token counts given by hand (in :class:`Usage`'s field order) as Tokens; a TypeError
    or ValueError naming the first that is not an int from 0 to 2**53, or details that
    exceed the total that includes them."""
    for name, count in zip(USAGE_FIELDS, counts, strict=True):
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"{name} must be an int, got {type(count).__name__}")
        if count < 0:
            raise ValueError(f"{name} must not be negative, got {count}")
        if count > MAX_TOKENS:
            raise ValueError(f"{name} must be at most 2**53 (a token count), got {count}")
    input_tokens, output_tokens, cache_read, cache_creation, reasoning = counts
    # The totals include their details; Anthropic's own input_tokens does not (it counts
    # only what follows the cache), so the likely mistake is passing that one.
    if cache_read + cache_creation > input_tokens:
        raise ValueError(
            f"cache_read + cache_creation ({cache_read} + {cache_creation}) "
            f"exceed input_tokens ({input_tokens}): input_tokens includes cached "
            "input; for Anthropic pass input_tokens + cache_read_input_tokens + "
            "cache_creation_input_tokens"
        )
    if reasoning > output_tokens:
        raise ValueError(
            f"reasoning ({reasoning}) exceeds output_tokens ({output_tokens}): "
            "output_tokens includes reasoning; pass their sum"
        )
    return (input_tokens, output_tokens, cache_read, cache_creation, reasoning)


class ExtractorFailed(Exception):
    """A ``usage=`` extractor raised; the text names it and the class of what it raised."""


def _count(container: Any, *names: str) -> int | None:
    """The first of ``names`` present in ``container`` as a token count, or None.

    None (not reported) is silent; a negative, fractional or huge number, a string or any
    other type is logged at debug level and skipped.
    """
    # The reader once, not per name (read_field would look it up each time).
    read = READERS.get(type(container)) or reader_of(container)
    for name in names:
        value = read(container, name)
        if value is not None:
            if type(value) is int and 0 <= value <= MAX_TOKENS:  # the usual case, inlined
                return value
            return _unusual_count(name, value)
    return None


def _unusual_count(name: str, value: Any) -> int | None:
    """A reported count that is not a plain int in range: an int subclass or a whole
    float is taken, anything else logged and skipped."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    logger.debug("instrument: malformed usage field %s=%r skipped", name, value)
    return None


def _nested(container: Any, parent: str, name: str) -> int | None:
    inner = read_field(container, parent)
    return None if inner is None else _count(inner, name)


def _usage(
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    reasoning: int | None = None,
) -> Tokens | None:
    if (
        input_tokens is None
        and output_tokens is None
        and cache_read is None
        and cache_creation is None
        and reasoning is None
    ):
        return None
    return (
        input_tokens or 0,
        output_tokens or 0,
        cache_read or 0,
        cache_creation or 0,
        reasoning or 0,
    )


def _first(*counts: int | None) -> int | None:
    """The first count reported: one quantity that several fields may carry."""
    for count in counts:
        if count is not None:
            return count
    return None


def _openai_chat(usage: Any, get: Reader) -> Any:
    """A chat usage block's counts, or ``_NOT_CHAT`` when neither of its two counts is
    there: the chat shape is tried first, and trying it is reading those two fields."""
    # The most common shape, read for every response and chunk: fields read with ``get``
    # (a C call for a dict) and the usual plain int checked inline, not a call per field.
    prompt = get(usage, "prompt_tokens")
    completion = get(usage, "completion_tokens")
    if prompt is None and completion is None:
        return _NOT_CHAT
    if prompt is not None and not (type(prompt) is int and 0 <= prompt <= MAX_TOKENS):
        prompt = _unusual_count("prompt_tokens", prompt)
    if completion is not None and not (type(completion) is int and 0 <= completion <= MAX_TOKENS):
        completion = _unusual_count("completion_tokens", completion)
    # prompt_tokens includes the cache, reads and writes alike (LiteLLM adds Anthropic's
    # cache fields into it); LiteLLM also repeats them beside prompt_tokens, Anthropic-named.
    details = get(usage, "prompt_tokens_details")
    cached = written = None
    if details is not None:
        read = READERS.get(type(details)) or reader_of(details)
        cached = read(details, "cached_tokens")
        if cached is not None and not (type(cached) is int and 0 <= cached <= MAX_TOKENS):
            cached = _unusual_count("cached_tokens", cached)
        written = read(details, "cache_write_tokens")
        if written is None:
            written = read(details, "cache_creation_tokens")
        if written is not None and not (type(written) is int and 0 <= written <= MAX_TOKENS):
            written = _unusual_count("cache_write_tokens", written)
    # The LiteLLM spellings only when the details did not say (read lazily).
    if cached is None:
        cached = _count(usage, "cache_read_input_tokens")
    if written is None:
        written = get(usage, "cache_creation_input_tokens")
        if written is not None and not (type(written) is int and 0 <= written <= MAX_TOKENS):
            written = _unusual_count("cache_creation_input_tokens", written)
    reasoning = get(usage, "completion_tokens_details")
    if reasoning is not None:
        read = READERS.get(type(reasoning)) or reader_of(reasoning)
        reasoning = read(reasoning, "reasoning_tokens")
        if reasoning is not None and not (type(reasoning) is int and 0 <= reasoning <= MAX_TOKENS):
            reasoning = _unusual_count("reasoning_tokens", reasoning)
    if prompt is None and completion is None:  # a chat block whose counts are all malformed
        return _usage(prompt, completion, cached, written, reasoning)
    return (prompt or 0, completion or 0, cached or 0, written or 0, reasoning or 0)


def _input_output(usage: Any) -> Tokens | None:
    """OpenAI Responses and Anthropic Messages: both say input_tokens/output_tokens."""
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_creation = _count(usage, "cache_creation_input_tokens")
    if cache_read is None and cache_creation is None:
        # OpenAI Responses (or Anthropic without caching, which reads the same): its
        # input_tokens includes the cache.
        details = read_field(usage, "input_tokens_details")
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


def _gemini(meta: Any) -> Tokens | None:
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


def _cohere(usage: Any) -> Tokens | None:
    # billed_units are what is billed and priced; tokens also count the prompt template
    # Cohere wraps around the messages, so they are the fallback only.
    billed = read_field(usage, "billed_units")
    tokens = read_field(usage, "tokens")
    input_tokens, output_tokens = (
        _first(
            None if billed is None else _count(billed, name),
            None if tokens is None else _count(tokens, name),
        )
        for name in ("input_tokens", "output_tokens")
    )
    return _usage(input_tokens, output_tokens, cache_read=_count(usage, "cached_tokens"))


#: What ``_openai_chat`` gives for a block that is not a chat block.
_NOT_CHAT: Any = object()


def _read_usage(usage: Any) -> Tokens | None:
    """Pick the reader by the usage block's own fields: which fields an instance has is
    its own (a dict's keys, a model's extra fields), never its type's, so this is read
    for every block; the chat shape, the usual one, is tried first by reading it."""
    found = _openai_chat(usage, READERS.get(type(usage)) or reader_of(usage))
    return _other_usage(usage) if found is _NOT_CHAT else found


def _other_usage(usage: Any) -> Tokens | None:
    """A usage block without chat counts, by its fields."""
    if (
        read_field(usage, "input_tokens") is not None
        or read_field(usage, "output_tokens") is not None
    ):
        return _input_output(usage)
    if read_field(usage, "cache_read_input_tokens") is not None:
        return _input_output(usage)
    if (
        read_field(usage, "prompt_token_count") is not None
        or read_field(usage, "promptTokenCount") is not None
        or read_field(usage, "candidates_token_count") is not None
        or read_field(usage, "candidatesTokenCount") is not None
    ):
        return _gemini(usage)
    if read_field(usage, "tokens") is not None or read_field(usage, "billed_units") is not None:
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
    return as_usage(read_tokens(response))


def read_tokens(response: Any) -> Tokens | None:
    """:func:`extract_usage`'s counts, as the tracker reads them (Tokens)."""
    # Every response and chunk comes through here: its type's reader, learnt once.
    return (USAGE_READERS.get(type(response)) or usage_reader(response))(response)


def usage_reader(response: Any) -> Callable[[Any], Tokens | None]:
    """What reads the usage of responses of ``response``'s type (``read_tokens`` for
    them, without its call): learnt once per type."""
    return learn(USAGE_READERS, response, _no_usage, _usage_of_dict, _usage_of_object)


def _usage_of_dict(response: dict[Any, Any]) -> Tokens | None:
    """A dict response: a dict's get never raises, and its usage block is a dict too."""
    usage = response.get("usage", _ABSENT)
    if type(usage) is dict:
        found = _openai_chat(usage, dict.get)
        return _other_usage(usage) if found is _NOT_CHAT else found
    return _usage_in(response, dict.get, usage)


def _usage_of_object(response: Any) -> Tokens | None:
    """An SDK object or another mapping: its fields read through the guarded reader."""
    get = READERS.get(type(response)) or reader_of(response)
    return _usage_in(response, get, _usage_field(response, get))


def _no_usage(response: Any) -> None:
    """None, str, bytes: nothing to read."""
    return None


#: How the usage of each response type is read (``learn``): the reader a type needs is
#: its type's alone (a dict, another mapping or object, nothing); which fields an instance
#: has is read in every response.
USAGE_READERS: dict[type, Callable[[Any], Tokens | None]] = {}


def _usage_in(response: Any, get: Reader, usage: Any) -> Tokens | None:
    """The usage of ``response`` whose ``usage`` field is ``usage`` (_ABSENT if none)."""
    if usage is None:
        # A shape whose usage is its own field, empty in this one: an OpenAI-style
        # stream's chunk before the last. Nothing else in it holds usage.
        return None
    if usage is not _ABSENT and not callable(usage):
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
            usage = read_field(inner, "usage")
            if usage is not None and not callable(usage):
                return _read_usage(usage)
    return None


#: What ``_usage_field`` gives for a response with no ``usage`` field at all.
_ABSENT: Any = object()


def _usage_field(response: Any, get: Reader) -> Any:
    """The ``usage`` field of ``response`` (None when it is there but empty), or _ABSENT."""
    try:
        if get is attribute:
            return getattr(response, "usage", _ABSENT)
        return response.get("usage", _ABSENT)  # a dict or another mapping
    except Exception:  # a property of a foreign object may raise anything
        return _ABSENT


def response_model(response: Any) -> str | None:
    """The model name a response (or stream chunk) reports, or None."""
    get = READERS.get(type(response)) or reader_of(response)
    if get is no_fields:
        return None
    for name in ("model", "model_version", "modelVersion"):
        value = get(response, name)
        if isinstance(value, str) and value:
            return value
    for holder in _HOLDERS:
        inner = get(response, holder)
        if inner is not None and not isinstance(inner, str | bytes):
            value = read_field(inner, "model")
            if isinstance(value, str) and value:
                return value
    return None


def usage_from(value: Any) -> Usage | None:
    """A custom extractor's answer as a Usage: a Usage, a mapping with Usage's field
    names (``input_tokens``, ``output_tokens``, ``cache_read``, ``cache_creation``,
    ``reasoning``), or None. Anything else is logged at debug level and skipped."""
    return value if isinstance(value, Usage) else as_usage(tokens_from(value))


def tokens_from(value: Any) -> Tokens | None:
    """:func:`usage_from`'s counts, as the tracker reads them (Tokens)."""
    if value is None:
        return None
    if isinstance(value, Usage):
        return tokens_of(value)
    if isinstance(value, Mapping):
        unknown = set(value) - set(USAGE_FIELDS)
        if unknown:
            logger.debug("instrument: usage keys %s not understood; skipped", sorted(unknown))
            return None
        return _usage(*(_count(value, name) for name in USAGE_FIELDS))
    logger.debug("instrument: usage extractor returned %r, not a Usage or mapping", value)
    return None
