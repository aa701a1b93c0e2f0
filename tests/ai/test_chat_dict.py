"""The one-pass reader of a plain chat completion dict (``_chat_dict``) gives exactly what
the general readers give, or steps aside: over generated responses, unusual ones included
(counts of every wrong type, details that are not dicts, several choices, tool calls,
reasons never seen), and end to end, where a tracked call records the same numbers with
the one-pass reader as without it."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation
from instrument.ai import _call
from instrument.ai._chat_dict import read_chat_dict
from instrument.ai._outcome import extract_outcome
from instrument.ai._usage import MAX_TOKENS, read_tokens


class Reason(enum.Enum):
    STOP = "STOP"


ABSENT = object()

counts = st.one_of(
    st.integers(0, 5000),
    st.sampled_from([None, ABSENT, -1, MAX_TOKENS, MAX_TOKENS + 1, 3.0, 2.5, "7", True, [1]]),
)
reasons = st.sampled_from(
    [ABSENT, None, "stop", "length", "STOP", "tool_calls", "a-new-reason", "", 7, Reason.STOP]
)


def fields(**strategies: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of the given keys, each left out when its value draws ABSENT."""
    return st.fixed_dictionaries(strategies).map(
        lambda d: {k: v for k, v in d.items() if v is not ABSENT}
    )


details = st.one_of(
    st.sampled_from([ABSENT, None, [], "x"]),
    fields(cached_tokens=counts, cache_write_tokens=counts, cache_creation_tokens=counts),
)
usages = st.one_of(
    st.sampled_from([ABSENT, None, [], "usage"]),
    fields(
        prompt_tokens=counts,
        completion_tokens=counts,
        total_tokens=counts,
        prompt_tokens_details=details,
        completion_tokens_details=st.one_of(
            st.sampled_from([ABSENT, None, 3]), fields(reasoning_tokens=counts)
        ),
        cache_read_input_tokens=counts,
        cache_creation_input_tokens=counts,
        input_tokens=counts,
        output_tokens=counts,
    ),
)
tool_calls = st.sampled_from([ABSENT, None, [], [{"id": "call_1", "type": "function"}], "x", ()])
messages = st.one_of(
    st.sampled_from([ABSENT, None, "text"]),
    fields(
        role=st.just("assistant"),
        content=st.sampled_from(["fine", None]),
        tool_calls=tool_calls,
        function_call=st.sampled_from([ABSENT, None, {"name": "f"}]),
    ),
)
choice = st.one_of(
    st.sampled_from(["choice", None]),
    fields(
        index=st.just(0),
        finish_reason=reasons,
        message=messages,
        delta=st.sampled_from([ABSENT, {"content": "x"}]),
    ),
)
responses = fields(
    id=st.just("chatcmpl-1"),
    model=st.sampled_from([ABSENT, "gpt-4o", "gpt-4o-mini", "", None, 5]),
    usage=usages,
    choices=st.one_of(
        st.sampled_from([ABSENT, None, "choices"]),
        st.lists(choice, max_size=3),
        st.lists(choice, min_size=1, max_size=2).map(tuple),
    ),
    type=st.sampled_from([ABSENT, "message", "message_delta", None]),
    object=st.sampled_from([ABSENT, "chat.completion", "response", None]),
    candidates=st.sampled_from([ABSENT, None, [{"finish_reason": "STOP"}]]),
    finish_reason=st.sampled_from([ABSENT, None, "COMPLETE"]),
    data=st.sampled_from([ABSENT, None, {"choices": [{"finish_reason": "stop"}]}]),
    chunk=st.sampled_from([ABSENT, None, {"choices": [{"finish_reason": "length"}]}]),
)


def plain(prompt: int = 12, completion: int = 5, **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, **usage},
    }


def with_choice(response: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``response`` with its one choice's fields replaced."""
    return {**response, "choices": [{**response["choices"][0], **fields}]}


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(responses)
@example(plain())
@example(plain(prompt_tokens_details={"cached_tokens": 4}, cache_read_input_tokens=9))
@example(plain(cache_read_input_tokens=3, cache_creation_input_tokens=2))
@example(plain(prompt_tokens_details={"cache_creation_tokens": 2}))
@example(plain(completion_tokens_details={"reasoning_tokens": 2}))
@example(plain(prompt=MAX_TOKENS + 1))
@example(plain(prompt=3.0))  # type: ignore[arg-type]
@example(plain(completion_tokens_details={"reasoning_tokens": "2"}))
@example(plain(prompt_tokens_details=[]))
@example(with_choice(plain(), message={"tool_calls": [{"id": "call_1", "type": "function"}]}))
@example(with_choice(plain(), message={"function_call": {"name": "f"}}))
@example(with_choice(plain(), finish_reason="never-seen-before"))
@example(with_choice(plain(), finish_reason="LENGTH"))
@example(with_choice(plain(), finish_reason=""))
@example(with_choice(plain(), finish_reason=7))
@example(with_choice(plain(), finish_reason=None))
@example({**plain(), "choices": plain()["choices"] * 2})
@example({"usage": plain()["usage"]})
@example({"usage": plain()["usage"], "choices": None, "finish_reason": "COMPLETE"})
@example({"usage": plain()["usage"], "object": "response", "status": "completed"})
@example({"usage": plain()["usage"], "data": {"choices": [{"finish_reason": "stop"}]}})
def test_the_one_pass_read_is_the_general_readers_or_none(response: dict[str, Any]) -> None:
    extract_outcome(response)  # a reason the general reader meets is remembered from now on
    read = read_chat_dict(response)
    if read is not None:
        assert read == (read_tokens(response), extract_outcome(response)[0])


@pytest.mark.parametrize(
    "response",
    [
        plain(),
        plain(
            total_tokens=17,
            prompt_tokens_details={"cached_tokens": 4, "audio_tokens": 0},
            completion_tokens_details={"reasoning_tokens": 2, "audio_tokens": 0},
        ),
        plain(prompt_tokens_details={"cached_tokens": 0, "cache_write_tokens": 3}),
        plain(cache_read_input_tokens=4, cache_creation_input_tokens=1),  # LiteLLM's spelling
        {
            **plain(),
            "choices": [{"index": 0, "message": {"tool_calls": []}, "finish_reason": None}],
        },
        {"usage": {"prompt_tokens": 12, "completion_tokens": 5}},
    ],
    ids=["plain", "details", "cache writes", "litellm", "no reason", "usage alone"],
)
def test_the_usual_shapes_take_the_one_pass_read(response: dict[str, Any]) -> None:
    extract_outcome(response)
    read = read_chat_dict(response)
    assert read is not None
    assert read == (read_tokens(response), extract_outcome(response)[0])


def _recorded(responses: list[dict[str, Any]], model: str | None) -> bytes:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, push_mode="off", prices={"gpt-4o": {
        "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}})  # fmt: skip
    try:
        tracked = inst.track_ai_call("openai", model)(lambda r: r)
        for response in responses:
            tracked(response)
        text = generate_latest(registry)
    finally:
        inst.close()
    # The durations and creation times differ run to run; every count must not.
    varying = (b"_seconds", b"_created", b"# ")
    return b"\n".join(
        line for line in text.splitlines() if not any(part in line for part in varying)
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(responses, min_size=1, max_size=8), st.sampled_from(["gpt-4o", None]))
def test_a_tracked_call_records_the_same_with_or_without_the_one_pass_read(
    generated: list[dict[str, Any]], model: str | None
) -> None:
    """With the model fixed, and taken from each response (model=None)."""
    usual = [plain(), plain(7, 3, prompt_tokens_details={"cached_tokens": 2})]
    with_it = _recorded(usual + generated, model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_call, "read_chat_dict", lambda response: None)
        without = _recorded(usual + generated, model)
    assert with_it == without
    assert (
        b'codomyrmex_ai_tokens_used_total{model="gpt-4o",provider="openai",token_type="input"}'
        in with_it
    )
