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
#: How deep a response's holders (``data``, ``chunk``) are followed: an SDK nests one or two;
#: a mock (``unittest.mock.Mock`` makes every attribute) or a self-referencing object would
#: otherwise be followed to the recursion limit on every call.
_MAX_DEPTH = 4

#: The finish reasons the providers document, lower-cased: each its own series. Any other
#: (a foreign OpenAI-compatible server's) counts against a small cap per provider, then
#: is "other" (:class:`~instrument.ai._series.ReasonGuard`).
KNOWN_REASONS = frozenset({
    # OpenAI Chat Completions, Mistral, LiteLLM
    "stop", "length", "tool_calls", "content_filter", "function_call", "model_length",
    "error",
    # OpenAI Responses: the status, or incomplete_details.reason
    "completed", "incomplete", "failed", "cancelled", "max_output_tokens",
    # Anthropic Messages, Bedrock
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded", "guardrail_intervened", "content_filtered",
    # Gemini
    "safety", "recitation", "language", "other", "blocklist", "prohibited_content", "spii",
    "malformed_function_call", "image_safety", "unexpected_tool_call",
    # Cohere v2
    "complete", "tool_call", "timeout",
})  # fmt: skip


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


#: Reasons as sent mapped to their label: a few distinct ones, seen on every response.
REASON_LABELS: dict[str, str] = {}
_MAX_REMEMBERED = 256


def _reason(value: Any) -> str | None:
    if type(value) is str:  # the usual case: remembered
        found = REASON_LABELS.get(value)
        if found is not None:
            return found
    elif isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str) or not value:
        return None
    reason = value.lower()
    if len(reason) > _MAX_REASON or not reason.isascii() or not reason.isprintable():
        reason = "other"  # not a provider's reason: keep the label set bounded and encodable
    if len(REASON_LABELS) < _MAX_REMEMBERED and type(value) is str:
        REASON_LABELS[value] = reason
    return reason


#: ``isinstance``'s tuple, built once: ``list | tuple`` written in a call makes a new union
#: each time, which costs twice the check (this runs for every response and chunk).
_SEQUENCE = (list, tuple)


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, _SEQUENCE) else []


def _count(value: Any) -> int:
    """How many items a list field holds (a tool-call list), 0 for anything else."""
    return len(value) if isinstance(value, _SEQUENCE) else 0


#: The outcome of one choice's reason and no tool call, by reason: the usual response's,
#: shared (an Outcome is never changed), so reading one makes no object.
SINGLE_OUTCOMES: dict[str, Outcome] = {}


def _outcome(reasons: list[str], tools: int) -> Outcome | None:
    if not tools and len(reasons) == 1:
        reason = reasons[0]
        found = SINGLE_OUTCOMES.get(reason)
        if found is None:
            found = Outcome((reason,))
            if len(SINGLE_OUTCOMES) < _MAX_REMEMBERED:
                SINGLE_OUTCOMES[reason] = found
        return found
    return Outcome(tuple(reasons), tools) if reasons or tools else None


class ToolCallsSeen:
    """The tool calls one stream's deltas opened so far: by (choice index, tool index),
    the call's id. Some OpenAI-compatible servers (Fireworks, LocalAI) repeat the id on
    every argument delta of a call: a call counts once per position, or again when the id
    there changes. Only the current response's are kept: another id starts afresh."""

    __slots__ = ("calls", "response")

    def __init__(self) -> None:
        self.response: object = None
        self.calls: dict[tuple[Any, Any], object] = {}

    def opens(self, response: object, key: tuple[Any, Any], call_id: object) -> bool:
        """Whether the delta naming ``call_id`` at ``key`` opens a call not counted yet."""
        if response != self.response:
            self.response = response
            self.calls = {}
        if self.calls.get(key) == call_id:
            return False
        self.calls[key] = call_id
        return True


def _choices(
    choices: list[Any] | tuple[Any, ...], seen: ToolCallsSeen | None, response: object
) -> tuple[Outcome | None, bool]:
    """Chat Completions choices: a response's (``message``) or a chunk's (``delta``)."""
    reasons: list[str] = []
    tools = 0
    whole = False
    position = -1  # counted, not enumerate(): its tuple per choice costs more
    for choice in choices:
        position += 1
        # One reader per choice and per message: each reads several fields.
        get = READERS.get(type(choice)) or reader_of(choice)
        value = get(choice, "finish_reason")
        # A reason seen before, straight from _reason's memory: every response has one.
        reason = REASON_LABELS.get(value) if type(value) is str else None
        if reason is None:
            reason = _reason(value)
        if reason is not None:
            reasons.append(reason)
        message = get(choice, "message")
        if message is not None:
            whole = True
            read = READERS.get(type(message)) or reader_of(message)
            calls = read(message, "tool_calls")
            if calls is not None:  # the usual message has none: no call
                tools += _count(calls)
            if read(message, "function_call") is not None:
                tools += 1
            continue
        delta = get(choice, "delta")
        if delta is not None:
            index = get(choice, "index")
            if index is None:
                index = position
            for number, call in enumerate(_items(read_field(delta, "tool_calls"))):
                call_id = read_field(call, "id")
                if not isinstance(call_id, str) or not call_id:
                    continue  # a later delta of a call: its arguments
                at = read_field(call, "index")
                key = (index, number if at is None else at)
                if seen is None or seen.opens(response, key, call_id):
                    tools += 1
            name = read_field(read_field(delta, "function_call"), "name")
            if name and (seen is None or seen.opens(response, (index, None), name)):
                tools += 1
    if not tools and len(reasons) == 1:  # the usual response: _outcome's shared one
        found = SINGLE_OUTCOMES.get(reasons[0])
        if found is not None:
            return found, whole
    return _outcome(reasons, tools), whole


def _response(response: Any) -> Outcome | None:
    """An OpenAI Response: only once it ended (an in-progress one says nothing yet)."""
    status = read_field(response, "status")
    if status not in ("completed", "incomplete", "failed", "cancelled"):
        return None
    reason = _reason(read_field(read_field(response, "incomplete_details"), "reason"))
    tools = sum(
        1 for item in _items(read_field(response, "output"))
        if read_field(item, "type") in _TOOL_CALL_ITEMS
    )  # fmt: skip
    return Outcome((reason or _reason(status) or "other",), tools)


# The Responses API's output items that are a tool call the caller runs: a function's, a
# custom (free-form input) tool's.
_TOOL_CALL_ITEMS = ("function_call", "custom_tool_call")


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


def extract_outcome(
    response: Any, seen: ToolCallsSeen | None = None, depth: int = 0
) -> tuple[Outcome | None, bool]:
    """The outcome a response (or stream chunk) reports, and whether it is a whole
    response (which supersedes the chunks of its own stream) rather than a chunk.
    ``seen``: the tool calls the stream's earlier chunks opened (a stream's reader keeps
    one); without it, each delta naming a call's id counts."""
    get = READERS.get(type(response)) or reader_of(response)
    if get is no_fields:
        return None, False
    choices = get(response, "choices")
    if isinstance(choices, _SEQUENCE):
        return _choices(choices, seen, get(response, "id") if seen is not None else None)
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
    if isinstance(candidates, _SEQUENCE):
        return _candidates(list(candidates)), False
    if isinstance(kind, str):
        return _event(response, kind, seen, depth)
    reason = _reason(get(response, "finish_reason"))
    if reason is not None:  # Cohere v2's response
        tools = len(_items(read_field(get(response, "message"), "tool_calls")))
        return Outcome((reason,), tools), True
    # What carries a response: Mistral's stream event (``data``), the OpenAI stream
    # helper's chunk event (``chunk``).
    if depth < _MAX_DEPTH:
        for holder in ("data", "chunk"):
            inner = get(response, holder)
            if inner is not None and not isinstance(inner, str | bytes):
                return extract_outcome(inner, seen, depth + 1)
    return None, False


def _event(
    event: Any, kind: str, seen: ToolCallsSeen | None, depth: int
) -> tuple[Outcome | None, bool]:
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
    if kind == "chunk" and depth < _MAX_DEPTH:  # the OpenAI stream helper's ChunkEvent
        return extract_outcome(read_field(event, "chunk"), seen, depth + 1)
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
    SDK error, an SDK stream, Anthropic's stream helper), else those of the stream an
    OpenAI stream helper reads (``_raw_stream``), else LiteLLM's copies on its response
    (``_response_headers``, ``_hidden_params["additional_headers"]``); None when none."""
    for path in _HEADER_PATHS:
        headers: Any = source
        for name in path:
            headers = attribute(headers, name)
            if headers is None or isinstance(headers, str | bytes):
                break
        else:
            if callable(attribute(headers, "get")):
                return headers
    hidden = attribute(source, "_hidden_params")
    extra = hidden.get("additional_headers") if isinstance(hidden, dict) else None
    if isinstance(extra, dict) and extra:
        # LiteLLM keeps a provider's own headers (Anthropic's) under its prefix.
        return {str(k).removeprefix("llm_provider-"): v for k, v in extra.items()}
    return None


# Read in this order, the first that is a mapping wins.
_HEADER_PATHS = (
    ("headers",),
    ("response", "headers"),
    ("_raw_stream", "response", "headers"),
    ("_response_headers",),
)


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
