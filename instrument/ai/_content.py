"""What a response or stream chunk says beside its usage, read by shape with no SDK imported.

Whether a chunk carries generated content (the time to first token is the first such
chunk), the response a stream helper has accumulated, whether it says the model finished,
and the parsed body of a raw HTTP response wrapper.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from ._fields import READERS, attribute, read_field, reader_of

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
        if _generated(read_field(value, name), depth + 1):
            return True
    for name in _PRESENT_FIELDS:
        if _present(read_field(value, name)):
            return True
    return any(_generated(read_field(value, name), depth + 1) for name in _NESTED_FIELDS)


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
    get = READERS.get(type(chunk)) or reader_of(chunk)
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


# -- which response a usage report belongs to ---------------------------------------------------

# Where an event keeps the response it reports on (Anthropic's message_start, OpenAI
# Responses' events, the OpenAI stream helper's chunk event, Mistral's events).
_ID_HOLDERS = ("message", "response", "chunk", "data")


def response_identity(report: Any) -> tuple[str | None, bool]:
    """Which response a usage-carrying chunk (or response) reports on, and whether it is a
    complete response rather than a stream chunk.

    The id is the report's own ``id`` (OpenAI and Mistral chunks, Cohere events), Gemini's
    ``response_id``, or the id of the response an event holds. Complete by shape: a Chat
    response's choices hold a ``message`` (a chunk's hold a ``delta``), an Anthropic Message
    says ``type: "message"``, an OpenAI Response ``object: "response"``.

    >>> response_identity({"id": "msg_1", "type": "message", "usage": {}})
    ('msg_1', True)
    """
    get = READERS.get(type(report)) or reader_of(report)
    found = get(report, "id")
    if not isinstance(found, str):
        found = get(report, "response_id")
    if not isinstance(found, str):
        found = None
        for holder in _ID_HOLDERS:
            inner = get(report, holder)
            if inner is not None and not isinstance(inner, str | bytes):
                value = read_field(inner, "id")
                if isinstance(value, str):
                    found = value
                    break
    complete = get(report, "type") == "message" or get(report, "object") == "response"
    if not complete:
        choices = get(report, "choices")
        complete = (
            isinstance(choices, list | tuple)
            and bool(choices)
            and read_field(choices[0], "message") is not None
        )
    return found or None, complete


# -- the response a stream helper accumulates ---------------------------------------------------

_snapshot_names: dict[type, tuple[str, ...]] = {}


def stream_snapshot(stream: Any) -> Any:
    """The response a stream helper has accumulated so far, or None.

    The SDKs' stream helpers keep it as a ``current_<kind>_snapshot`` property (Anthropic's
    ``MessageStream.current_message_snapshot``, OpenAI's ``current_completion_snapshot``);
    it carries the usage when a caller reads the stream another way (``text_stream``).
    OpenAI's ``ResponseStream`` keeps the completed response in its ``_state`` instead.
    """
    kind = type(stream)
    names = _snapshot_names.get(kind)
    if names is None:
        names = _snapshot_names[kind] = tuple(
            name for name in dir(kind) if name.startswith("current_") and name.endswith("_snapshot")
        )
    for name in names:
        value = attribute(stream, name)  # the property raises until the first event
        if value is not None:
            return value
    if not names:
        # OpenAI's ResponseStream offers no snapshot property: its state keeps the
        # response of the ``response.completed`` event, which get_final_response() returns.
        state = attribute(stream, "_state")
        if state is not None:
            return attribute(state, "_completed_response")
    return None


def stream_finished(snapshot: Any) -> bool:
    """Whether an accumulated response says the model finished: Anthropic's
    ``stop_reason``, a Chat choice's ``finish_reason``, a Responses ``status`` of
    "completed"."""
    if read_field(snapshot, "stop_reason") is not None:
        return True
    if read_field(snapshot, "status") == "completed":
        return True
    choices = read_field(snapshot, "choices")
    if isinstance(choices, list | tuple) and choices:
        return read_field(choices[0], "finish_reason") is not None
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
    http_response = attribute(response, "http_response")
    if http_response is None:
        return None
    if inspect.iscoroutinefunction(parse):
        content = attribute(http_response, "content")  # raises while the body is unread
        if not isinstance(content, bytes) or not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            return None
    return response.parse()
