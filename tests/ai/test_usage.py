"""Token usage by response shape: each provider, as SDK-like objects and plain dicts.

Each case is read with :func:`extract_usage` and recorded through a tracked call, and the
counters are read back from the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.usage import Usage, extract_usage, response_model, usage_from

from ..ai_fakes import (
    anthropic_events,
    anthropic_message,
    as_object,
    gemini_chunks,
    gemini_response,
    gemini_rest_response,
    openai_chat,
    openai_chat_chunks,
    openai_response,
    openai_response_events,
)
from ..support import token_counts

FORMS: dict[str, Callable[[Any], Any]] = {"dict": lambda d: d, "object": as_object}


def recorded(inst: Instrumentation, registry: CollectorRegistry, response: Any) -> dict[str, float]:
    """Record ``response`` in one with-block call and read its token counters back."""
    with inst.track_ai_call("p", "m") as call:
        call.record_response(response)
    return token_counts(registry, "p", "m")


CASES: dict[str, tuple[dict[str, Any], Usage]] = {
    "openai chat": (
        openai_chat(1200, 300, cached=1024, reasoning=128),
        Usage(1200, 300, cache_read=1024, reasoning=128),
    ),
    "openai chat, embeddings": (
        {"object": "list", "model": "text-embedding-3-small",
         "usage": {"prompt_tokens": 8, "total_tokens": 8}},
        Usage(8, 0),
    ),
    "openai responses": (
        openai_response(900, 450, cached=512, reasoning=256),
        Usage(900, 450, cache_read=512, reasoning=256),
    ),
    "anthropic with cache": (
        anthropic_message(21, 393, cache_read=1800, cache_creation=200),
        Usage(21 + 1800 + 200, 393, cache_read=1800, cache_creation=200),
    ),
    "anthropic without cache": (anthropic_message(12, 30), Usage(12, 30)),
    "gemini with thoughts and cache": (
        gemini_response(640, 120, thoughts=300, cached=512),
        Usage(640, 420, cache_read=512, reasoning=300),
    ),
    "gemini rest camelCase": (gemini_rest_response(20, 30, thoughts=5), Usage(20, 35, reasoning=5)),
}  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_each_shape(
    inst: Instrumentation, registry: CollectorRegistry, case: str, form: str
) -> None:
    response, expected = CASES[case]
    response = FORMS[form](response)
    assert extract_usage(response) == expected
    want = {"input": expected.input_tokens, "output": expected.output_tokens}
    for detail in ("cache_read", "cache_creation", "reasoning"):
        if getattr(expected, detail):
            want[detail] = getattr(expected, detail)
    if not expected.output_tokens:
        want["output"] = 0  # bound at the first call, so present at 0
    assert recorded(inst, registry, response) == want


def test_gemini_tool_use_prompt_tokens_are_input(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    response = gemini_response(100, 10)
    response["usage_metadata"]["tool_use_prompt_token_count"] = 40
    assert recorded(inst, registry, response) == {"input": 140, "output": 10}


def test_shape_not_provider_picks_the_reader(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    # An OpenAI-compatible endpoint tracked as "mistral" still counts.
    with inst.track_ai_call("mistral", "mistral-large") as call:
        call.record_response(as_object(openai_chat(77, 11)))
    assert token_counts(registry, "mistral", "mistral-large") == {"input": 77, "output": 11}


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {"prompt_tokens": "12", "completion_tokens": -3},
        {"prompt_tokens": True, "completion_tokens": None},
        {"input_tokens": [1], "output_tokens": {"n": 2}},
        {"prompt_token_count": 1.5},
        {"something_else": 4},
        "twelve tokens",
    ],
    ids=["none", "string-and-negative", "bool", "containers", "fraction", "unknown", "string"],
)
@pytest.mark.parametrize("form", FORMS)
def test_malformed_usage_is_skipped_and_the_call_counted_as_missing(
    inst: Instrumentation,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    usage: Any,
    form: str,
) -> None:
    response = FORMS[form]({"model": "m", "usage": usage})
    caplog.set_level(logging.DEBUG, logger="instrument")
    assert extract_usage(response) is None
    assert recorded(inst, registry, response) == {"input": 0, "output": 0}
    assert recorded(inst, registry, response) == {"input": 0, "output": 0}
    if usage is not None:
        assert any("usage" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    # A silent 0 is what the counter and one warning per provider and model are for.
    assert (
        registry.get_sample_value(
            "codomyrmex_ai_usage_missing_total", {"provider": "p", "model": "m"}
        )
        == 2
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        f"p/m: a call ended without readable usage in its response ({type(response).__name__})"
        in warning
    )


def test_a_malformed_field_skips_only_itself(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="instrument")
    response = openai_chat(50, 10, cached=5)
    response["usage"]["completion_tokens"] = "10"
    response["usage"]["prompt_tokens_details"]["cached_tokens"] = -1
    assert recorded(inst, registry, response) == {"input": 50, "output": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert any("completion_tokens='10'" in m for m in messages)
    assert any("cached_tokens=-1" in m for m in messages)


def test_integral_floats_count(inst: Instrumentation, registry: CollectorRegistry) -> None:
    assert recorded(
        inst, registry, {"usage": {"prompt_tokens": 12.0, "completion_tokens": 3.0}}
    ) == {
        "input": 12,
        "output": 3,
    }


def test_foreign_objects_never_raise(inst: Instrumentation, registry: CollectorRegistry) -> None:
    class Exploding:
        @property
        def usage(self) -> Any:
            raise RuntimeError("lazy attribute failed")

        @property
        def model(self) -> Any:
            raise RuntimeError("lazy attribute failed")

    assert extract_usage(Exploding()) is None
    assert response_model(Exploding()) is None
    for response in (Exploding(), 42, b"bytes", ["a", "list"], object()):
        assert recorded(inst, registry, response) == {"input": 0, "output": 0}


@pytest.mark.parametrize("form", FORMS)
def test_stream_chunks_carry_usage_where_each_provider_puts_it(
    inst: Instrumentation, registry: CollectorRegistry, form: str
) -> None:
    to = FORMS[form]
    openai_last = openai_chat_chunks(prompt=30, completion=3)[-1]
    assert extract_usage(to(openai_last)) == Usage(30, 3)
    assert [extract_usage(to(c)) for c in openai_chat_chunks()[:-1]] == [None] * 5
    start, *_, delta, _stop = anthropic_events(25, cache_read=100, output_steps=(15,))
    assert extract_usage(to(start)) == Usage(125, 1, cache_read=100)
    assert extract_usage(to(delta)) == Usage(0, 15)
    created, *_, completed = openai_response_events(50, 20, reasoning=4)
    assert extract_usage(to(created)) is None
    assert extract_usage(to(completed)) == Usage(50, 20, reasoning=4)
    # The running totals merge by keeping the latest, never adding.
    merged = extract_usage(to(start))
    for chunk in (delta, {"type": "message_delta", "usage": {"output_tokens": 40}}):
        found = extract_usage(to(chunk))
        assert merged is not None and found is not None
        merged = merged.latest(found)
    assert merged == Usage(125, 40, cache_read=100)
    gemini_totals = [extract_usage(to(c)) for c in gemini_chunks(9, (2, 5, 8), thoughts=3)]
    assert gemini_totals[-1] == Usage(9, 11, reasoning=3)
    with inst.track_ai_call("p", "m") as call:
        call.add_usage(input_tokens=merged.input_tokens, output_tokens=merged.output_tokens)
    assert token_counts(registry, "p", "m") == {"input": 125, "output": 40}


@pytest.mark.parametrize("form", FORMS)
def test_response_model_by_shape(form: str) -> None:
    to = FORMS[form]
    assert response_model(to(openai_chat(model="gpt-4o-2024-08-06"))) == "gpt-4o-2024-08-06"
    assert response_model(to(openai_response(model="o4-mini"))) == "o4-mini"
    assert response_model(to(anthropic_message(model="claude-3-5-haiku-latest"))) == (
        "claude-3-5-haiku-latest"
    )
    assert response_model(to(anthropic_events(model="claude-opus-4-1")[0])) == "claude-opus-4-1"
    assert response_model(to(openai_response_events()[0])) == "o4-mini-2025-04-16"
    assert response_model(to(gemini_response(model="gemini-2.5-pro"))) == "gemini-2.5-pro"
    assert response_model(gemini_rest_response()) == "gemini-2.0-flash"
    assert response_model(to({"model": 3})) is None


def test_response_model_labels_the_call(inst: Instrumentation, registry: CollectorRegistry) -> None:
    with inst.track_ai_call("gemini") as call:
        call.record_response(as_object(gemini_response(5, 6, model="gemini-2.5-pro")))
    assert token_counts(registry, "gemini", "gemini-2.5-pro") == {"input": 5, "output": 6}


def test_usage_from_a_custom_extractor(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="instrument")
    assert usage_from(Usage(3, 4)) == Usage(3, 4)
    assert usage_from({"input_tokens": 3, "reasoning": 2}) == Usage(3, 0, reasoning=2)
    assert usage_from({"input_tokens": 3, "prompt_tokens": 2}) is None
    assert usage_from(7) is None
    assert usage_from({"output_tokens": "7"}) is None
    tracker = inst.track_ai_call("custom", "m", usage=lambda r: r["meta"]["billing"])
    with tracker as call:
        call.record_response({"meta": {"billing": {"input_tokens": 9, "output_tokens": 4}}})
    assert token_counts(registry, "custom", "m") == {"input": 9, "output": 4}


def test_any_mapping_reads_like_a_dict() -> None:
    """Each type's reader is remembered: dicts, other mappings, objects, text."""

    class Counts(dict[str, Any]):
        pass

    block = {"prompt_tokens": 7, "completion_tokens": 2}
    for wrap in (dict, Counts, MappingProxyType):
        response = wrap({"model": "gpt-4o", "usage": wrap(block)})
        assert extract_usage(response) == Usage(7, 2)
        assert response_model(response) == "gpt-4o"
    assert extract_usage(as_object({"usage": MappingProxyType(block)})) == Usage(7, 2)

    class Text(str):
        usage = block

    for text in ("usage", b"usage", Text("usage"), None):
        assert extract_usage(text) is None
        assert response_model(text) is None


def test_latest_keeps_each_field_at_its_latest() -> None:
    start = Usage(125, 1, cache_read=100)
    covering = Usage(125, 40, cache_read=100, reasoning=3)
    assert start.latest(covering) is covering  # a running total that covers the last one
    assert start.latest(Usage(0, 15)) == Usage(125, 15, cache_read=100)
    assert covering.latest(start) == covering


def test_usage_adds_and_merges_with_anything_that_has_its_fields() -> None:
    """``Usage + other`` and ``Usage.latest(other)`` read other's five fields, whatever
    its type (as they always did)."""
    from types import SimpleNamespace

    other = SimpleNamespace(
        input_tokens=1, output_tokens=2, cache_read=0, cache_creation=0, reasoning=0
    )
    assert Usage(1, 1) + other == Usage(2, 3)  # type: ignore[operator]
    assert Usage(5, 1).latest(other) == Usage(5, 2)  # type: ignore[arg-type]
    assert Usage(0, 0).latest(other) is other  # type: ignore[arg-type]
    assert Usage(5, 1).latest(Usage(6, 2)) == Usage(6, 2)
