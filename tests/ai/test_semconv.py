"""Issue 15: the OpenTelemetry GenAI client metrics (``genai_semconv=True``), exact values
per family, on and off, and side by side with the OpenTelemetry SDK's own Prometheus
exporter, both scraped by the same real Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from instrument import Instrumentation, configure
from instrument.config import from_environment
from instrument.defaults import discard, replace_default
from instrument.metrics import GENAI_SECONDS_BUCKETS, GENAI_TOKEN_BUCKETS

from ..support import FORKED_WORKERS, FakeClock, run_script

MODEL = "gpt-4o"
TOKENS = "gen_ai_client_token_usage"
DURATION = "gen_ai_client_operation_duration_seconds"
FIRST = "gen_ai_client_operation_time_to_first_chunk_seconds"
PER_CHUNK = "gen_ai_client_operation_time_per_output_chunk_seconds"
FAMILIES = (TOKENS, DURATION, FIRST, PER_CHUNK)


@pytest.fixture
def on(registry: CollectorRegistry) -> Iterator[Instrumentation]:
    inst = Instrumentation(registry=registry, genai_semconv=True)
    yield inst
    inst.close()


def labels(
    response: str = "", error: str | None = "", request: str = MODEL, **more: str
) -> dict[str, str]:
    found = {
        "gen_ai_operation_name": more.pop("operation", "chat"),
        "gen_ai_provider_name": more.pop("provider", "openai"),
        "gen_ai_request_model": request,
        "gen_ai_response_model": response,
    }
    if error is not None:
        found["error_type"] = error
    return {**found, **more}


def hist(
    registry: CollectorRegistry, name: str, where: dict[str, str]
) -> tuple[float | None, float | None]:
    """(count, sum) of one gen_ai_* series, None for a series that does not exist."""
    return (
        registry.get_sample_value(f"{name}_count", where),
        registry.get_sample_value(f"{name}_sum", where),
    )


def bucket(registry: CollectorRegistry, name: str, where: dict[str, str], le: float) -> float:
    value = registry.get_sample_value(f"{name}_bucket", {**where, "le": floatToGoString(le)})
    assert value is not None, (name, where, le)
    return value


def families(registry: CollectorRegistry) -> set[str]:
    return {m.name for m in registry.collect() if m.name.startswith("gen_ai")}


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The label sets of a family's _count samples: one per series."""
    return [
        s.labels
        for m in registry.collect()
        for s in m.samples
        if m.name == name and s.name == f"{name}_count"
    ]


def usage_response(prompt: int = 10, completion: int = 5, cached: int = 0) -> dict[str, Any]:
    return {
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


# -- exact values, family by family ------------------------------------------------------------


def test_a_sync_call_records_duration_and_billable_tokens_cached_input_included(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        clock.advance(0.3)
        return usage_response(prompt=1000, completion=70, cached=600)

    ask()
    response = "gpt-4o-2024-08-06"
    assert hist(registry, DURATION, labels(response)) == (1.0, pytest.approx(0.3))
    assert bucket(registry, DURATION, labels(response), 0.16) == 0
    assert bucket(registry, DURATION, labels(response), 0.32) == 1
    tokens = labels(response, error=None)
    # Input includes the 600 cached tokens (prompt_tokens counts them): 1000, not 400.
    assert hist(registry, TOKENS, {**tokens, "gen_ai_token_type": "input"}) == (1.0, 1000.0)
    assert hist(registry, TOKENS, {**tokens, "gen_ai_token_type": "output"}) == (1.0, 70.0)
    assert bucket(registry, TOKENS, {**tokens, "gen_ai_token_type": "input"}, 256) == 0
    assert bucket(registry, TOKENS, {**tokens, "gen_ai_token_type": "input"}, 1024) == 1
    assert bucket(registry, TOKENS, {**tokens, "gen_ai_token_type": "output"}, 64) == 0
    assert bucket(registry, TOKENS, {**tokens, "gen_ai_token_type": "output"}, 256) == 1
    # No stream: no chunk families' series.
    assert series(registry, FIRST) == [] and series(registry, PER_CHUNK) == []
    # Beside it, the toolkit's own metrics as always.
    toolkit = {"provider": "openai", "model": MODEL, "token_type": "input"}
    assert registry.get_sample_value("codomyrmex_ai_tokens_used_total", toolkit) == 1000


def test_an_async_call_is_timed_to_its_end(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("anthropic", "claude-sonnet-4", operation="chat")
    async def ask() -> dict[str, Any]:
        await asyncio.sleep(0)
        clock.advance(1.5)
        return {
            "model": "claude-sonnet-4-20250514",
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 30, "output_tokens": 9},
        }

    asyncio.run(ask())
    where = labels("claude-sonnet-4-20250514", provider="anthropic", request="claude-sonnet-4")
    assert hist(registry, DURATION, where) == (1.0, pytest.approx(1.5))
    tokens = {**where, "gen_ai_token_type": "input"}
    del tokens["error_type"]
    # Anthropic's input_tokens excludes the cache: the billable input is 20 + 30.
    assert hist(registry, TOKENS, tokens) == (1.0, 50.0)


def test_a_stream_of_n_chunks_records_the_first_chunk_and_n_minus_1_gaps(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    gaps = [0.005, 0.03, 0.03, 0.5, 20.0]

    @on.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        clock.advance(0.2)  # the first chunk: a role-only one counts (any chunk does)
        yield {"model": "gpt-4o-x", "choices": [{"delta": {"role": "assistant"}}]}
        for gap in gaps:
            clock.advance(gap)
            yield {"choices": [{"delta": {"content": "hi"}}]}
        yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}

    assert len(list(stream())) == len(gaps) + 2
    where = labels("gpt-4o-x")
    assert hist(registry, FIRST, where) == (1.0, pytest.approx(0.2))
    # 7 chunks, 6 gaps: the five above and 0 before the usage chunk.
    count, total = hist(registry, PER_CHUNK, where)
    assert (count, total) == (6.0, pytest.approx(sum(gaps)))
    assert bucket(registry, PER_CHUNK, where, 0.01) == 2  # 0.005 and the 0
    assert bucket(registry, PER_CHUNK, where, 0.04) == 4
    assert bucket(registry, PER_CHUNK, where, 0.64) == 5
    assert bucket(registry, PER_CHUNK, where, 20.48) == 6
    assert hist(registry, DURATION, where) == (1.0, pytest.approx(0.2 + sum(gaps)))
    tokens = {**labels("gpt-4o-x", error=None), "gen_ai_token_type": "output"}
    assert hist(registry, TOKENS, tokens) == (1.0, 5.0)


def test_a_one_chunk_stream_records_no_gap_series(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        clock.advance(0.05)
        yield {"model": MODEL, "choices": [{"delta": {"content": "hi"}}]}

    list(stream())
    assert hist(registry, FIRST, labels(MODEL)) == (1.0, pytest.approx(0.05))
    assert series(registry, PER_CHUNK) == []


def test_an_sdk_stream_returned_by_the_call_is_timed_chunk_by_chunk(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    class Stream:
        """An SDK stream: an iterator the decorated function returns."""

        def __init__(self) -> None:
            self.left = 4

        def __iter__(self) -> Stream:
            return self

        def __next__(self) -> dict[str, Any]:
            if not self.left:
                raise StopIteration
            self.left -= 1
            clock.advance(0.1)
            return {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    @on.track_ai_call("openai", MODEL)
    def ask() -> Stream:
        return Stream()

    assert len(list(ask())) == 4
    assert hist(registry, FIRST, labels(MODEL)) == (1.0, pytest.approx(0.1))
    assert hist(registry, PER_CHUNK, labels(MODEL)) == (3.0, pytest.approx(0.3))


async def test_an_async_stream_counts_its_chunks(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    async def stream() -> AsyncIterator[dict[str, Any]]:
        for _ in range(3):
            clock.advance(0.25)
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    assert len([chunk async for chunk in stream()]) == 3
    assert hist(registry, FIRST, labels(MODEL)) == (1.0, pytest.approx(0.25))
    assert hist(registry, PER_CHUNK, labels(MODEL)) == (2.0, pytest.approx(0.5))


def test_an_error_is_its_class_name_and_records_no_tokens(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    class RateLimitError(Exception):
        status_code = 429

    @on.track_ai_call("openai", MODEL)
    def ask() -> None:
        clock.advance(0.08)
        raise RateLimitError("slow down")

    with pytest.raises(RateLimitError, match="slow down"):
        ask()
    # No response: no response model ("", which Prometheus reads as no label).
    assert hist(registry, DURATION, labels("", error="RateLimitError")) == (
        1.0,
        pytest.approx(0.08),
    )
    assert series(registry, DURATION) == [labels("", error="RateLimitError")]
    assert series(registry, TOKENS) == []


def test_a_call_without_usage_records_no_token_observation(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        clock.advance(0.01)
        return {"model": MODEL, "choices": [{"finish_reason": "stop"}]}

    ask()
    assert hist(registry, DURATION, labels(MODEL)) == (1.0, pytest.approx(0.01))
    assert series(registry, TOKENS) == []


def test_an_embeddings_call_records_input_tokens_only(
    on: Instrumentation, registry: CollectorRegistry
) -> None:
    @on.track_ai_call("openai", "text-embedding-3-small", operation="embeddings")
    def embed() -> dict[str, Any]:
        return {"model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}

    embed()
    found = series(registry, TOKENS)
    assert [s["gen_ai_token_type"] for s in found] == ["input"]
    assert found[0]["gen_ai_operation_name"] == "embeddings"
    assert registry.get_sample_value(f"{TOKENS}_sum", found[0]) == 8


def test_a_stream_closed_early_is_cancelled(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        for _ in range(10):
            clock.advance(0.1)
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    chunks = stream()
    next(chunks)
    next(chunks)
    chunks.close()
    where = labels(MODEL, error="cancelled")
    assert hist(registry, DURATION, where) == (1.0, pytest.approx(0.2))
    assert hist(registry, PER_CHUNK, where) == (1.0, pytest.approx(0.1))


def test_a_stream_garbage_collected_unfinished_is_cancelled_at_its_last_chunk(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    import gc

    from instrument.ai import record_abandoned_streams

    class Stream:
        def __iter__(self) -> Stream:
            return self

        def __next__(self) -> dict[str, Any]:
            clock.advance(0.2)
            return {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    @on.track_ai_call("openai", MODEL)
    def ask() -> Stream:
        return Stream()

    def read_three() -> None:
        stream = ask()
        for _ in range(3):
            next(stream)

    read_three()
    clock.advance(10)  # collected long after: the duration ends at the last chunk seen
    gc.collect()
    record_abandoned_streams()
    where = labels(MODEL, error="cancelled")
    assert hist(registry, DURATION, where) == (1.0, pytest.approx(0.6))
    assert hist(registry, FIRST, where) == (1.0, pytest.approx(0.2))
    assert hist(registry, PER_CHUNK, where) == (2.0, pytest.approx(0.4))


def test_the_model_is_the_argument_and_the_response_names_its_own(
    on: Instrumentation, registry: CollectorRegistry
) -> None:
    @on.track_ai_call("openai", normalize_model=lambda m: m.split("-20")[0])
    def ask(model: str) -> dict[str, Any]:
        return {"model": f"{model}-2024-08-06", "usage": {"prompt_tokens": 1}}

    ask("gpt-4o-mini")
    # normalize_model folds the toolkit's label only; the conventions take the raw names.
    (found,) = series(registry, DURATION)
    assert found["gen_ai_request_model"] == "gpt-4o-mini"
    assert found["gen_ai_response_model"] == "gpt-4o-mini-2024-08-06"
    toolkit = {"provider": "openai", "model": "gpt-4o-mini"}
    assert registry.get_sample_value("codomyrmex_ai_call_duration_seconds_count", toolkit) == 1


def test_a_with_block_records_set_model_and_the_response_model(
    on: Instrumentation, registry: CollectorRegistry
) -> None:
    with on.track_ai_call("openai") as call:
        call.set_model("gpt-4.1")
        call.record_response(usage_response())
    (found,) = series(registry, DURATION)
    assert found["gen_ai_request_model"] == "gpt-4.1"
    assert found["gen_ai_response_model"] == "gpt-4o-2024-08-06"


def test_request_and_response_models_are_bounded_by_max_models(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(registry=registry, genai_semconv=True, max_models=2)

    @inst.track_ai_call("openai")
    def ask(model: str) -> dict[str, Any]:
        return {"model": model}

    for model in ("a", "b", "c", "d", "a"):
        ask(model)
    requests = sorted(s["gen_ai_request_model"] for s in series(registry, DURATION))
    assert requests == ["a", "b", "other"]
    assert registry.get_sample_value(f"{DURATION}_count", labels("other", request="other")) == 2
    assert [r for r in caplog.records if "gen_ai_* metrics" in r.getMessage()] != []
    assert len([r for r in caplog.records if "gen_ai_* metrics" in r.getMessage()]) == 1


def test_a_model_name_with_a_lone_surrogate_is_escaped_not_a_broken_scrape(
    on: Instrumentation, registry: CollectorRegistry
) -> None:
    from prometheus_client import generate_latest

    @on.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return {"model": "gpt\udc80"}

    ask()
    assert b'gen_ai_response_model="gpt\\\\udc80"' in generate_latest(registry)


# -- on and off ---------------------------------------------------------------------------------


def workload(inst: Instrumentation, clock: FakeClock) -> None:
    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        clock.advance(0.4)
        return usage_response(cached=2)

    @inst.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        for _ in range(3):
            clock.advance(0.1)
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    @inst.track_ai_call("openai", MODEL)
    def fail() -> None:
        raise TimeoutError

    ask()
    list(stream())
    with pytest.raises(TimeoutError):
        fail()


def toolkit_samples(registry: CollectorRegistry) -> set[tuple[str, tuple[Any, ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_off_registers_no_gen_ai_family_and_changes_nothing(clock: FakeClock) -> None:
    off, on = CollectorRegistry(), CollectorRegistry()
    workload(Instrumentation(registry=off), clock)
    clock.now = 0.0  # the same readings again
    workload(Instrumentation(registry=on, genai_semconv=True), clock)
    assert families(off) == set()
    assert families(on) == set(FAMILIES)
    mine = {s for s in toolkit_samples(on) if not s[0].startswith("gen_ai")}
    assert toolkit_samples(off) == mine


def test_disabled_registers_no_gen_ai_family(registry: CollectorRegistry) -> None:
    Instrumentation(registry=registry, genai_semconv=True, enabled=False)
    assert families(registry) == set()


def test_the_environment_variable_turns_it_on_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_environment({"INSTRUMENT_GENAI_SEMCONV": "1"}) == {"genai_semconv": True}
    assert from_environment({"INSTRUMENT_GENAI_SEMCONV": "off"}) == {"genai_semconv": False}
    with pytest.raises(ValueError, match="INSTRUMENT_GENAI_SEMCONV='maybe' is not valid"):
        from_environment({"INSTRUMENT_GENAI_SEMCONV": "maybe"})
    saved = replace_default(None)
    try:
        for value, registered in (("1", True), ("0", False)):
            monkeypatch.setenv("INSTRUMENT_GENAI_SEMCONV", value)
            registry = CollectorRegistry()
            inst = configure(registry=registry)
            assert inst.genai_semconv is registered
            assert families(registry) == (set(FAMILIES) if registered else set())
    finally:
        current = replace_default(saved)
        if current is not None:
            discard(current)


def test_the_default_shows_the_families_on_the_global_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import REGISTRY, generate_latest

    from instrument import track_ai_call

    saved = replace_default(None)
    try:
        configure(genai_semconv=True)

        @track_ai_call("openai", MODEL)
        def ask() -> dict[str, Any]:
            return usage_response()

        ask()
        text = generate_latest(REGISTRY).decode()
        assert "# TYPE gen_ai_client_token_usage histogram" in text
        assert 'gen_ai_client_operation_duration_seconds_count{error_type=""' in text
    finally:
        current = replace_default(saved)
        if current is not None:
            discard(current)
    assert "gen_ai_client" not in generate_latest(REGISTRY).decode()


def test_pushed_to_a_real_pushgateway(pushgateway: Any, job_name: str) -> None:
    inst = Instrumentation(
        pushgateway=pushgateway.url, job=job_name, push_mode="off", genai_semconv=True
    )

    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return usage_response(prompt=300, completion=20)

    ask()
    ask()
    assert inst.push()
    where = {"job": job_name, "gen_ai_token_type": "input"}
    assert pushgateway.value(f"{TOKENS}_sum", **where) == 600
    assert pushgateway.value(f"{TOKENS}_count", **where) == 2
    inst.close()


def test_genai_semconv_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="genai_semconv must be True or False"):
        Instrumentation(genai_semconv="yes")  # type: ignore[arg-type]


def test_instrumentations_on_one_registry_share_the_families(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    first = Instrumentation(registry=registry, genai_semconv=True)
    second = Instrumentation(registry=registry, namespace="other", genai_semconv=True)
    for inst in (first, second):

        @inst.track_ai_call("openai", MODEL)
        def ask() -> dict[str, Any]:
            clock.advance(0.5)
            return {"model": MODEL}

        ask()
    assert hist(registry, DURATION, labels(MODEL)) == (2.0, pytest.approx(1.0))


def test_a_clash_on_the_registry_is_refused_and_leaves_it_as_it_was() -> None:
    registry = CollectorRegistry()
    Histogram("gen_ai_client_operation_duration_seconds", "theirs", registry=registry)
    before = {m.name for m in registry.collect()}
    with pytest.raises(ValueError, match="give the Instrumentation a registry of its own"):
        Instrumentation(registry=registry, genai_semconv=True)
    assert {m.name for m in registry.collect()} == before
    # Without the gen_ai_* families the same registry is fine, and so is a retry on another.
    Instrumentation(registry=registry)
    assert families(registry) == {"gen_ai_client_operation_duration_seconds"}


# -- hostile ----------------------------------------------------------------------------------


@settings(max_examples=40)
@given(
    gaps=st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=200, allow_nan=False),
            st.sampled_from(GENAI_SECONDS_BUCKETS),
        ),
        max_size=30,
    ),
    tokens=st.integers(min_value=0, max_value=10**9),
)
def test_buckets_agree_with_prometheus_client_observing_the_same_values(
    gaps: list[float], tokens: int
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, genai_semconv=True)
    clock = FakeClock()
    mp = pytest.MonkeyPatch()
    from instrument.ai import _call, _streams

    mp.setattr(_call, "perf_counter", clock)
    mp.setattr(_streams, "perf_counter", clock)
    try:

        @inst.track_ai_call("openai", MODEL)
        def stream() -> Iterator[dict[str, Any]]:
            yield {"model": MODEL}
            for gap in gaps:
                clock.advance(gap)
                yield {"choices": [{"delta": {"content": "x"}}]}
            yield {"usage": {"prompt_tokens": tokens, "completion_tokens": 0}}

        list(stream())
    finally:
        mp.undo()
    reference = CollectorRegistry()
    per_chunk = Histogram("ref_gaps", "", buckets=GENAI_SECONDS_BUCKETS, registry=reference)
    usage = Histogram("ref_tokens", "", buckets=GENAI_TOKEN_BUCKETS, registry=reference)
    # The gaps as the clock's readings give them (a bound may move by a rounding).
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    for before, after in zip(times, [*times[1:], times[-1]], strict=True):
        per_chunk.observe(after - before)
    usage.observe(tokens)
    where = labels(MODEL)
    for le in [*GENAI_SECONDS_BUCKETS, float("inf")]:
        expected = reference.get_sample_value("ref_gaps_bucket", {"le": floatToGoString(le)})
        assert bucket(registry, PER_CHUNK, where, le) == expected
    input_labels = {**labels(MODEL, error=None), "gen_ai_token_type": "input"}
    for le in [*GENAI_TOKEN_BUCKETS, float("inf")]:
        expected = reference.get_sample_value("ref_tokens_bucket", {"le": floatToGoString(le)})
        assert bucket(registry, TOKENS, input_labels, le) == expected
    assert hist(registry, PER_CHUNK, where)[0] == len(gaps) + 1


def test_threads_lose_no_observation(on: Instrumentation, registry: CollectorRegistry) -> None:
    @on.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        for _ in range(5):
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}
        yield {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}

    def work() -> None:
        for _ in range(200):
            list(stream())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hist(registry, DURATION, labels(MODEL))[0] == 800
    assert hist(registry, PER_CHUNK, labels(MODEL))[0] == 800 * 5
    input_labels = {**labels(MODEL, error=None), "gen_ai_token_type": "input"}
    assert hist(registry, TOKENS, input_labels) == (800.0, 1600.0)


def test_a_long_stream_folds_its_gaps_exactly(
    on: Instrumentation, registry: CollectorRegistry, clock: FakeClock
) -> None:
    @on.track_ai_call("openai", MODEL)
    def stream() -> Iterator[dict[str, Any]]:
        for i in range(1000):
            clock.advance(0.5 if i == 600 else 0.001)
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    assert len(list(stream())) == 1000
    count, total = hist(registry, PER_CHUNK, labels(MODEL))
    assert (count, total) == (999.0, pytest.approx(998 * 0.001 + 0.5))
    assert bucket(registry, PER_CHUNK, labels(MODEL), 0.01) == 998
    assert bucket(registry, PER_CHUNK, labels(MODEL), 0.32) == 998
    assert bucket(registry, PER_CHUNK, labels(MODEL), 0.64) == 999


def test_two_streams_of_one_call_read_in_two_threads_lose_no_chunk(
    on: Instrumentation, registry: CollectorRegistry
) -> None:
    def chunks() -> Iterator[dict[str, Any]]:
        for _ in range(700):
            yield {"model": MODEL, "choices": [{"delta": {"content": "x"}}]}

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads' chunks interleave
    try:
        with on.track_ai_call("openai", MODEL) as call:
            streams = [call.record_response(chunks()) for _ in range(2)]
            threads = [threading.Thread(target=lambda s=s: list(s)) for s in streams]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    # 1400 chunks of one call: the first, and 1399 gaps after it.
    assert hist(registry, PER_CHUNK, labels(MODEL))[0] == 1399
    assert hist(registry, FIRST, labels(MODEL))[0] == 1


@pytest.mark.subprocess
def test_multiprocess_mode_records_directly_and_exactly(tmp_path: Path) -> None:
    code = """
        from instrument import Instrumentation

        inst = Instrumentation(registry=CollectorRegistry(), genai_semconv=True)

        @inst.track_ai_call("openai", "gpt-4o")
        def stream():
            yield {"model": "gpt-4o"}
            yield {"usage": {"prompt_tokens": 4, "completion_tokens": 1}}

        def worker(n):
            for _ in range(50):
                list(stream())

        if __name__ == "__main__":
            collected = run_forked(worker, 3)
            base = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
                    "gen_ai_request_model": "gpt-4o", "gen_ai_response_model": "gpt-4o"}
            print(collected.get_sample_value(
                "gen_ai_client_operation_time_per_output_chunk_seconds_count",
                {**base, "error_type": ""}))
            print(collected.get_sample_value(
                "gen_ai_client_token_usage_sum", {**base, "gen_ai_token_type": "input"}))
    """
    # The script beside the workers' files: the collector reads only *.db.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = run_script(tmp_path / "script.py", code, env, prelude=FORKED_WORKERS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["150.0", "600.0"]


# -- side by side with the OpenTelemetry SDK and its Prometheus exporter ----------------------------


class OTelGenAI:
    """The same calls recorded the OpenTelemetry way: the SDK's histograms, named, united
    and bucketed as the GenAI conventions say (explicit bucket advice), attributes set only
    when known (error.type only on an error), exported by opentelemetry-exporter-prometheus."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider

        self.provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
        meter = self.provider.get_meter("side-by-side")
        seconds = list(GENAI_SECONDS_BUCKETS)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            explicit_bucket_boundaries_advisory=list(GENAI_TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            explicit_bucket_boundaries_advisory=seconds,
        )
        self.first = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            explicit_bucket_boundaries_advisory=seconds,
        )
        self.per_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            unit="s",
            explicit_bucket_boundaries_advisory=seconds,
        )

    def call(self, clock: FakeClock, call: Call) -> None:
        attrs = {"gen_ai.operation.name": call.operation, "gen_ai.provider.name": "openai"}
        if call.model:
            attrs["gen_ai.request.model"] = call.model
        t0 = clock()
        read: list[dict[str, Any]] = []
        first = last = None
        gaps: list[float] = []
        try:
            result = call.run(clock)
            if isinstance(result, dict):
                read.append(result)
            else:
                for chunk in result:
                    now = clock()
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - last)  # type: ignore[operator]
                    last = now
                    read.append(chunk)
            error = None
        except Exception as exc:
            error = type(exc).__name__
        end = clock()
        model = next((r["model"] for r in read if "model" in r), None)
        if model is not None:
            attrs["gen_ai.response.model"] = model
        usage = next((r["usage"] for r in read if "usage" in r), None)
        timed = attrs if error is None else {**attrs, "error.type": error}
        self.duration.record(end - t0, timed)
        if first is not None:
            self.first.record(first - t0, timed)
        for gap in gaps:
            self.per_chunk.record(gap, timed)
        if usage is not None:
            self.tokens.record(usage["prompt_tokens"], {**attrs, "gen_ai.token.type": "input"})
            if call.operation != "embeddings":
                output = usage["completion_tokens"]
                self.tokens.record(output, {**attrs, "gen_ai.token.type": "output"})


class Call:
    """One scripted LLM call: what it returns (or yields, or raises) and when."""

    def __init__(self, kind: str, model: str | None = MODEL, operation: str = "chat") -> None:
        self.kind = kind
        self.model = model
        self.operation = operation

    def run(self, clock: FakeClock) -> Any:
        if self.kind == "chat":
            clock.advance(0.3)
            return usage_response(prompt=1000, completion=70, cached=600)
        if self.kind == "embeddings":
            clock.advance(0.02)
            return {"model": "text-embedding-3-small", "usage": {"prompt_tokens": 9}}
        if self.kind == "no_usage":
            clock.advance(1.1)
            return {"choices": [{"finish_reason": "stop"}]}
        if self.kind == "error":
            clock.advance(0.08)
            raise TimeoutError("the provider hung")
        return self._stream(clock)

    def _stream(self, clock: FakeClock) -> Iterator[dict[str, Any]]:
        clock.advance(0.25)
        yield {"model": "gpt-4o-x", "choices": [{"delta": {"role": "assistant"}}]}
        for gap in (0.005, 0.03, 0.7, 3.0):
            clock.advance(gap)
            yield {"choices": [{"delta": {"content": "hi"}}]}
        clock.advance(0.01)
        yield {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 4}}


CALLS = [
    Call("chat"),
    Call("chat"),
    Call("stream"),
    Call("error"),
    Call("no_usage", model=None),
    Call("embeddings", model="text-embedding-3-small", operation="embeddings"),
]


def ours(inst: Instrumentation, clock: FakeClock, call: Call) -> None:
    tracker = inst.track_ai_call("openai", call.model, operation=call.operation)
    if call.kind == "stream":

        @tracker
        def stream() -> Iterator[dict[str, Any]]:
            yield from call.run(clock)

        list(stream())
        return

    @tracker
    def ask() -> Any:
        return call.run(clock)

    with contextlib.suppress(TimeoutError):
        ask()


Scraped = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scraped(result: list[dict[str, Any]], instance: str) -> Scraped:
    """One target's gen_ai_* samples as Prometheus holds them: by name and labels, without
    the scrape's own labels and the exporter's otel_scope_*; ``le`` read as a number."""
    found: Scraped = {}
    for sample in result:
        metric = dict(sample["metric"])
        if metric.pop("instance") != instance:
            continue
        name = metric.pop("__name__")
        if name == "target_info":
            continue
        metric.pop("job")
        labels = {k: v for k, v in metric.items() if not k.startswith("otel_scope_")}
        if "le" in labels:
            labels["le"] = repr(float(labels["le"]))
        found[(name, frozenset(labels.items()))] = float(sample["value"][1])
    return found


@pytest.fixture(scope="module")
def side_by_side() -> Iterator[tuple[Scraped, Scraped, set[str]]]:
    from prometheus_client import start_http_server

    from ..servers import Prometheus, Pushgateway, free_port

    mp = pytest.MonkeyPatch()
    clock = FakeClock()
    from instrument.ai import _call, _streams

    mp.setattr(_call, "perf_counter", clock)
    mp.setattr(_streams, "perf_counter", clock)
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    inst = Instrumentation(registry=mine, genai_semconv=True)
    otel = OTelGenAI(theirs)
    try:
        for call in CALLS:
            ours(inst, clock, call)
        clock.now = 0.0  # the same readings for the same calls
        for call in CALLS:
            otel.call(clock, call)
    finally:
        mp.undo()
    ports = free_port(), free_port()
    servers = [inst.start_http_server(ports[0]), start_http_server(ports[1], "127.0.0.1", theirs)]
    targets = tuple(f"127.0.0.1:{port}" for port in ports)
    # It scrapes no gateway (the one it is given is never started): only the two targets.
    prometheus = Prometheus(Pushgateway(), extra_targets=targets).start()
    try:
        expr = '{__name__=~"gen_ai_.*|target_info", job="app"}'
        for target in targets:
            prometheus.wait_for(f"{DURATION}_count", instance=target)
        result = prometheus.query(expr)
    finally:
        # Everything is stopped before the tests read the results: a scrape of our
        # registry runs the engine's deferred work, which must not land in later tests.
        prometheus.stop()
        for server in servers:
            if isinstance(server, tuple):
                server[0].shutdown()
            else:
                server.shutdown()
        otel.provider.shutdown()
        inst.close()
    names = {s["metric"]["__name__"] for s in result if s["metric"]["instance"] == targets[1]}
    yield scraped(result, targets[0]), scraped(result, targets[1]), names


def shape(samples: Scraped) -> dict[str, set[str]]:
    """Each metric name with the label names its series carry."""
    found: dict[str, set[str]] = {}
    for name, labels in samples:
        found.setdefault(name, set()).update(k for k, _ in labels)
    return found


def le_values(samples: Scraped) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, labels in samples:
        for key, value in labels:
            if key == "le":
                found.setdefault(name, set()).add(value)
    return found


@pytest.mark.integration
def test_names_and_label_names_match_the_otel_exporters(
    side_by_side: tuple[Scraped, Scraped, set[str]],
) -> None:
    mine, theirs, names = side_by_side
    assert "target_info" in names  # the exporter's own family, left out of the comparison
    assert shape(mine) == shape(theirs)
    assert set(shape(mine)) == {f"{f}_{s}" for f in FAMILIES for s in ("bucket", "count", "sum")}
    assert shape(mine)[f"{TOKENS}_bucket"] == {
        *labels(MODEL, error=None),
        "gen_ai_token_type",
        "le",
    }


@pytest.mark.integration
def test_le_sets_match_the_otel_exporters(
    side_by_side: tuple[Scraped, Scraped, set[str]],
) -> None:
    mine, theirs, _ = side_by_side
    assert le_values(mine) == le_values(theirs)
    assert len(le_values(mine)[f"{TOKENS}_bucket"]) == len(GENAI_TOKEN_BUCKETS) + 1


@pytest.mark.integration
def test_the_same_calls_give_the_same_values(
    side_by_side: tuple[Scraped, Scraped, set[str]],
) -> None:
    mine, theirs, _ = side_by_side
    assert set(mine) == set(theirs)
    assert mine == {key: pytest.approx(value) for key, value in theirs.items()}
    # And they are the values the calls had, not merely equal: two chats of 1000 input tokens.
    chat = frozenset(
        {**labels("gpt-4o-2024-08-06", error=None), "gen_ai_token_type": "input"}.items()
    )
    assert mine[(f"{TOKENS}_sum", chat)] == 2000
    errors = [
        k for k in mine if k[0] == f"{DURATION}_count" and ("error_type", "TimeoutError") in k[1]
    ]
    assert [mine[k] for k in errors] == [1.0]


# -- the dashboard: spend by the first attribution label ------------------------------------------

PRICES = {MODEL: {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}


def spend_panels(source: Any) -> list[dict[str, Any]]:
    from instrument.dashboard import build_dashboard

    return [p for p in build_dashboard(source)["panels"] if p["title"].startswith("AI spend by")]


def test_the_spend_panel_follows_the_first_attribution_label(registry: CollectorRegistry) -> None:
    assert spend_panels(Instrumentation(registry=registry)) == []
    assert spend_panels("codomyrmex") == []
    inst = Instrumentation(registry=CollectorRegistry(), attribution=("tenant", "team"))
    for source in (inst, inst.metrics):
        (panel,) = spend_panels(source)
        assert panel["title"] == "AI spend by tenant"
        assert panel["fieldConfig"]["defaults"]["unit"] == "currencyUSD"
        (target,) = panel["targets"]
        assert target["expr"] == (
            "sum by (tenant) (increase(codomyrmex_ai_cost_usd_total"
            '{provider=~"$provider", model=~"$model"}[$__range]))'
        )
        assert target["legendFormat"] == "{{tenant}}"


def test_the_spend_panel_shows_each_tenants_spend_in_prometheus(
    pushgateway: Any, prometheus_server: Any, job_name: str
) -> None:
    import time

    from ..test_dashboard import substitute

    inst = Instrumentation(
        pushgateway=pushgateway.url,
        job=job_name,
        namespace="spendpanel",
        push_mode="off",
        attribution=("tenant",),
        prices=PRICES,
    )

    @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["tenant"]})
    def ask(tenant: str) -> dict[str, Any]:
        return usage_response(prompt=1000, completion=500)

    def round_of_calls() -> None:
        for tenant in ("acme", "acme", "acme", "globex"):
            ask(tenant)
        assert inst.push()

    (panel,) = spend_panels(inst)
    # The panel's query as Grafana sends it, kept to this test's job.
    expr = substitute(panel["targets"][0]["expr"]).replace("}[", f', job="{job_name}"}}[')
    round_of_calls()
    prometheus_server.wait_for(f'spendpanel_ai_cost_usd_total{{job="{job_name}"}}')
    round_of_calls()
    deadline = time.monotonic() + 30
    spend: dict[str, float] = {}
    while time.monotonic() < deadline:
        result = prometheus_server.query(expr)
        spend = {s["metric"]["tenant"]: float(s["value"][1]) for s in result}
        if spend.get("globex", 0) > 0:
            break
        time.sleep(0.25)
    assert set(spend) == {"acme", "globex"}
    # Both tenants' series were scraped at the same moments: the same extrapolation, so
    # the ratio is the calls' (three to one) exactly.
    assert spend["acme"] / spend["globex"] == pytest.approx(3)
    inst.close()


# -- every SDK path of the matrix (the real SDKs against the local wire-format server) ------------


@pytest.fixture(scope="module")
def llm_server(offline: None) -> Iterator[Any]:
    from .test_sdk_matrix import matrix_server

    with matrix_server() as server:
        yield server


def _matrix() -> list[Any]:
    from .test_sdk_matrix import CASES

    return CASES


@pytest.mark.sdk
@pytest.mark.parametrize("case", _matrix(), ids=[c.id for c in _matrix()])
def test_every_sdk_path_records_the_conventions_metrics(
    case: Any, llm_server: Any, on: Instrumentation, registry: CollectorRegistry
) -> None:
    from ..support import require_sdk
    from .test_sdk_matrix import Ctx, run

    sdk = require_sdk(case.sdk)
    with contextlib.suppress(Exception):  # a failing case raises, as its SDK does
        run(case, Ctx(llm_server, on, sdk))
    expect = case.expect
    durations = series(registry, DURATION)
    assert {s["gen_ai_provider_name"] for s in durations} == {case.provider}
    assert {s["gen_ai_request_model"] for s in durations} == {case.model}
    count = sum(registry.get_sample_value(f"{DURATION}_count", s) or 0 for s in durations)
    assert count == expect.calls
    errors = {s["error_type"] for s in durations}
    if expect.status == "success":
        assert errors == {""}
        # Every provider's answer names its model, except Cohere v2's (its ChatResponse has
        # no model field): the response model is read, or "" (no label) when absent.
        named = {bool(s["gen_ai_response_model"]) for s in durations}
        assert named == {case.provider != "cohere"}, durations
    elif expect.error is not None:
        assert errors == {expect.error[0]}
    tokens = {
        kind: sum(
            registry.get_sample_value(f"{TOKENS}_sum", s) or 0
            for s in series(registry, TOKENS)
            if s["gen_ai_token_type"] == kind
        )
        for kind in ("input", "output")
    }
    if expect.usage_missing == expect.calls:
        assert series(registry, TOKENS) == []
    else:
        assert tokens == {"input": expect.input, "output": expect.output}
    if expect.streamed and expect.status == "success":
        firsts = sum(
            registry.get_sample_value(f"{FIRST}_count", s) or 0 for s in series(registry, FIRST)
        )
        assert firsts == expect.calls
        assert (
            sum(
                registry.get_sample_value(f"{PER_CHUNK}_count", s) or 0
                for s in series(registry, PER_CHUNK)
            )
            >= expect.calls
        )
