"""instrument.testing as a user's own test suite uses it: the fixture and the assertions."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation, get_instrumentation, monitored_analysis
from instrument.testing import (
    assert_analyses,
    assert_sample,
    isolated_instrumentation,
    sample_value,
)


@monitored_analysis("static_analysis", "codebase")
def analyze(ok: bool) -> str:
    if not ok:
        raise ValueError("broken input")
    return "report"


def run_pipeline() -> None:
    analyze(True)
    analyze(True)
    with contextlib.suppress(ValueError):
        analyze(False)


def test_the_plugin_fixture_collects_module_level_decorators(
    instrument_isolated: Instrumentation,
) -> None:
    assert get_instrumentation() is instrument_isolated
    run_pipeline()
    assert_analyses(instrument_isolated, "static_analysis", "codebase", success=2, error=1)
    assert_sample(instrument_isolated, "active_jobs", {"job_type": "static_analysis"}, 0)
    assert (
        sample_value(
            instrument_isolated,
            "codomyrmex_analyses_total",
            {"module": "static_analysis", "analysis_type": "codebase", "status": "cancelled"},
        )
        == 0
    )


def test_each_test_gets_a_fresh_instrumentation(instrument_isolated: Instrumentation) -> None:
    analyze(True)
    assert_analyses(instrument_isolated, "static_analysis", "codebase", success=1, error=0)


def test_a_failed_assertion_lists_the_samples_that_exist(
    instrument_isolated: Instrumentation,
) -> None:
    run_pipeline()
    with pytest.raises(AssertionError) as info:
        assert_analyses(instrument_isolated, "static_analysis", "codebase", success=3)
    message = str(info.value)
    assert "expected codomyrmex_analyses_total" in message and "== 3, found 2.0" in message
    assert "'status': 'error'} = 1.0" in message
    with pytest.raises(AssertionError, match="no samples with that name"):
        assert_sample(instrument_isolated, "no_such_metric", {}, 1)


def test_isolated_instrumentation_restores_the_previous_default() -> None:
    before = get_instrumentation()
    with isolated_instrumentation(namespace="iso") as inst:
        assert get_instrumentation() is inst
        analyze(True)
        assert_sample(
            inst.registry,
            "iso_analyses_total",
            {"module": "static_analysis", "analysis_type": "codebase", "status": "success"},
            1,
        )
    assert get_instrumentation() is before
    registry = CollectorRegistry()
    with isolated_instrumentation(registry=registry, as_default=False) as other:
        assert other.registry is registry
        assert get_instrumentation() is before


def test_configure_inside_an_isolated_block_does_not_outlive_it() -> None:
    from instrument import configure

    before = get_instrumentation()
    with isolated_instrumentation():
        inner = configure(registry=CollectorRegistry(), namespace="inner")
        analyze(True)
    assert get_instrumentation() is before
    assert inner.retired
    analyze(True)  # lands on the restored default, not on the instrumentation made inside
    assert (
        sample_value(
            inner,
            "analyses_total",
            {"module": "static_analysis", "analysis_type": "codebase", "status": "success"},
        )
        == 1
    )


def test_decorators_are_back_on_the_fast_path_after_an_isolated_block() -> None:
    from instrument.analysis import AnalysisMonitor

    monitor = AnalysisMonitor(None, "fast", "path")
    wrapped = monitor(lambda: None)
    wrapped()
    with isolated_instrumentation():
        wrapped()
    wrapped()
    assert monitor._binding is not None and not monitor._binding.stale
    assert monitor._binding.inst is get_instrumentation()


@pytest.mark.parametrize("namespace", ["ai", "analyses", "code", "active"])
def test_a_namespace_that_starts_a_metric_name_is_still_added(namespace: str) -> None:
    with isolated_instrumentation(namespace=namespace) as inst:
        analyze(True)
        analyze(True)
        inst.record_ai_api_call("openai", "gpt-4o")
        assert_analyses(inst, "static_analysis", "codebase", success=2)
        labels = {"provider": "openai", "model": "gpt-4o", "status": "success"}
        assert sample_value(inst, "ai_api_calls_total", labels) == 1
        assert sample_value(inst, f"{namespace}_ai_api_calls_total", labels) == 1


@settings(max_examples=40, deadline=None)
@given(namespace=st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True))
def test_every_sample_reads_back_by_its_short_and_its_full_name(namespace: str) -> None:
    """Whatever the namespace (one that starts a metric's own name included), each sample
    the toolkit exposes is found under both spellings, and assert_sample agrees."""
    with isolated_instrumentation(namespace=namespace, as_default=False) as inst:
        inst.record_analysis("static_analysis", "codebase", 0.5)
        inst.record_quality_score("shop", "static_analysis", 80.0)
        inst.record_ai_api_call("openai", "gpt-4o", input_tokens=3, output_tokens=2)
        exposed = [s for family in inst.registry.collect() for s in family.samples]
        assert exposed
        for found in exposed:
            short = found.name.removeprefix(f"{namespace}_")
            assert sample_value(inst, short, found.labels) == found.value, short
            assert sample_value(inst, found.name, found.labels) == found.value, found.name
            assert_sample(inst, short, found.labels, found.value)
