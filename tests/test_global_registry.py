"""The default instrumentation on prometheus_client's global REGISTRY (issue 18): what a user
who already serves REGISTRY sees, what a push of the default carries, and that the testing
helpers keep a test's numbers off REGISTRY."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client import start_http_server as client_http_server
from prometheus_client.parser import text_string_to_metric_families

from instrument import Instrumentation, configure, get_instrumentation, monitored_analysis
from instrument.defaults import discard, replace_default
from instrument.testing import isolated_instrumentation

from .servers import Pushgateway, free_port

LABELS = {"module": "globalmod", "analysis_type": "scan", "status": "success"}


@monitored_analysis("globalmod", "scan")
def scan(n: int) -> int:
    return n * 2


def global_count(namespace: str = "codomyrmex") -> float | None:
    return REGISTRY.get_sample_value(f"{namespace}_analyses_total", LABELS)


@pytest.fixture(autouse=True)
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No default yet, and no environment from the suite's: the first call makes one."""
    for name in ("INSTRUMENT_NAMESPACE", "INSTRUMENT_PUSHGATEWAY_URL", "INSTRUMENT_TEXTFILE"):
        monkeypatch.delenv(name, raising=False)
    saved = replace_default(None)
    try:
        yield
    finally:
        current = replace_default(saved)
        if current is not None:
            discard(current)


def test_decorated_calls_show_on_the_global_registry_and_its_http_server() -> None:
    assert scan(2) == 4
    assert scan(3) == 6
    assert global_count() == 2
    assert (
        b'codomyrmex_analyses_total{analysis_type="scan",module="globalmod",status="success"} 2.0'
        in (generate_latest(REGISTRY))
    )
    port = free_port()
    server, thread = client_http_server(port, addr="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in families["codomyrmex_analyses"].samples
    }
    assert samples[("codomyrmex_analyses_total", tuple(sorted(LABELS.items())))] == 2
    # Served beside prometheus_client's own collectors, not instead of them.
    assert "python_gc_objects_collected" in families


def test_configure_twice_shows_only_the_current_default() -> None:
    scan(1)
    first = configure(buckets=[0.1, 1.0])
    scan(1)
    assert global_count() == 1  # the new default starts from fresh counts
    second = configure(buckets=[0.5, 5.0], namespace="globalsecond")
    scan(1)
    scan(1)
    assert first.retired and not second.retired
    assert global_count() is None  # the old namespace is no longer on REGISTRY
    assert global_count("globalsecond") == 2
    bucket = REGISTRY.get_sample_value(
        "globalsecond_analysis_duration_seconds_bucket",
        {"module": "globalmod", "analysis_type": "scan", "le": "5.0"},
    )
    assert bucket == 2
    third = configure(registry=CollectorRegistry())  # a registry of its own: not shown
    scan(1)
    assert global_count("globalsecond") is None and global_count() is None
    assert third.registry.get_sample_value("codomyrmex_analyses_total", LABELS) == 1


def test_replace_default_none_takes_it_off_the_global_registry() -> None:
    scan(1)
    assert global_count() == 1
    old = replace_default(None)
    assert old is not None
    old.close()
    assert global_count() is None
    scan(1)  # a new default from the environment, shown again
    assert global_count() == 1


@pytest.mark.integration
def test_a_push_of_the_default_carries_only_the_toolkits_families(
    pushgateway: Pushgateway, job_name: str
) -> None:
    configure(pushgateway=pushgateway.url, job=job_name, push_mode="off")
    scan(1)
    assert get_instrumentation().push()
    pushed = {name for name, labels, _ in pushgateway.samples() if labels.get("job") == job_name}
    assert "codomyrmex_analyses_total" in pushed
    foreign = sorted(n for n in pushed if not n.startswith(("codomyrmex_", "push_")))
    assert foreign == [], foreign
    assert all(not n.startswith(("process_", "python_gc_", "python_info")) for n in pushed)


@pytest.mark.integration
def test_push_registry_pushes_the_whole_global_registry(
    pushgateway: Pushgateway, job_name: str
) -> None:
    configure(pushgateway=pushgateway.url, job=job_name, push_mode="off", push_registry=REGISTRY)
    scan(1)
    assert get_instrumentation().push()
    pushed = {name for name, labels, _ in pushgateway.samples() if labels.get("job") == job_name}
    assert "python_gc_objects_collected_total" in pushed
    assert "codomyrmex_analyses_total" in pushed  # through the default shown on REGISTRY
    assert pushgateway.value("codomyrmex_analyses_total", job=job_name, **LABELS) == 1


def test_a_textfile_of_the_default_carries_only_the_toolkits_families(
    tmp_path: pytest.TempPathFactory,
) -> None:
    path = tmp_path / "metrics.prom"  # type: ignore[operator]
    inst = configure(textfile=str(path), push_mode="off")
    scan(1)
    assert inst.push()
    names = {f.name for f in text_string_to_metric_families(path.read_text())}
    assert "codomyrmex_analyses" in names
    assert not {n for n in names if n.startswith(("process_", "python_gc_", "python_info"))}


def test_push_registry_must_be_a_registry() -> None:
    with pytest.raises(TypeError, match="push_registry must be a CollectorRegistry"):
        Instrumentation(push_registry="REGISTRY")  # type: ignore[arg-type]


def test_a_clash_on_the_global_registry_is_refused_by_configure_and_logged_on_first_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine = Counter("clashns_analyses_total", "a user's own metric of that name", registry=REGISTRY)
    try:
        before = get_instrumentation()
        with pytest.raises(ValueError, match="clash with a collector already on"):
            configure(namespace="clashns")
        assert get_instrumentation() is before and not before.retired
        assert scan(1) == 2
        assert global_count() == 1  # the default in place is still shown
        mine.inc(5)
        assert REGISTRY.get_sample_value("clashns_analyses_total") == 5

        # First use, from a decorated call: it must not fail, and records anyway.
        replace_default(None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("INSTRUMENT_NAMESPACE", "clashns")
            with caplog.at_level(logging.ERROR, logger="instrument"):
                assert scan(4) == 8
        assert "not shown on prometheus_client.REGISTRY" in caplog.text
        inst = get_instrumentation()
        assert inst.registry.get_sample_value("clashns_analyses_total", LABELS) == 1
        assert REGISTRY.get_sample_value("clashns_analyses_total") == 5
    finally:
        REGISTRY.unregister(mine)


def test_the_testing_helpers_keep_a_tests_numbers_off_the_global_registry() -> None:
    scan(1)
    assert global_count() == 1
    with isolated_instrumentation() as inst:
        scan(1)
        scan(1)
        assert inst.registry.get_sample_value("codomyrmex_analyses_total", LABELS) == 2
        assert global_count() is None  # neither the test's nor the saved default's
    assert global_count() == 1  # the saved default is shown again, as it was
    scan(1)
    assert global_count() == 2


def test_configure_between_the_global_registry_and_its_own_never_clashes() -> None:
    """registry=REGISTRY and a registry of its own, in every order: each configure() works,
    REGISTRY holds the current default's numbers only, and registry=REGISTRY twice keeps
    counting on the same collectors."""
    direct = configure(registry=REGISTRY)
    assert direct.registry is REGISTRY
    scan(1)
    assert global_count() == 1
    configure()  # the old default's own collectors leave REGISTRY
    scan(1)
    scan(1)
    assert global_count() == 2
    configure(registry=REGISTRY)  # the shown default gives way: fresh collectors
    scan(1)
    assert global_count() == 1
    again = configure(registry=REGISTRY)  # the same collectors, counting on
    scan(1)
    assert global_count() == 2
    configure(registry=REGISTRY, namespace="globalother")
    scan(1)
    assert global_count() is None and global_count("globalother") == 1
    assert again.retired
    configure(buckets=[1.0, 2.0])
    assert global_count("globalother") is None
    scan(1)
    assert global_count() == 1


def test_a_refused_configure_leaves_the_global_registry_as_it_was() -> None:
    direct = configure(registry=REGISTRY)
    scan(1)
    mine = Counter("globalbad_analyses_total", "a user's own", registry=REGISTRY)
    try:
        with pytest.raises(ValueError, match=r"globalbad_analyses_total"):
            configure(namespace="globalbad")
        with pytest.raises(ValueError, match="push_interval"):
            configure(push_interval=-1)
        assert get_instrumentation() is direct and not direct.retired
        scan(1)
        assert global_count() == 2  # its collectors were put back, still counting
    finally:
        REGISTRY.unregister(mine)


def test_a_clash_message_names_a_few_samples_not_dozens() -> None:
    mine = Counter("globalmsg_analyses_total", "a user's own", registry=REGISTRY)
    try:
        with pytest.raises(ValueError) as info:
            configure(namespace="globalmsg")
        message = str(info.value)
        assert "globalmsg_analyses" in message and len(message) < 400, message
        assert "rename yours, or pass namespace= or registry= to configure()" in message
    finally:
        REGISTRY.unregister(mine)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.sampled_from(["codomyrmex", "globalprop_a", "globalprop_b"])),
        min_size=1,
        max_size=6,
    )
)
def test_any_sequence_of_configures_leaves_only_the_current_default_on_registry(
    steps: list[tuple[bool, str]],
) -> None:
    namespaces = {"codomyrmex", "globalprop_a", "globalprop_b"}
    saved = replace_default(None)
    try:
        expected = 0
        previous: tuple[bool, str] | None = None
        for on_global, namespace in steps:
            kwargs = {"registry": REGISTRY} if on_global else {}
            configure(namespace=namespace, **kwargs)
            # registry=REGISTRY after the same on REGISTRY keeps counting; all else is fresh.
            expected = expected if previous == (True, namespace) and on_global else 0
            scan(1)
            expected += 1
            previous = (on_global, namespace)
            assert global_count(namespace) == expected
            for other in namespaces - {namespace}:
                assert global_count(other) is None
    finally:
        current = replace_default(saved)
        if current is not None:
            discard(current)


def test_configure_registry_global_inside_an_isolated_block_leaves_nothing_on_registry() -> None:
    with isolated_instrumentation():
        configure(registry=REGISTRY, namespace="globaliso")
        scan(1)
        assert global_count("globaliso") == 1
    assert global_count("globaliso") is None  # discarded with the block
    configure(registry=REGISTRY, namespace="globaliso")
    scan(1)
    assert global_count("globaliso") == 1  # afresh, not the block's collectors


def test_the_shown_default_comes_back_after_a_block_that_used_the_global_registry() -> None:
    scan(1)  # a default shown on REGISTRY, same namespace as the block's below
    assert global_count() == 1
    with isolated_instrumentation():
        configure(registry=REGISTRY)
        scan(1)
        scan(1)
        assert global_count() == 2  # the block's own collectors, not the default's
    assert global_count() == 1  # the default before the block, shown again
    scan(1)
    assert global_count() == 2
