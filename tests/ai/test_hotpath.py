"""The AI call's hot path (issue 13, second pass): what it remembers per result type, and
the inline reading of the chat usage shape.

A tracker remembers the result types it found plain (no stream, no raw response) and does
not inspect them again; every other type is inspected on every call, so streams and raw
responses of a new type are still followed. The chat shape is read with one reader and
inline checks: every count a user sees must be what the shape says, for dicts and objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.usage import MAX_TOKENS, extract_usage

from ..ai_fakes import as_object, openai_chat, openai_chat_chunks
from ..support import calls, token_counts

#: The bound on the plain result types one tracker remembers (``ai._call``).
PLAIN_TYPES_KEPT = 64


@pytest.fixture
def inst() -> Iterator[Instrumentation]:
    instrumentation = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    yield instrumentation
    instrumentation.close()


class _CountingMeta(type):
    """Counts the lookups of stream and raw-response protocols on its classes."""

    lookups = 0

    def __getattribute__(cls, name: str) -> Any:
        if name in ("__next__", "__anext__", "__iter__", "__aiter__", "parse", "close"):
            _CountingMeta.lookups += 1
        return super().__getattribute__(name)


class _Completion(metaclass=_CountingMeta):
    """A completion object with usage as attributes, on a counting class."""

    def __init__(self, prompt: int, completion: int) -> None:
        self.model = "gpt-4o"
        self.usage = as_object({"prompt_tokens": prompt, "completion_tokens": completion})


def test_a_plain_result_type_is_inspected_once(inst: Instrumentation) -> None:
    @inst.track_ai_call("openai", "gpt-4o")
    def ask(n: int) -> _Completion:
        return _Completion(n, 1)

    ask(1)
    after_first = _CountingMeta.lookups
    assert after_first > 0  # the first result's type is inspected
    for n in range(2, 102):
        ask(n)
    assert _CountingMeta.lookups == after_first
    # Every call counted, with its own usage.
    assert calls(inst.registry, "openai", "gpt-4o") == {"success": 101}
    assert token_counts(inst.registry, "openai", "gpt-4o") == {
        "input": sum(range(1, 102)),
        "output": 101,
    }


class _RawChat:
    """A raw HTTP response (``with_raw_response``): headers, ``http_response``, ``parse()``."""

    def __init__(self, body: Any) -> None:
        self.http_response = object()
        self.headers = {"x-request-id": "r"}
        self._body = body

    def parse(self) -> Any:
        return self._body


def test_streams_and_raw_responses_after_plain_results_are_still_followed(
    inst: Instrumentation,
) -> None:
    """The remembered plain types never hide a stream or a raw response of another type:
    dict results, then a stream, then a raw response whose body is a stream, then dicts."""
    results: list[Any] = [
        openai_chat(10, 2),
        iter(openai_chat_chunks(prompt=7, completion=3)),
        _RawChat(iter(openai_chat_chunks(prompt=5, completion=4))),
        openai_chat(1, 1),
    ]

    @inst.track_ai_call("openai", "gpt-4o")
    def ask(i: int) -> Any:
        return results[i]

    assert isinstance(ask(0), dict)
    stream = ask(1)
    assert stream is not results[1]  # watched, in its proxy
    assert len(list(stream)) > 0
    raw = ask(2)
    assert len(list(raw.parse())) > 0
    ask(3)
    assert calls(inst.registry, "openai", "gpt-4o") == {"success": 4}
    assert token_counts(inst.registry, "openai", "gpt-4o") == {
        "input": 10 + 7 + 5 + 1,
        "output": 2 + 3 + 4 + 1,
    }


def test_the_plain_types_kept_are_bounded(inst: Instrumentation) -> None:
    """A program that makes a new result type per call leaves at most the bound behind,
    and every call still counts."""
    tracker = inst.track_ai_call("openai", "gpt-4o")
    made = PLAIN_TYPES_KEPT * 3

    @tracker
    def ask(n: int) -> Any:
        cls = type(f"Made{n}", (), {})
        result = cls()
        result.usage = {"prompt_tokens": 1, "completion_tokens": 2}
        return result

    for n in range(made):
        ask(n)
    assert len(tracker.plain_types) == PLAIN_TYPES_KEPT
    assert token_counts(inst.registry, "openai", "gpt-4o") == {
        "input": made,
        "output": 2 * made,
    }


# -- the chat shape, read inline ---------------------------------------------------------------

_COUNTS = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=MAX_TOKENS + 5),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.just(2.0),
)


def _expected(value: Any) -> int | None:
    """What a reported count is taken as: an int in 0..2**53 (not a bool), or a whole
    float in range; anything else is skipped."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKENS else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_COUNTS, completion=_COUNTS, cached=_COUNTS, as_attributes=st.booleans())
def test_chat_counts_of_every_type_read_as_the_shape_says(
    prompt: Any, completion: Any, cached: Any, as_attributes: bool
) -> None:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    response: Any = {"usage": usage}
    if as_attributes:
        response = as_object(response)
    read = extract_usage(response)
    want = (_expected(prompt), _expected(completion), _expected(cached))
    if prompt is None and completion is None:
        # No chat field at all: another shape (or none) is tried; no chat counts appear.
        assert read is None or (read.input_tokens, read.output_tokens) == (0, 0)
        return
    if want == (None, None, None):
        assert read is None
        return
    assert read is not None
    assert (read.input_tokens, read.output_tokens, read.cache_read) == tuple(
        0 if count is None else count for count in want
    )
