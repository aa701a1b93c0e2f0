"""The facade's names: the async forms are ``apush`` / ``aflush`` / ``aclose``, the seed's
``push_metrics`` is ``apush``, and every name that moved out of ``instrumentation.py``
(``Policy``, ``Binding``, ``configure``, ``get_instrumentation``) is still found there."""

from __future__ import annotations

import inspect

import pytest
from prometheus_client import CollectorRegistry

import instrument
from instrument import Instrumentation, compat, defaults, instrumentation, policy
from instrument.testing import isolated_instrumentation

from .servers import Pushgateway
from .support import gateway_inst, pushed_analyses


@pytest.mark.integration
async def test_apush_aflush_aclose_deliver_to_a_real_gateway(
    pushgateway: Pushgateway, job_name: str
) -> None:
    inst = gateway_inst(pushgateway, job=job_name, push_mode="off")
    inst.record_analysis("m", "t", 1.0)
    assert await inst.apush() is True
    assert pushed_analyses(pushgateway, job=job_name) == 1
    inst.record_analysis("m", "t", 1.0)
    assert await inst.push_metrics() is True  # the seed's name, the same push
    assert pushed_analyses(pushgateway, job=job_name) == 2
    assert await inst.aflush() is True
    await inst.aclose()
    assert pushed_analyses(pushgateway, job=job_name) == 2


@pytest.mark.integration
async def test_module_level_apush_and_push_metrics_push_the_default(
    pushgateway: Pushgateway, job_name: str
) -> None:
    with isolated_instrumentation(pushgateway=pushgateway.url, job=job_name, push_mode="off"):
        instrument.record_analysis("m", "t", 0.5)
        assert await instrument.apush() is True
        assert pushed_analyses(pushgateway, job=job_name) == 1
        instrument.record_analysis("m", "t", 0.5)
        assert await instrument.push_metrics() is True
        assert pushed_analyses(pushgateway, job=job_name) == 2
        instrument.record_analysis("m", "t", 0.5)
        assert instrument.push() is True
        assert pushed_analyses(pushgateway, job=job_name) == 3


async def test_apush_without_a_target_is_false_and_never_raises() -> None:
    inst = Instrumentation(registry=CollectorRegistry())
    assert await inst.apush() is False
    assert await inst.push_metrics() is False
    await inst.aclose()


def test_the_async_forms_are_coroutine_functions() -> None:
    for name in ("apush", "aflush", "aclose", "push_metrics"):
        assert inspect.iscoroutinefunction(getattr(Instrumentation, name)), name
    assert inspect.iscoroutinefunction(instrument.apush)
    assert inspect.iscoroutinefunction(instrument.push_metrics)
    for name in ("push", "flush"):  # functions, not shadowed by a submodule of that name
        function = getattr(instrument, name)
        assert inspect.isfunction(function) and not inspect.iscoroutinefunction(function)


def test_moved_names_are_still_found_where_they_were() -> None:
    assert instrumentation.Policy is policy.Policy
    assert instrumentation.Binding is policy.Binding
    assert instrumentation.configure is defaults.configure is instrument.configure
    assert instrumentation.get_instrumentation is defaults.get_instrumentation
    assert instrument.get_instrumentation is defaults.get_instrumentation
    for name in ("record_quality_score", "record_analysis", "update_active_jobs"):
        assert getattr(instrument, name) is getattr(compat, name)
    assert instrument.record_ai_api_call is compat.record_ai_api_call
    assert sorted(instrument.__all__) == sorted(set(instrument.__all__))
    for name in instrument.__all__:
        assert getattr(instrument, name) is not None, name


#: The seed's names: compatibility shims in ``compat``, importable from ``instrument``.
SEED_NAMES = (
    "PrometheusIntegration",
    "push_metrics",
    "record_ai_api_call",
    "record_analysis",
    "record_quality_score",
    "update_active_jobs",
)


def test_all_lists_the_toolkits_api_and_the_seed_names_stay_importable() -> None:
    from instrument import grafana

    assert set(compat.__all__) == set(SEED_NAMES)
    for name in SEED_NAMES:
        assert name not in instrument.__all__, name
        assert getattr(instrument, name) is getattr(compat, name), name
    assert "GrafanaIntegration" not in instrument.__all__
    assert instrument.GrafanaIntegration is grafana.GrafanaIntegration  # the seed's, too
    # What a star import gives is the toolkit itself: its decorators, facade and default.
    namespace: dict[str, object] = {}
    exec("from instrument import *", namespace)
    assert {"monitored_analysis", "track_ai_call", "Instrumentation", "configure"} <= set(namespace)
    assert not set(SEED_NAMES) & set(namespace)


def test_the_default_is_an_instance_of_the_facades_class() -> None:
    with isolated_instrumentation():
        saved = defaults.replace_default(None)
        try:
            created = instrument.get_instrumentation()
            assert type(created) is Instrumentation
        finally:
            current = defaults.replace_default(saved)
            if current is not None:
                current.close()
