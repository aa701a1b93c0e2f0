"""Objectives declared in code: checked when made and when given to a decorator, listed
by the instrumentation they are declared on, and never in the way of a decorated call.
Also build info, the series that says which build is running."""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import instrument
from instrument import Instrumentation, Objective, configure, monitored_analysis, track_ai_call
from instrument.config import from_environment, read_environment
from instrument.metrics import AI_DURATION_BUCKETS, ANALYSIS_DURATION_BUCKETS
from instrument.objectives import WINDOWS, Coverage, every_declared


def unique(prefix: str = "obj") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def inst() -> Instrumentation:
    return Instrumentation(registry=CollectorRegistry(), push_mode="off")


# -- made: each bad input its message ---------------------------------------------------------


@pytest.mark.parametrize("success", [0, 1, 1.5, -0.1, math.nan, math.inf, True, "0.99", None])
def test_success_must_lie_strictly_between_0_and_1(success: Any) -> None:
    with pytest.raises(ValueError, match=r"strictly between 0 and 1|exactly one of") as info:
        Objective("x", success=success)
    if success is not None:
        assert "success must lie strictly between 0 and 1" in str(info.value)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_success_share_is_taken_or_refused_with_its_reason(success: float) -> None:
    if 5 / 6 < success < 1:
        assert Objective("x", success=success).target == success
        return
    with pytest.raises(ValueError) as info:
        Objective("x", success=success)
    message = str(info.value)
    if 0 < success < 1:  # a budget too large for any burn rate to page
        assert "no burn-rate alert could page" in message and "0.834" in message
    else:
        assert "success must lie strictly between 0 and 1" in message


def test_the_budget_is_one_minus_the_objective_without_float_noise() -> None:
    assert Objective("x", success=0.995).budget == 0.005
    assert Objective("y", latency=(2.56, 0.99)).budget == 0.01


@given(st.text(max_size=6))
def test_the_window_is_one_of_the_four(window: str) -> None:
    if window in WINDOWS:
        assert Objective("x", success=0.99, window=window).window == window
        return
    with pytest.raises(ValueError, match="window must be one of 7d, 14d, 28d, 30d"):
        Objective("x", success=0.99, window=window)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of success=0.995"),
        ({"success": 0.99, "latency": (2.56, 0.99)}, "exactly one of"),
        ({"latency": 2.56}, r"\(seconds, share\) pair"),
        ({"latency": "2.56"}, r"\(seconds, share\) pair"),
        ({"latency": (2.56,)}, "got 1 values"),
        ({"latency": (0, 0.99)}, "positive number of seconds"),
        ({"latency": (math.inf, 0.99)}, "positive number of seconds"),
        ({"latency": (True, 0.99)}, "positive number of seconds"),
        ({"latency": (2.56, 1)}, "latency share must lie strictly between 0 and 1"),
        ({"success": 0.99, "min_events": 0}, "min_events must be a positive integer"),
        ({"success": 0.99, "min_events": 2.5}, "min_events must be a positive integer"),
        ({"success": 0.99, "window": 30}, "window must be one of"),
    ],
)
def test_bad_objectives_say_what_to_give(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Objective("x", **kwargs)


@pytest.mark.parametrize("name", ["", "  ", None, 5, "bad\udcff"])
def test_an_objective_needs_a_name_a_label_can_hold(name: Any) -> None:
    with pytest.raises(ValueError, match=r"non-empty name|lone surrogate"):
        Objective(name, success=0.99)


# -- given to a decorator ---------------------------------------------------------------------


def _boundaries(message: str) -> list[float]:
    listed = re.search(r"use one of ([0-9., ]+) \(", message)
    assert listed, message
    return [float(b) for b in listed[1].split(", ")]


@given(st.floats(min_value=0.001, max_value=1000, allow_nan=False))
def test_a_latency_threshold_must_be_a_bucket_boundary_of_the_histogram(seconds: float) -> None:
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    objective = Objective(unique(), latency=(seconds, 0.99))
    for decorate, buckets in (
        (lambda: inst.track_ai_call("openai", "gpt-4o", objective=objective), AI_DURATION_BUCKETS),
        (lambda: inst.monitored_analysis("m", "t", objective=objective), ANALYSIS_DURATION_BUCKETS),
    ):
        if seconds in buckets:
            decorate()
            continue
        with pytest.raises(ValueError, match="is not a bucket boundary") as info:
            decorate()
        assert _boundaries(str(info.value)) == [float(b) for b in buckets]


def test_the_threshold_follows_the_instrumentations_own_buckets() -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(), push_mode="off", buckets=(1.0, 2.0, 4000.0)
    )
    with pytest.raises(ValueError, match=r"use one of 1\.0, 2\.0, 4000\.0"):
        inst.monitored_analysis("m", "t", objective=Objective(unique(), latency=(0.5, 0.99)))
    inst.monitored_analysis("m", "t", objective=Objective(unique(), latency=(4000, 0.99)))


def test_two_different_objectives_may_not_share_a_name(inst: Instrumentation) -> None:
    name = unique()
    first = Objective(name, success=0.99)
    inst.monitored_analysis("m", "t", objective=first)
    # The same objective again, even rebuilt equal, is the same objective.
    inst.track_ai_call("openai", "gpt-4o", objective=[first, Objective(name, success=0.99)])
    with pytest.raises(ValueError, match=f"two different objectives are named '{name}'"):
        inst.track_ai_call("openai", "gpt-4o", objective=Objective(name, success=0.995))
    with pytest.raises(ValueError, match="two different objectives"):
        inst.monitored_analysis("m", "t", objective=[Objective(name, latency=(5, 0.99))])


def test_a_refused_declaration_declares_nothing(inst: Instrumentation) -> None:
    good = Objective(unique(), success=0.99)
    with pytest.raises(ValueError, match="bucket boundary"):
        inst.track_ai_call("openai", "x", objective=[good, Objective(unique(), latency=(3, 0.9))])
    assert inst.objectives == []


@pytest.mark.parametrize("bad", ["availability", 0.99, [Objective("x", success=0.99), "y"]])
def test_objective_takes_objectives_only(inst: Instrumentation, bad: Any) -> None:
    with pytest.raises(TypeError, match="Objective"):
        inst.monitored_analysis("m", "t", objective=bad)
    with pytest.raises(TypeError, match="Objective"):
        inst.track_ai_call("openai", "gpt-4o", objective=bad)


def test_inst_objectives_lists_them_with_the_series_they_cover(inst: Instrumentation) -> None:
    available = Objective(unique("available"), success=0.995)
    fast = Objective(unique("fast"), latency=(2.56, 0.99), window="28d")
    inst.monitored_analysis("static_analysis", "codebase", objective=available)
    inst.track_ai_call("openai", "gpt-4o", objective=[available, fast])
    inst.track_ai_call("anthropic", None, objective=fast)  # every model of the provider
    assert inst.objectives == [available, fast]
    assert dict(inst.objective_coverage()) == {
        available: (
            Coverage("analysis", (("module", "static_analysis"), ("analysis_type", "codebase"))),
            Coverage("ai", (("provider", "openai"), ("model", "gpt-4o"))),
        ),
        fast: (
            Coverage("ai", (("provider", "openai"), ("model", "gpt-4o"))),
            Coverage("ai", (("provider", "anthropic"),)),
        ),
    }
    # Another instrumentation declared none of them.
    assert Instrumentation(registry=CollectorRegistry(), push_mode="off").objectives == []


def test_the_model_label_is_the_normalized_one(inst: Instrumentation) -> None:
    objective = Objective(unique(), success=0.99)
    inst.track_ai_call(
        "openai", "gpt-4o-2024-08-06", normalize_model=lambda m: m[:6], objective=objective
    )
    ((_, covered),) = inst.objective_coverage()
    assert covered == (Coverage("ai", (("provider", "openai"), ("model", "gpt-4o"))),)


def test_decorators_following_the_default_declare_on_the_default() -> None:
    objective = Objective(unique(), success=0.99)

    @monitored_analysis("default_mod", "kind", objective=objective)
    def job() -> int:
        return 1

    track_ai_call("openai", "gpt-4o", objective=objective)
    default = configure(registry=CollectorRegistry(), push_mode="off")
    try:
        assert objective in default.objectives
        other = Instrumentation(registry=CollectorRegistry(), push_mode="off")
        assert objective not in other.objectives
        assert objective in [item for item, _ in every_declared()]
        assert job() == 1
    finally:
        configure(registry=CollectorRegistry(), push_mode="off")


def test_an_objective_never_changes_a_result_or_an_exception(inst: Instrumentation) -> None:
    objective = Objective(unique(), success=0.99)

    @inst.monitored_analysis("m", "t", objective=objective)
    def analyze(fail: bool) -> str:
        if fail:
            raise KeyError("boom")
        return "done"

    assert analyze(False) == "done"
    with pytest.raises(KeyError, match="boom"):
        analyze(True)
    labels = {"module": "m", "analysis_type": "t"}
    value = inst.registry.get_sample_value
    assert value("codomyrmex_analyses_total", {**labels, "status": "success"}) == 1
    assert value("codomyrmex_analyses_total", {**labels, "status": "error"}) == 1


def test_objective_is_exported_and_the_options_name_it() -> None:
    assert "Objective" in instrument.__all__
    assert instrument.Objective is Objective
    from instrument.ai._options import OPTION_NAMES

    assert "objective" in OPTION_NAMES


# -- build info -------------------------------------------------------------------------------


def test_build_info_is_one_series_of_value_1() -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(),
        push_mode="off",
        build_info={"version": "1.4.0", "commit": "a1b2c3d", "branch": "main"},
    )
    labels = {"version": "1.4.0", "commit": "a1b2c3d", "branch": "main"}
    assert inst.registry.get_sample_value("codomyrmex_build_info", labels) == 1
    partial = Instrumentation(
        registry=CollectorRegistry(), namespace="acme", build_info={"version": "2"}
    )
    assert (
        partial.registry.get_sample_value(
            "acme_build_info", {"version": "2", "commit": "unknown", "branch": "unknown"}
        )
        == 1
    )


def test_without_build_info_there_is_no_series_and_disabled_records_none() -> None:
    registry = CollectorRegistry()
    Instrumentation(registry=registry)
    assert [s for m in registry.collect() for s in m.samples if "build_info" in s.name] == []
    off = Instrumentation(registry=CollectorRegistry(), enabled=False, build_info={"version": "1"})
    value = off.registry.get_sample_value
    assert (
        value("codomyrmex_build_info", {"version": "1", "commit": "unknown", "branch": "unknown"})
        is None
    )


@pytest.mark.parametrize(
    ("build_info", "error", "message"),
    [
        ("1.4.0", TypeError, "build_info must be a mapping"),
        ({"release": "1"}, ValueError, "unknown key.*'release'.*version, commit and branch"),
        ({"version": ""}, ValueError, r"build_info\['version'\] must be a non-empty string"),
        ({"version": 1}, ValueError, "must be a non-empty string"),
        ({"commit": "bad\udcff"}, ValueError, "lone surrogate"),
    ],
)
def test_bad_build_info_says_what_to_pass(
    build_info: Any, error: type[Exception], message: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(error, match=message):
        Instrumentation(registry=registry, build_info=build_info)
    assert list(registry.collect()) == []  # refused before the registry was touched


def test_build_info_from_the_environment() -> None:
    env = {"INSTRUMENT_BUILD_VERSION": "3.1", "INSTRUMENT_BUILD_COMMIT": "ff00"}
    assert from_environment(env) == {
        "build_info": {"version": "3.1", "commit": "ff00", "branch": "unknown"}
    }
    assert from_environment(env, only={"namespace"}) == {}
    _, problems = read_environment({"INSTRUMENT_BUILD_BRANCH": " "})
    assert problems and "INSTRUMENT_BUILD_BRANCH" in problems[0]
    with pytest.raises(ValueError, match="INSTRUMENT_BUILD_BRANCH"):
        configure(registry=CollectorRegistry(), push_mode="off", **from_environment({
            "INSTRUMENT_BUILD_BRANCH": " "
        }))  # fmt: skip


def test_configure_reads_the_build_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_BUILD_VERSION", "9.9")
    monkeypatch.setenv("INSTRUMENT_BUILD_BRANCH", "release")
    inst = configure(registry=CollectorRegistry(), push_mode="off")
    try:
        labels = {"version": "9.9", "commit": "unknown", "branch": "release"}
        assert inst.registry.get_sample_value("codomyrmex_build_info", labels) == 1
    finally:
        monkeypatch.delenv("INSTRUMENT_BUILD_VERSION")
        monkeypatch.delenv("INSTRUMENT_BUILD_BRANCH")
        configure(registry=CollectorRegistry(), push_mode="off")
