"""Issues 13 and 15: what a tracked call's end looks up once rather than per call, and that
none of it changes a count. The fixed model's attributed series are remembered by the
values a call gave (``AttributedSeries``), the plain series and the gen_ai recorder sit on
the binding, the usual finish reason's slot is taken without a call; each test reads the
counts back from the registry."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

import instrument
from instrument import Instrumentation
from instrument.ai import _attribution
from instrument.ai._outcome import KNOWN_REASONS
from instrument.metrics import Metrics

from ..support import FORKED_WORKERS, counted, run_script

MODEL = "gpt-4o"


def chat(reason: str = "stop", prompt: int = 12, completion: int = 5) -> dict[str, Any]:
    return {
        "model": MODEL,
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": reason}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def tenant_calls(registry: CollectorRegistry, tenant: str, model: str = MODEL) -> float:
    return counted(
        registry,
        "ai_api_calls_total",
        provider="openai",
        model=model,
        status="success",
        tenant=tenant,
    )


def tenant_tokens(registry: CollectorRegistry, tenant: str) -> float:
    return counted(
        registry,
        "ai_tokens_used_total",
        provider="openai",
        model=MODEL,
        token_type="input",
        tenant=tenant,
    )


@pytest.fixture
def attributed(registry: CollectorRegistry) -> Iterator[Instrumentation]:
    inst = Instrumentation(
        registry=registry, push_mode="off", attribution=("tenant",), max_attribution_values=2
    )
    yield inst
    inst.close()


def by_tenant(inst: Instrumentation, model: str | None = MODEL, **options: Any) -> Any:
    @inst.track_ai_call("openai", model, attribution={"tenant": lambda a: a["tenant"]}, **options)
    def ask(tenant: Any, reason: str = "stop") -> dict[str, Any]:
        return chat(reason)

    return ask


# -- a call without usage ------------------------------------------------------------------------


def test_a_call_without_usage_builds_the_warning_once(
    inst: Instrumentation, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usage-missing warning named the metric through ``Metrics.names()`` (every
    metric's name built anew) on every call without usage, warned or not: a stream
    without ``include_usage`` paid it on each call. Only the warned call builds it."""
    built: list[int] = []
    names = Metrics.names

    def counting(self: Metrics) -> dict[str, str]:
        built.append(1)
        return names(self)

    monkeypatch.setattr(Metrics, "names", counting)

    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return {"choices": [{"message": {}, "finish_reason": "stop"}]}

    for _ in range(20):
        ask()
    assert len(built) == 1
    labels = {"provider": "openai", "model": MODEL}
    assert counted(registry, "ai_usage_missing_total", **labels) == 20
    assert counted(registry, "ai_api_calls_total", status="success", **labels) == 20


# -- the attributed series, remembered by the values given -----------------------------------


def test_values_past_the_cap_stay_other_on_every_later_call(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    ask = by_tenant(attributed)
    for tenant in ("a", "b", "c", "d", "a", "c", "b", "d", "c"):
        ask(tenant)
    assert tenant_calls(registry, "a") == 2
    assert tenant_calls(registry, "b") == 2
    assert tenant_calls(registry, "other") == 5  # c three times, d twice
    assert tenant_calls(registry, "c") == 0 and tenant_calls(registry, "d") == 0
    assert tenant_tokens(registry, "other") == 5 * 12


def test_past_the_memory_of_values_each_call_is_mapped_afresh(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_attribution, "ATTRIBUTED_KEPT", 2)
    inst = Instrumentation(
        registry=registry, push_mode="off", attribution=("tenant",), max_attribution_values=4
    )
    ask = by_tenant(inst)
    tenants = ["a", "b", "c", "d", "e", "f"]
    for _ in range(3):
        for tenant in tenants:
            ask(tenant)
    for tenant in "abcd":
        assert tenant_calls(registry, tenant) == 3
    assert tenant_calls(registry, "other") == 6  # e and f, past the cap of 4
    inst.close()


class Flipping:
    """A value whose ``str()`` changes between calls: what the label is must be read again
    each time, never remembered by the object."""

    def __init__(self) -> None:
        self.calls = 0

    def __str__(self) -> str:
        self.calls += 1
        return f"t{self.calls}"


def test_values_that_are_no_strings_are_converted_on_every_call(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    ask = by_tenant(attributed)
    flipping = Flipping()
    ask(flipping)
    ask(flipping)
    ask(b"t1")
    assert tenant_calls(registry, "t1") == 2
    assert tenant_calls(registry, "t2") == 1


class Tenant(str):
    """A str subclass whose ``__str__`` says another name."""

    def __str__(self) -> str:
        return "liar"


def test_a_str_subclass_is_never_taken_for_its_equal_str(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    """Its label is what its ``__str__`` says, as the guard reads it: equal to (and
    hashing as) "acme", it must not find the series "acme" led to."""
    ask = by_tenant(attributed)
    ask(Tenant("acme"))
    ask("acme")
    ask(Tenant("acme"))
    ask("acme")
    assert tenant_calls(registry, "acme") == 2
    assert tenant_calls(registry, "liar") == 2


def test_a_with_block_s_own_values_and_a_missing_value(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    tracker = attributed.track_ai_call("openai", MODEL)
    for tenant in ("acme", "acme", None):
        with tracker as call:
            if tenant is not None:
                call.attribute(tenant=tenant)
            call.record_response(chat())
    with tracker as call:
        call.record_response(chat())
    assert tenant_calls(registry, "acme") == 2
    assert tenant_calls(registry, "") == 2


def test_a_call_that_sets_its_model_leaves_the_fixed_model_s_series(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    tracker = attributed.track_ai_call("openai", MODEL)
    with tracker as call:
        call.attribute(tenant="acme")
        call.set_model("gpt-4o-mini")
        call.record_response(chat())
    with tracker as call:
        call.attribute(tenant="acme")
        call.record_response(chat())
    assert tenant_calls(registry, "acme", model="gpt-4o-mini") == 1
    assert tenant_calls(registry, "acme") == 1


def test_the_remembered_series_follow_a_reconfigured_default(no_env: None) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    instrument.configure(registry=first, push_mode="off", attribution=("tenant",))
    try:

        @instrument.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["t"]})
        def ask(t: str) -> dict[str, Any]:
            return chat()

        ask("acme")
        ask("acme")
        instrument.configure(registry=second, push_mode="off", attribution=("tenant",))
        ask("acme")
        assert tenant_calls(first, "acme") == 2
        assert tenant_calls(second, "acme") == 1
        # Onto an Instrumentation without attribution: the label is gone, calls count.
        third = CollectorRegistry()
        instrument.configure(registry=third, push_mode="off")
        ask("acme")
        assert (
            counted(third, "ai_api_calls_total", provider="openai", model=MODEL, status="success")
            == 1
        )
    finally:
        instrument.configure(registry=CollectorRegistry(), push_mode="off")


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
def test_a_signal_in_a_callable_after_a_rebind_leaves_nothing_in_flight(
    no_env: None, signal: type[BaseException]
) -> None:
    """Rebound onto an Instrumentation with attribution (configure() changed the default),
    the values are still read before the call begins: a signal there leaves no job in
    flight (the values used to be read after the call had started, for this first call)."""
    instrument.configure(registry=CollectorRegistry(), push_mode="off")
    interrupt = False

    def tenant_of(arguments: Any) -> str:
        if interrupt:
            raise signal
        return str(arguments["t"])

    try:

        @instrument.track_ai_call("openai", MODEL, attribution={"tenant": tenant_of})
        def ask(t: str) -> dict[str, Any]:
            return chat()

        ask("before")  # bound to a default without attribution
        rebound = CollectorRegistry()
        instrument.configure(registry=rebound, push_mode="off", attribution=("tenant",))
        interrupt = True
        with pytest.raises(signal):
            ask("acme")
        assert rebound.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0
        interrupt = False
        ask("acme")  # and the next call is counted for its tenant
        assert tenant_calls(rebound, "acme") == 1
        assert rebound.get_sample_value("codomyrmex_active_jobs", {"job_type": "ai_call"}) == 0
    finally:
        instrument.configure(registry=CollectorRegistry(), push_mode="off")


def test_undeclared_labels_do_not_split_the_remembered_series(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    inst = Instrumentation(registry=registry, push_mode="off", attribution=("tenant",))
    caplog.set_level(logging.WARNING, logger="instrument")

    @inst.track_ai_call(
        "openai",
        MODEL,
        attribution={"tenant": lambda a: a["t"], "team": lambda a: a["team"]},
    )
    def ask(t: str, team: str) -> dict[str, Any]:
        return chat()

    ask("acme", "x")
    ask("acme", "y")
    assert tenant_calls(registry, "acme") == 2
    assert any("'team'" in r.getMessage() for r in caplog.records)
    inst.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["acme", "globex", "", "initech", "x" * 129]),
            st.text(max_size=6),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_every_call_counts_under_the_label_the_guard_gives(tenants: list[str]) -> None:
    """A reference model of the guard (cap 3, long values and those past the cap
    "other", "" as it is), against what the registry holds."""
    registry = CollectorRegistry()
    inst = Instrumentation(
        registry=registry, push_mode="off", attribution=("tenant",), max_attribution_values=3
    )
    ask = by_tenant(inst)
    admitted: list[str] = []
    expected: dict[str, int] = {}
    for tenant in tenants:
        ask(tenant)
        label = tenant.encode("utf-8", "backslashreplace").decode("utf-8")
        if label and len(label) > 128:
            label = "other"
        elif label and label not in admitted:
            if len(admitted) < 3:
                admitted.append(label)
            else:
                label = "other"
        expected[label] = expected.get(label, 0) + 1
    for label, count in expected.items():
        assert tenant_calls(registry, label) == count
    total = sum(
        s.value
        for metric in registry.collect()
        if metric.name == "codomyrmex_ai_api_calls"
        for s in metric.samples
        if s.name.endswith("_total")
    )
    assert total == len(tenants)
    inst.close()


# -- the arguments the attribution callables read --------------------------------------------


def test_the_callables_see_positional_keyword_and_default_arguments(
    registry: CollectorRegistry,
) -> None:
    inst = Instrumentation(
        registry=registry, push_mode="off", attribution=("tenant",), max_attribution_values=10
    )
    seen: list[dict[str, Any]] = []

    def tenant_of(arguments: Any) -> str:
        seen.append(dict(arguments))
        return str(arguments["tenant"])

    @inst.track_ai_call("openai", MODEL, attribution={"tenant": tenant_of})
    def ask(prompt: str, tenant: str = "fallback", *, region: str = "eu") -> dict[str, Any]:
        return chat()

    ask("hi")
    ask("hi", "acme")
    ask("hi", tenant="globex", region="us")
    ask(prompt="hi")
    assert seen == [
        {"prompt": "hi", "tenant": "fallback", "region": "eu"},
        {"prompt": "hi", "tenant": "acme", "region": "eu"},
        {"prompt": "hi", "tenant": "globex", "region": "us"},
        {"prompt": "hi", "tenant": "fallback", "region": "eu"},
    ]
    assert tenant_calls(registry, "fallback") == 2
    assert tenant_calls(registry, "acme") == 1 and tenant_calls(registry, "globex") == 1

    class Client:
        @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["tenant"]})
        def ask(self, tenant: str) -> dict[str, Any]:
            return chat()

    Client().ask("acme")
    Client().ask(tenant="acme")
    assert tenant_calls(registry, "acme") == 3
    # Arguments that cannot be bound: the call fails as it would undecorated, counted.
    with pytest.raises(TypeError):
        ask("hi", "acme", "too many")
    inst.close()


# -- finish reasons past the cells' spare numbers ---------------------------------------------


def test_reasons_past_the_spare_numbers_are_counted_directly(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    """Each cell keeps 24 spare numbers for counters named later; past them a reason's
    counter is incremented directly. Both kinds of reason count every call."""
    reasons = sorted(KNOWN_REASONS)[:30]

    @inst.track_ai_call("openai", MODEL)
    def ask(reason: str) -> dict[str, Any]:
        return chat(reason)

    for _ in range(3):
        for reason in reasons:
            ask(reason)
    labels = {"provider": "openai", "model": MODEL}
    for reason in reasons:
        assert counted(registry, "ai_finish_reasons_total", finish_reason=reason, **labels) == 3
    assert counted(registry, "ai_api_calls_total", status="success", **labels) == 90
    assert (
        counted(registry, "ai_operations_total", operation="chat", status="success", **labels) == 90
    )


class Untruthy:
    """A field whose truth value raises: a reader must never ask for it."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")

    def __len__(self) -> int:
        raise RuntimeError("no length")


def test_a_tool_calls_field_of_a_foreign_type_counts_no_tool_call(
    inst: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    response = chat()
    response["choices"][0]["message"]["tool_calls"] = Untruthy()

    @inst.track_ai_call("openai", MODEL)
    def ask() -> dict[str, Any]:
        return response

    assert ask() is response
    labels = {"provider": "openai", "model": MODEL}
    assert counted(registry, "ai_finish_reasons_total", finish_reason="stop", **labels) == 1
    assert counted(registry, "ai_tool_calls_total", **labels) == 0
    assert counted(registry, "ai_tokens_used_total", token_type="input", **labels) == 12
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- multiprocess mode: no cells, the same remembered series --------------------------------


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocess_mode_counts_attributed_calls(tmp_path: Path) -> None:
    code = """
        from instrument import Instrumentation

        inst = Instrumentation(
            registry=CollectorRegistry(), push_mode="off", attribution=("tenant",),
            max_attribution_values=2,
        )

        @inst.track_ai_call("openai", "gpt-4o", attribution={"tenant": lambda a: a["t"]})
        def ask(t):
            return {"usage": {"prompt_tokens": 3, "completion_tokens": 1},
                    "choices": [{"message": {}, "finish_reason": "stop"}]}

        def worker(n):
            for i in range(20):
                ask(("acme", "globex", "initech")[i % 3])

        if __name__ == "__main__":
            collected = run_forked(worker, 2)
            labels = {"provider": "openai", "model": "gpt-4o", "status": "success"}
            print([
                collected.get_sample_value("codomyrmex_ai_api_calls_total",
                    {**labels, "tenant": tenant})
                for tenant in ("acme", "globex", "other")
            ])
    """
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = run_script(tmp_path / "script.py", code, env, prelude=FORKED_WORKERS)
    assert result.returncode == 0, result.stderr
    # Per worker: 7 acme, 7 globex, 6 initech past the cap of 2.
    assert result.stdout.strip() == "[14.0, 14.0, 12.0]"


def test_two_labels_are_remembered_together_and_exactly(registry: CollectorRegistry) -> None:
    inst = Instrumentation(
        registry=registry, push_mode="off", attribution=("tenant", "team"), max_attribution_values=5
    )

    @inst.track_ai_call(
        "openai", MODEL, attribution={"tenant": lambda a: a["t"], "team": lambda a: a["team"]}
    )
    def ask(t: Any, team: Any) -> dict[str, Any]:
        return chat()

    for t, team in (("acme", "x"), ("acme", Tenant("x")), ("acme", "x"), ("acme", None)):
        ask(t, team)
    labels = {"provider": "openai", "model": MODEL, "status": "success", "tenant": "acme"}
    assert counted(registry, "ai_api_calls_total", team="x", **labels) == 2
    assert counted(registry, "ai_api_calls_total", team="liar", **labels) == 1
    assert counted(registry, "ai_api_calls_total", team="", **labels) == 1
    inst.close()


# -- gen_ai_* histograms recorded the way a job's end is ------------------------------------

GENAI_BASE = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": MODEL,
    "gen_ai_response_model": MODEL,
    "error_type": "",
}


def genai_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A gen_ai_* sample of the chat calls; the token histogram has no error_type."""
    base = dict(GENAI_BASE)
    if "gen_ai_token_type" in labels:
        del base["error_type"]
    return registry.get_sample_value(name, {**base, **labels}) or 0.0


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from([0, 1, 4, 5, 16, 4**13, 4**13 + 1]), st.integers(0, 10**6)),
            st.integers(0, 5000),
            st.sampled_from([0.0, 0.01, 0.0100001, 0.5, 81.92, 500.0]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_gen_ai_buckets_count_every_call_exactly(calls: list[tuple[int, int, float]]) -> None:
    """Each call's tokens in the bucket at or above them (their boundaries included), its
    duration likewise, the counts and sums those of the calls made."""
    from instrument.ai import _call as call_module
    from instrument.metrics import GENAI_SECONDS_BUCKETS, GENAI_TOKEN_BUCKETS

    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, push_mode="off", genai_semconv=True)
    tracker = inst.track_ai_call("openai", MODEL)
    now = [0.0]
    real = call_module.perf_counter
    call_module.perf_counter = lambda: now[0]  # type: ignore[assignment]
    try:
        for inputs, outputs, seconds in calls:
            now[0] = 0.0  # each call from 0: its duration is exactly ``seconds``
            with tracker as call:
                call.record_response(
                    {
                        "model": MODEL,
                        "usage": {"prompt_tokens": inputs, "completion_tokens": outputs},
                    }
                )
                now[0] += seconds
    finally:
        call_module.perf_counter = real  # type: ignore[assignment]
    tokens = "gen_ai_client_token_usage"
    duration = "gen_ai_client_operation_duration_seconds"
    for kind, counts in (("input", [c[0] for c in calls]), ("output", [c[1] for c in calls])):
        for bound in (*GENAI_TOKEN_BUCKETS, float("inf")):
            le = floatToGoString(bound)
            expected = sum(1 for n in counts if n <= bound)
            got = genai_value(registry, f"{tokens}_bucket", gen_ai_token_type=kind, le=le)
            assert got == expected, (kind, le)
        assert genai_value(registry, f"{tokens}_sum", gen_ai_token_type=kind) == sum(counts)
        assert genai_value(registry, f"{tokens}_count", gen_ai_token_type=kind) == len(calls)
    for bound in (*GENAI_SECONDS_BUCKETS, float("inf")):
        le = floatToGoString(bound)
        expected = sum(1 for c in calls if c[2] <= bound)
        assert genai_value(registry, f"{duration}_bucket", le=le) == expected, le
    assert genai_value(registry, f"{duration}_count") == len(calls)
    assert genai_value(registry, f"{duration}_sum") == pytest.approx(sum(c[2] for c in calls))
    inst.close()


def test_gen_ai_embeddings_and_calls_without_usage(registry: CollectorRegistry) -> None:
    inst = Instrumentation(registry=registry, push_mode="off", genai_semconv=True)
    embed = inst.track_ai_call("openai", MODEL, operation="embeddings")
    for _ in range(3):
        with embed as call:
            call.record_response({"model": MODEL, "usage": {"prompt_tokens": 7}})
    with inst.track_ai_call("openai", MODEL) as call:
        call.record_response({"model": MODEL})
    embeddings = {**GENAI_BASE, "gen_ai_operation_name": "embeddings"}
    tokens = "gen_ai_client_token_usage"
    token_labels = {k: v for k, v in embeddings.items() if k != "error_type"}
    input_count = registry.get_sample_value(
        f"{tokens}_count", {**token_labels, "gen_ai_token_type": "input"}
    )
    assert input_count == 3
    assert (
        registry.get_sample_value(f"{tokens}_sum", {**token_labels, "gen_ai_token_type": "input"})
        == 21
    )
    assert (
        registry.get_sample_value(
            f"{tokens}_count", {**token_labels, "gen_ai_token_type": "output"}
        )
        is None
    )
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert registry.get_sample_value(duration, embeddings) == 3
    assert genai_value(registry, duration) == 1
    assert genai_value(registry, f"{tokens}_count", gen_ai_token_type="input") == 0
    inst.close()
