"""Why a response ended and how many tools it asked for, read by shape with no SDK imported.

The shapes, as SDK objects (attributes) or plain dicts (keys) alike:

- OpenAI Chat Completions (and LiteLLM, Mistral, whose stream events hold the chunk in
  ``data``): ``choices[].finish_reason``; tool calls in ``choices[].message.tool_calls`` (a
  legacy ``function_call`` is one), in a stream each ``choices[].delta.tool_calls`` entry
  that opens a call (it carries the call's ``id``; later deltas of it carry arguments).
- OpenAI Responses: a Response (``object: "response"``, alone or in a ``response.*``
  event's ``response``) ends with ``incomplete_details.reason`` when incomplete, else its
  ``status``; each ``output`` item of type ``function_call`` is a tool call.
- Anthropic Messages: a Message's ``stop_reason`` and its ``tool_use`` content blocks; in
  a stream, ``message_delta``'s ``delta.stop_reason`` and each ``content_block_start`` of a
  ``tool_use`` block.
- Gemini: ``candidates[].finish_reason`` (an enum in the SDK; REST's ``finishReason``) and
  the ``function_call`` parts of ``candidates[].content.parts``.
- Cohere v2: the response's ``finish_reason`` and ``message.tool_calls``; in a stream,
  ``message-end``'s ``delta.finish_reason`` and each ``tool-call-start`` event.

Reasons are lower-cased (``STOP`` and ``stop`` are one series). Rate-limit headroom comes
from the headers of what carries them (:func:`headers_of`). Nothing here raises: what
cannot be read is absent.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any

from ._fields import READERS, attribute, no_fields, read_field, reader_of

#: The longest finish reason kept as it is: a label value from a foreign server is bounded.
_MAX_REASON = 64


class Outcome:
    """The finish reasons (one per choice or candidate) and tool calls of responses.

    A plain class, not a frozen dataclass: one is made for nearly every response, and a
    frozen one's construction costs several times more."""

    __slots__ = ("finish_reasons", "tool_calls")

    def __init__(self, finish_reasons: tuple[str, ...] = (), tool_calls: int = 0) -> None:
        self.finish_reasons = finish_reasons
        self.tool_calls = tool_calls

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            self.finish_reasons + other.finish_reasons, self.tool_calls + other.tool_calls
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Outcome)
            and self.finish_reasons == other.finish_reasons
            and self.tool_calls == other.tool_calls
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Outcome({self.finish_reasons!r}, {self.tool_calls!r})"


# Reasons as sent mapped to their label: a few distinct ones, seen on every response.
_REASONS: dict[str, str] = {}
_MAX_REMEMBERED = 256


def _reason(value: Any) -> str | None:
    if type(value) is str:  # the usual case: remembered
        found = _REASONS.get(value)
        if found is not None:
            return found
    elif isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str) or not value:
        return None
    reason = value.lower()
    if len(reason) > _MAX_REASON or not reason.isascii() or not reason.isprintable():
        reason = "other"  # not a provider's reason: keep the label set bounded and encodable
    if len(_REASONS) < _MAX_REMEMBERED and type(value) is str:
        _REASONS[value] = reason
    return reason


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _count(value: Any) -> int:
    """How many items a list field holds (a tool-call list), 0 for anything else."""
    return len(value) if isinstance(value, list | tuple) else 0


#: The outcome of one choice's reason and no tool call, by reason: the usual response's,
#: shared (an Outcome is never changed), so reading one makes no object.
_SINGLE: dict[str, Outcome] = {}


def _outcome(reasons: list[str], tools: int) -> Outcome | None:
    if not tools and len(reasons) == 1:
        reason = reasons[0]
        found = _SINGLE.get(reason)
        if found is None:
            found = Outcome((reason,))
            if len(_SINGLE) < _MAX_REMEMBERED:
                _SINGLE[reason] = found
        return found
    return Outcome(tuple(reasons), tools) if reasons or tools else None


def _choices(choices: list[Any] | tuple[Any, ...]) -> tuple[Outcome | None, bool]:
    """Chat Completions choices: a response's (``message``) or a chunk's (``delta``)."""
    reasons: list[str] = []
    tools = 0
    whole = False
    for choice in choices:
        # One reader per choice and per message: each reads several fields.
        get = READERS.get(type(choice)) or reader_of(choice)
        reason = _reason(get(choice, "finish_reason"))
        if reason is not None:
            reasons.append(reason)
        message = get(choice, "message")
        if message is not None:
            whole = True
            read = READERS.get(type(message)) or reader_of(message)
            tools += _count(read(message, "tool_calls"))
            if read(message, "function_call") is not None:
                tools += 1
            continue
        delta = get(choice, "delta")
        if delta is not None:
            for call in _items(read_field(delta, "tool_calls")):
                if isinstance(read_field(call, "id"), str) and read_field(call, "id"):
                    tools += 1
            if read_field(read_field(delta, "function_call"), "name"):
                tools += 1
    return _outcome(reasons, tools), whole


def _response(response: Any) -> Outcome | None:
    """An OpenAI Response: only once it ended (an in-progress one says nothing yet)."""
    status = read_field(response, "status")
    if status not in ("completed", "incomplete", "failed", "cancelled"):
        return None
    reason = _reason(read_field(read_field(response, "incomplete_details"), "reason"))
    tools = sum(
        1 for item in _items(read_field(response, "output"))
        if read_field(item, "type") == "function_call"
    )  # fmt: skip
    return Outcome((reason or _reason(status) or "other",), tools)


def _candidates(candidates: list[Any]) -> Outcome | None:
    reasons: list[str] = []
    tools = 0
    for candidate in candidates:
        reason = _reason(read_field(candidate, "finish_reason"))
        if reason is None:
            reason = _reason(read_field(candidate, "finishReason"))
        if reason is not None and reason != "finish_reason_unspecified":
            reasons.append(reason)
        for part in _items(read_field(read_field(candidate, "content"), "parts")):
            if (
                read_field(part, "function_call") is not None
                or read_field(part, "functionCall") is not None
            ):
                tools += 1
    return _outcome(reasons, tools)


def extract_outcome(response: Any) -> tuple[Outcome | None, bool]:
    """The outcome a response (or stream chunk) reports, and whether it is a whole
    response (which supersedes the chunks of its own stream) rather than a chunk."""
    get = READERS.get(type(response)) or reader_of(response)
    if get is no_fields:
        return None, False
    choices = get(response, "choices")
    if isinstance(choices, list | tuple):
        return _choices(choices)
    kind = get(response, "type")
    if kind == "message":  # an Anthropic Message
        tools = sum(
            1 for block in _items(get(response, "content"))
            if read_field(block, "type") == "tool_use"
        )  # fmt: skip
        reason = _reason(get(response, "stop_reason"))
        return _outcome([] if reason is None else [reason], tools), True
    if get(response, "object") == "response":
        return _response(response), True
    candidates = get(response, "candidates")
    if isinstance(candidates, list | tuple):
        return _candidates(list(candidates)), False
    if isinstance(kind, str):
        return _event(response, kind)
    reason = _reason(get(response, "finish_reason"))
    if reason is not None:  # Cohere v2's response
        tools = len(_items(read_field(get(response, "message"), "tool_calls")))
        return Outcome((reason,), tools), True
    # What carries a response: Mistral's stream event (``data``), the OpenAI stream
    # helper's chunk event (``chunk``).
    for holder in ("data", "chunk"):
        inner = get(response, holder)
        if inner is not None and not isinstance(inner, str | bytes):
            return extract_outcome(inner)
    return None, False


def _event(event: Any, kind: str) -> tuple[Outcome | None, bool]:
    """A typed stream event of Anthropic, OpenAI Responses, Cohere or the stream helpers."""
    if kind == "message_delta":
        reason = _reason(read_field(read_field(event, "delta"), "stop_reason"))
        return _outcome([] if reason is None else [reason], 0), False
    if kind == "content_block_start":
        block = read_field(event, "content_block")
        return _outcome([], 1 if read_field(block, "type") == "tool_use" else 0), False
    if kind.startswith("response."):
        inner = read_field(event, "response")
        if inner is not None and read_field(inner, "object") == "response":
            return _response(inner), True
        return None, False
    if kind == "message-end":
        reason = _reason(read_field(read_field(event, "delta"), "finish_reason"))
        return _outcome([] if reason is None else [reason], 0), False
    if kind == "tool-call-start":
        return Outcome((), 1), False
    if kind == "chunk":  # the OpenAI stream helper's ChunkEvent
        return extract_outcome(read_field(event, "chunk"))
    return None, False


# -- rate-limit headroom, from response headers ------------------------------------------------

#: The headers that say how much of a rate limit is left, and the ``limit`` label of each.
LIMIT_HEADERS = (
    ("x-ratelimit-remaining-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "tokens"),
    ("anthropic-ratelimit-input-tokens-remaining", "input_tokens"),
    ("anthropic-ratelimit-output-tokens-remaining", "output_tokens"),
)


def headers_of(source: Any) -> Any:
    """The HTTP headers ``source`` carries: its own ``headers`` (a raw SDK response, an
    httpx or aiohttp response, aiohttp's ClientResponseError), else its ``response``'s (an
    SDK error, an SDK stream); None when there are none."""
    headers = attribute(source, "headers")
    if headers is None:
        response = attribute(source, "response")
        if response is not None and not isinstance(response, str | bytes):
            headers = attribute(response, "headers")
    return headers if callable(attribute(headers, "get")) else None


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, dict):  # a plain dict: case as sent
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    except Exception:  # a foreign mapping may raise anything
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


def _number(text: str | None) -> float | None:
    if text is None or len(text) > 32:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def rate_limits(headers: Any) -> dict[str, float]:
    """The remaining requests and tokens ``headers`` report, by ``limit`` label."""
    found: dict[str, float] = {}
    for name, limit in LIMIT_HEADERS:
        value = _number(_header(headers, name))
        if value is not None:
            found[limit] = value
    return found


def retry_after(headers: Any) -> float | None:
    """``retry-after`` in seconds: a number of seconds, or an HTTP date from now."""
    text = _header(headers, "retry-after")
    seconds = _number(text)
    if seconds is not None or text is None:
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
