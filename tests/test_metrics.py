"""metrics.py as the one source of names: ``metric_names(namespace)`` is the names a
registry records, computed without making a single collector."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation
from instrument.dashboard import build_dashboard, panel_queries
from instrument.metrics import METRICS, Metrics, metric_names
from instrument.rules import build_rules

namespaces = st.one_of(
    st.sampled_from(["a\n", "\na", "a ", "_", "__x", "a1", "1a", "ns:x", "ü", "A_b", ""]),
    st.text(max_size=8),
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True),
)


@given(namespace=namespaces)
def test_metric_names_are_the_names_a_registry_records(namespace: str) -> None:
    registry = CollectorRegistry()
    try:
        metrics = Metrics.get(registry, namespace)
    except ValueError as refused:
        with pytest.raises(ValueError) as caught:
            metric_names(namespace)
        assert str(caught.value) == str(refused)
        return
    names = metric_names(namespace)
    assert names == metrics.names()
    assert list(names) == [spec.attr for spec in METRICS]
    # Each name is one the registry really exposes, read back from its exposition.
    exposed = re.findall(r"^# TYPE (\S+) ", generate_latest(registry).decode(), re.M)
    # (prometheus_client adds a <counter>_created gauge beside each unlabelled counter.)
    assert sorted(names.values()) == sorted(n for n in exposed if not n.endswith("_created"))


@pytest.mark.parametrize("namespace", [None, 3, b"ns", ["ns"]])
def test_metric_names_refuses_what_is_not_a_namespace(namespace: Any) -> None:
    with pytest.raises(ValueError, match="is not a valid Prometheus metric prefix"):
        metric_names(namespace)


@pytest.fixture
def made() -> Iterator[list[str]]:
    """What was built while the test ran: every registry and every collector made through
    prometheus_client's own constructors (a spy that calls them, not a stand-in)."""
    seen: list[str] = []
    registry_init = CollectorRegistry.__init__
    metrics_init = Metrics.__init__

    def registry_spy(self: CollectorRegistry, *args: Any, **kwargs: Any) -> None:
        seen.append("CollectorRegistry")
        registry_init(self, *args, **kwargs)

    def metrics_spy(self: Metrics, *args: Any, **kwargs: Any) -> None:
        seen.append("Metrics")
        metrics_init(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CollectorRegistry, "__init__", registry_spy)
        patch.setattr(Metrics, "__init__", metrics_spy)
        yield seen


def test_generated_artifacts_make_no_registry_and_no_collector(made: list[str]) -> None:
    dashboard = build_dashboard("acme")
    rules = build_rules("acme")
    assert made == []
    # The spy sees constructors: one Metrics really made is counted.
    Metrics.get(CollectorRegistry(), "acme")
    assert made == ["CollectorRegistry", "Metrics"]
    # What was built without them still queries the namespace's metrics.
    assert all(
        "acme_" in expr or 'sloth_service="acme"' in expr for _, expr in panel_queries(dashboard)
    )
    assert rules["groups"][0]["rules"][0]["expr"].startswith("sum by (job, module, analysis_type")


def test_artifacts_of_an_instrumentation_follow_its_buckets(registry: CollectorRegistry) -> None:
    inst = Instrumentation(
        registry=registry, namespace="own", push_mode="off", buckets=(1.0, 2.0, 4000.0)
    )
    try:
        # 3000 s is above the default buckets' largest bound (600 s) but below this one's.
        with pytest.raises(ValueError, match="can never fire"):
            build_rules("own", duration_p95_seconds=3000)
        build_rules(inst, duration_p95_seconds=3000)
        with pytest.raises(ValueError, match="at most their largest finite bound, 4000 s"):
            build_rules(inst.metrics, duration_p95_seconds=4000)
    finally:
        inst.close()
