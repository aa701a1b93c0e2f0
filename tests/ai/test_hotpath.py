"""The AI call's hot path (issue 13, second pass): what it remembers per result type, and
the inline reading of the chat usage shape.

A tracker remembers the result types it found plain (no stream, no raw response) and does
not inspect them again; every other type is inspected on every call, so streams and raw
responses of a new type are still followed. The chat shape is read with one reader and
inline checks: every count a user sees must be what the shape says, for dicts and objects.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument.ai._series import MAX_OTHER_REASONS
from instrument.usage import MAX_TOKENS, extract_usage

from ..ai_fakes import as_object, openai_chat, openai_chat_chunks
from ..support import FORKED_WORKERS, calls, in_threads, run_script, token_counts

ROOT = Path(__file__).resolve().parent.parent.parent

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


# -- a call's end: one write into the model's cells (issue 13, third pass) ----------------------


def _chat(reasons: list[str | None], tools: int = 0) -> dict[str, Any]:
    """A chat completion with one choice per reason; the first asks for ``tools`` tools."""
    response = openai_chat(10, 2)
    choices = []
    for i, reason in enumerate(reasons):
        message: dict[str, Any] = {"role": "assistant", "content": "x"}
        if i == 0 and tools:
            message["tool_calls"] = [{"id": f"call_{n}", "type": "function"} for n in range(tools)]
        choices.append({"index": i, "message": message, "finish_reason": reason})
    response["choices"] = choices
    return response


def _outcomes(registry: CollectorRegistry, model: str = "gpt-4o") -> dict[str, float]:
    """Every operation, finish reason and tool-call sample of ``model``, read back."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "codomyrmex_ai_operations_total":
                found[f"{s.labels['operation']}/{s.labels['status']}"] = s.value
            elif s.name == "codomyrmex_ai_finish_reasons_total":
                found[f"reason {s.labels['finish_reason']}"] = s.value
            elif s.name in ("codomyrmex_ai_tool_calls_total", "codomyrmex_ai_usage_missing_total"):
                found[s.name.removeprefix("codomyrmex_ai_").removesuffix("_total")] = s.value
    return found


def test_a_call_end_takes_no_value_lock_of_prometheus_client(
    inst: Instrumentation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operations, finish reasons and tool calls are counted through the model's cells
    like the calls' counters: once a reason has been seen, a call's end updates no
    prometheus_client value (each update takes that value's lock); the next read has all."""
    from prometheus_client.values import MutexValue

    response = _chat(["stop"], tools=2)

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> Any:
        return response

    ask()  # the first call of a reason binds its counter
    updates = [0]
    real_inc = MutexValue.inc

    def counting(self: MutexValue, amount: float) -> None:
        updates[0] += 1
        real_inc(self, amount)

    monkeypatch.setattr(MutexValue, "inc", counting)
    for _ in range(50):
        ask()
    assert updates[0] == 0
    assert _outcomes(inst.registry) == {
        "chat/success": 51,
        "chat/error": 0,
        "chat/cancelled": 0,
        "reason stop": 51,
        "tool_calls": 102,
        "usage_missing": 0,
    }
    assert calls(inst.registry, "openai", "gpt-4o") == {"success": 51}


def test_more_reasons_and_operations_than_the_cells_hold_all_count(
    inst: Instrumentation,
) -> None:
    """Past the cells' spare numbers a counter is incremented directly: 40 reasons (one
    new per call, several per response; past the provider's 16 undocumented ones they are
    "other") and 8 operations, all exact."""
    operations = [f"op{n}" for n in range(8)]
    trackers = {op: inst.track_ai_call("openai", "gpt-4o", operation=op) for op in operations}
    expected: dict[str, float] = {}
    for n in range(40):
        op = operations[n % len(operations)]
        reasons = [f"r{n}", "stop", None]
        trackers[op](lambda r=reasons, t=n % 3: _chat(r, tools=t))()
        other = f"reason r{n}" if n < MAX_OTHER_REASONS else "reason other"
        expected[other] = expected.get(other, 0) + 1
        expected[f"{op}/success"] = expected.get(f"{op}/success", 0) + 1
        expected["tool_calls"] = expected.get("tool_calls", 0) + n % 3
    expected["reason stop"] = 40
    for op in operations:
        expected[f"{op}/error"] = expected[f"{op}/cancelled"] = 0
    expected["usage_missing"] = 0
    assert _outcomes(inst.registry) == expected


def test_outcomes_of_calls_in_many_threads_are_exact_at_every_read(
    inst: Instrumentation,
) -> None:
    """8 threads with calls that succeed, fail and carry reasons and tool calls, reads
    throughout: every read is at most the final totals, and the totals are exact."""
    tracker = inst.track_ai_call("openai", "gpt-4o")
    done = threading.Event()
    per_thread = 400

    @tracker
    def ask(i: int) -> Any:
        if i % 5 == 0:
            raise ConnectionError("down")
        return _chat(["length" if i % 2 else "stop"], tools=1)

    def run() -> None:
        for i in range(per_thread):
            with contextlib.suppress(ConnectionError):
                ask(i)

    reads: list[dict[str, float]] = []

    def scrape() -> None:
        while not done.is_set():
            reads.append(_outcomes(inst.registry))

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        in_threads(run, 8)
    finally:
        done.set()
        reader.join()
    failures = 8 * per_thread // 5
    successes = 8 * per_thread - failures
    final = _outcomes(inst.registry)
    assert final["chat/success"] == successes
    assert final["chat/error"] == failures
    assert final["reason stop"] + final["reason length"] == successes
    assert final["tool_calls"] == successes
    assert final["usage_missing"] == 0
    assert len(reads) > 1
    previous: dict[str, float] = {}
    for read in reads:  # every count only grows, up to its total
        for key, value in read.items():
            assert previous.get(key, 0) <= value <= final[key]
        previous = read


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocess_mode_counts_outcomes_directly(tmp_path: Path) -> None:
    """prometheus_client's multiprocess mode: no cells, each counter updated at the end,
    summed over the processes by its collector."""
    code = """
        from instrument import Instrumentation

        inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
        response = {"choices": [
            {"message": {"tool_calls": [{"id": "a"}]}, "finish_reason": "stop"},
            {"message": {}, "finish_reason": "length"},
        ]}

        @inst.track_ai_call("openai", "gpt-4o", operation="chat")
        def ask(i):
            return response

        def worker(n):
            for i in range(50):
                ask(i)

        if __name__ == "__main__":
            collected = run_forked(worker, 3)
            labels = {"provider": "openai", "model": "gpt-4o"}
            values = [
                collected.get_sample_value("codomyrmex_ai_operations_total",
                    {**labels, "operation": "chat", "status": "success"}),
                collected.get_sample_value("codomyrmex_ai_finish_reasons_total",
                    {**labels, "finish_reason": "stop"}),
                collected.get_sample_value("codomyrmex_ai_finish_reasons_total",
                    {**labels, "finish_reason": "length"}),
                collected.get_sample_value("codomyrmex_ai_tool_calls_total", labels),
                collected.get_sample_value("codomyrmex_ai_usage_missing_total", labels),
            ]
            print(values)
    """
    # The script beside the workers' files: the collector reads only *.db.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = run_script(tmp_path / "script.py", code, env, prelude=FORKED_WORKERS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[150.0, 150.0, 150.0, 150.0, 150.0]"


# -- readers learnt per response type (issue 13, fourth pass) ----------------------------------
#
# A response type decides only how its fields are read (a dict's get, another mapping's,
# attributes, none); which fields it has is each instance's own. A cache of readers must
# never change what is counted: each test reads the counts back after every call.


def _track(inst: Instrumentation, responses: list[Any]) -> Any:
    """One tracked function answering with ``responses`` in turn."""
    answers = iter(responses)

    @inst.track_ai_call("openai", model="m")
    def ask() -> Any:
        return next(answers)

    return ask


def _read_back(inst: Instrumentation) -> dict[str, float]:
    """Every count of the model "m" that is not 0 (series start at 0), read back."""
    found = {**token_counts(inst.registry, "openai", "m"), **_outcomes(inst.registry, "m")}
    return {name: value for name, value in found.items() if value}


def _choice(reason: str) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": reason}


# Responses of several shapes and what each adds to the counts read back. Each is used as a
# dict and, through as_object, as a SimpleNamespace: one type whose instances all differ.
_SHAPES: list[tuple[dict[str, Any], dict[str, float]]] = [
    (openai_chat(7, 3), {"input": 7, "output": 3, "reason stop": 1}),
    (
        _anthropic := {
            "type": "message",
            "content": [{"type": "tool_use", "id": "t1"}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 5, "output_tokens": 4, "cache_read_input_tokens": 2},
        },
        {"input": 7, "output": 4, "cache_read": 2, "reason tool_use": 1, "tool_calls": 1},
    ),
    (
        {
            "candidates": [{"finish_reason": "MAX_TOKENS", "content": {"parts": []}}],
            "usage_metadata": {"prompt_token_count": 11, "candidates_token_count": 6},
        },
        {"input": 11, "output": 6, "reason max_tokens": 1},
    ),
    ({"choices": [_choice("length")]}, {"reason length": 1, "usage_missing": 1}),
    ({"choices": [_choice("stop")], "usage": None}, {"reason stop": 1, "usage_missing": 1}),
    (
        {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"input": 9, "output": 1},
    ),
    (
        {"data": {"choices": [_choice("stop")], "usage": {"prompt_tokens": 2}}},
        {"input": 2, "reason stop": 1},
    ),
]


def _add(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    found = dict(total)
    for key, value in more.items():
        found[key] = found.get(key, 0) + value
    return found


@pytest.mark.parametrize("as_attributes", [False, True], ids=["dicts", "one attribute type"])
def test_responses_of_one_type_are_each_read_by_their_own_fields(
    inst: Instrumentation, as_attributes: bool
) -> None:
    """Every shape after every other, twice round: the type is learnt from the first and
    each later one (of that same type) is still read by what it holds."""
    order = list(range(len(_SHAPES))) + list(reversed(range(len(_SHAPES))))
    responses = [_SHAPES[i][0] for i in order]
    if as_attributes:
        responses = [as_object(r) for r in responses]
        assert len({type(r) for r in responses}) == 1
    ask = _track(inst, responses)
    want: dict[str, float] = {"chat/success": 0}
    for i, response in zip(order, responses, strict=True):
        assert ask() is response
        want = _add(want, {"chat/success": 1, **_SHAPES[i][1]})
        got = _read_back(inst)
        assert {k: got.get(k, 0) for k in want} == want
        assert got.get("cache_creation", 0) == 0


def test_a_dict_without_usage_then_with_counts_the_later_one(inst: Instrumentation) -> None:
    ask = _track(
        inst,
        [
            {"choices": [_choice("stop")]},
            {"choices": [_choice("stop")], "usage": {"prompt_tokens": 4, "completion_tokens": 1}},
            {"choices": [_choice("stop")], "usage": {"input_tokens": 3, "output_tokens": 2}},
            {"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5}},
        ],
    )
    ask()
    assert _read_back(inst) == {"chat/success": 1, "reason stop": 1, "usage_missing": 1}
    ask()
    assert _read_back(inst) == {
        "chat/success": 2,
        "reason stop": 2,
        "usage_missing": 1,
        "input": 4,
        "output": 1,
    }
    ask()
    assert token_counts(inst.registry, "openai", "m") == {"input": 7, "output": 3}
    ask()
    assert token_counts(inst.registry, "openai", "m") == {"input": 15, "output": 8}
    assert _read_back(inst)["usage_missing"] == 1
    assert _read_back(inst)["reason stop"] == 3


class _Aliased(dict[str, Any]):
    """A dict subclass with its own get: read through it, as any other mapping."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(f"v1_{key}", default)


class _Raising(SimpleNamespace):
    """A subclass whose usage property raises: the base type's reader must not be used."""

    @property
    def usage(self) -> Any:
        raise RuntimeError("secret-token-in-message")


def test_subclasses_are_read_by_their_own_type(
    inst: Instrumentation, caplog: pytest.LogCaptureFixture
) -> None:
    chat = openai_chat(6, 2)
    aliased = _Aliased(v1_usage={"prompt_tokens": 30, "completion_tokens": 1}, usage=chat["usage"])
    plain = as_object({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    raising = _Raising(choices=[as_object(_choice("stop"))])
    ask = _track(inst, [chat, aliased, plain, raising, plain])
    ask()
    ask()  # its get gives v1_usage
    assert token_counts(inst.registry, "openai", "m") == {"input": 36, "output": 3}
    ask()
    ask()  # counted, its usage missing, the error's text kept out of the log
    assert token_counts(inst.registry, "openai", "m") == {"input": 37, "output": 4}
    ask()
    assert token_counts(inst.registry, "openai", "m") == {"input": 38, "output": 5}
    got = _read_back(inst)
    assert (got["chat/success"], got["reason stop"]) == (5, 2)
    assert "secret-token" not in caplog.text


def test_types_made_per_response_are_not_kept_alive(inst: Instrumentation) -> None:
    """Each Mock is an instance of a class of its own: the per-type caches start over when
    full instead of keeping every such class, and the readings stay right meanwhile. (Their
    ``choices`` given: a Mock's every field is another Mock, which the outcome's holders
    followed to the recursion limit; main bounds that depth since rev15.)"""
    import gc
    import weakref
    from unittest.mock import Mock

    def mock() -> Mock:
        return Mock(usage=as_object({"prompt_tokens": 1, "completion_tokens": 1}), choices=[])

    first = mock()
    kind = weakref.ref(type(first))
    responses = [first] + [mock() for _ in range(600)]
    ask = _track(inst, responses)
    for _ in responses:
        ask()
    assert token_counts(inst.registry, "openai", "m") == {"input": 601, "output": 601}
    del first, responses, ask
    gc.collect()
    assert kind() is None


_POOL = [shape for shape, _ in _SHAPES] + [
    {"choices": [{"delta": {"tool_calls": [{"id": "c1"}]}, "finish_reason": None}]},
    {"type": "chunk", "chunk": {"choices": [_choice("stop")], "usage": {"completion_tokens": 3}}},
    {"object": "response", "status": "completed", "usage": {"input_tokens": 1}},
    {"finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": 4}}},
    {"usage": {"tokens": {"output_tokens": 2}, "cached_tokens": 1}},
    {"usage": lambda: None},
    {},
]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.tuples(st.sampled_from(range(len(_POOL))), st.booleans()), max_size=12))
def test_a_learnt_reader_reads_as_a_fresh_one(picks: list[tuple[int, bool]]) -> None:
    """Any order of shapes, as dicts and as one attribute type: what is read with the
    readers learnt from the responses before is what a process reading it first reads."""
    from instrument.ai import _fields, _outcome, _usage

    for index, as_attributes in picks:
        response = as_object(_POOL[index]) if as_attributes else _POOL[index]
        warm = (extract_usage(response), _outcome.extract_outcome(response))
        for cache in (_fields.READERS, _usage.USAGE_READERS):
            _fields.forget(cache)
        fresh = (extract_usage(response), _outcome.extract_outcome(response))
        assert warm == fresh
