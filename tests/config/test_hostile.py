"""Configuration as a hostile user gives it: wrong input is refused at once, with a message
that says what to do; accepted input works, down to the real Pushgateway.

Issue 10, items 5 (job and grouping values that cannot form a gateway path), 11 (freed
registries), 12 (buckets, all-or-nothing registration), 13 (grouping label names), 14 (URLs
and names with whitespace) and 15 (a bad environment variable).
"""

from __future__ import annotations

import gc
import http.client
import itertools
import logging
import math
import os
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import _escape_grouping_key
from prometheus_client.utils import floatToGoString

from instrument import Instrumentation, configure, get_instrumentation, monitored_analysis
from instrument._urls import mask_url, split_url
from instrument.config import SETTINGS, from_environment
from instrument.dashboard import build_dashboard
from instrument.defaults import replace_default
from instrument.delivery import PushTarget
from instrument.metrics import METRICS, Metrics
from instrument.testing import isolated_instrumentation

from ..servers import Pushgateway
from ..support import ROOT, gateway_inst, push_once

LABELS = {"module": "m", "analysis_type": "t"}
#: The label names a sample of ours can carry, derived here from the definitions.
OUR_LABELS = {label for spec in METRICS for label in spec.labels} | {"le"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
HISTOGRAMS = [spec.suffix for spec in METRICS if spec.kind == "histogram"]
#: Slow hypothesis tests (each example talks to the real gateway) get fewer examples.
GATEWAY_EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def collector_names(registry: CollectorRegistry) -> list[set[str]]:
    """The names of every collector on ``registry`` (the hook exposes none)."""
    return [set(names) for names in registry._collector_to_names.values()]


def says_what_to_do(message: str) -> bool:
    return any(word in message for word in ("use ", "must ", "pass ", "pick ", "decode "))


def records_fine(registry: CollectorRegistry, **kwargs: Any) -> None:
    """A correct Instrumentation on ``registry`` works and its count reads back."""
    inst = Instrumentation(registry=registry, **kwargs)
    inst.record_analysis("m", "t", 0.25)
    labels = {**LABELS, "status": "success"}
    assert registry.get_sample_value(f"{inst.namespace}_analyses_total", labels) == 1
    inst.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No INSTRUMENT_* variable from outside, and the default restored afterwards."""
    for name in list(os.environ):
        if name.startswith("INSTRUMENT_"):
            monkeypatch.delenv(name)
    saved = replace_default(None)
    try:
        yield monkeypatch
    finally:
        current = replace_default(saved)
        if current is not None and current is not saved:
            current.close()


# -- item 5: job and grouping values the gateway cannot take in its URL path --------------------


def gateway_refuses_value(value: str, *, job: bool) -> bool:
    """The oracle, worked out against Pushgateway 1.5.1: an empty job is "job name is
    required" (400); a lone surrogate is no UTF-8 at all. Everything else lands: "/", "",
    "." and ".." (the router would redirect the last two as path segments) go base64."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return job and value == ""


def raw_put(gateway: Pushgateway, job: str, key: dict[str, str]) -> int:
    """PUT one sample to the group, escaped exactly as prometheus_client escapes it."""
    path = "/metrics/{}/{}".format(*_escape_grouping_key("job", job))  # type: ignore[no-untyped-call]
    for name, value in sorted(key.items()):
        path += "/{}/{}".format(*_escape_grouping_key(name, value))  # type: ignore[no-untyped-call]
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    try:
        conn.request("PUT", path, body=b"probe_total 1\n")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.integration
@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_the_gateway_would_redirect_land_base64_encoded(
    pushgateway: Pushgateway, value: str
) -> None:
    # The premise, checked on the real gateway: escaped as prometheus_client escapes them,
    # such a push is answered 301 and lost.
    assert raw_put(pushgateway, value, {}) == 301
    assert raw_put(pushgateway, "j", {"team": value}) == 301
    assert pushgateway.groups() == []
    # Ours go base64 (``job@base64/Lg==``), so the group lands with the value as given.
    for kwargs in ({"job": value}, {"grouping_key": {"team": value}}, {"instance": value}):
        inst = gateway_inst(pushgateway, push_mode="off", **kwargs)
        inst.metrics.analyses.labels("m", "t", "success").inc()
        assert inst.push()
        inst.close()
    labels = sorted(sorted(group["labels"].items()) for group in pushgateway.groups())
    assert labels == sorted(
        [
            [("job", value)],
            [("job", "codomyrmex"), ("team", value)],
            [("instance", value), ("job", "codomyrmex")],
        ]
    )


def test_a_dot_job_in_the_environment_is_taken_as_given() -> None:
    assert from_environment({"INSTRUMENT_JOB": "."})["job"] == "."


def push_and_read_group(
    gateway: Pushgateway, job: str, key: dict[str, str], *, use_async: bool = False, **extra: Any
) -> dict[str, str]:
    """Record one analysis, push it, and return the labels of the one group that landed."""
    gateway.wipe()
    inst = gateway_inst(
        gateway,
        job=job,
        grouping_key=key,
        push_mode="off",
        **extra,
    )
    try:
        inst.record_analysis("m", "t", 0.25)
        assert push_once(inst, "async" if use_async else "sync")
    finally:
        inst.close()
    groups = [group["labels"] for group in gateway.groups()]
    assert len(groups) == 1, groups
    labels: dict[str, str] = groups[0]
    # And the sample itself carries the same labels on the gateway's /metrics.
    sample = gateway.value("codomyrmex_analyses_total", **labels, **LABELS, status="success")
    assert sample == 1
    return labels


SPECIAL_VALUES = [".", "..", "...", ".a", "a.", "/", "//", "", " ", "a/b", "%2F", "%2e", "+",
                  "a b", "\n", "\t", "\\", "?", "#", "=", "@base64", "é", "\U0001f600", "\ud800",
                  "x\udcff"]  # fmt: skip
group_values = st.one_of(st.sampled_from(SPECIAL_VALUES), st.text(max_size=16))


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(job=group_values, use_async=st.booleans())
def test_every_accepted_job_lands_under_that_very_name(
    pushgateway_server: Pushgateway, job: str, use_async: bool
) -> None:
    run = uuid.uuid4().hex
    try:
        PushTarget(pushgateway_server.url, job=job, grouping_key={"run": run})
    except ValueError as exc:
        assert gateway_refuses_value(job, job=True), f"{job!r} refused: {exc}"
        assert says_what_to_do(str(exc))
        return
    assert not gateway_refuses_value(job, job=True), f"{job!r} accepted"
    labels = push_and_read_group(pushgateway_server, job, {"run": run}, use_async=use_async)
    assert labels == {"job": job, "run": run}


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(value=group_values, use_async=st.booleans())
def test_every_accepted_grouping_value_lands_as_given(
    pushgateway_server: Pushgateway, value: str, use_async: bool
) -> None:
    key = {"team": value, "run": uuid.uuid4().hex}
    try:
        Instrumentation(registry=CollectorRegistry(), grouping_key=key)
    except ValueError as exc:
        assert gateway_refuses_value(value, job=False), f"{value!r} refused: {exc}"
        return
    assert not gateway_refuses_value(value, job=False), f"{value!r} accepted"
    labels = push_and_read_group(pushgateway_server, "hostile", key, use_async=use_async)
    assert labels == {"job": "hostile", **key}


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(instance=group_values)
def test_every_accepted_instance_name_lands_as_given(
    pushgateway_server: Pushgateway, instance: str
) -> None:
    assume(instance != "")  # instance="" means no instance label
    key = {"run": uuid.uuid4().hex}
    try:
        Instrumentation(registry=CollectorRegistry(), instance=instance)
    except ValueError:
        assert gateway_refuses_value(instance, job=False), f"{instance!r} refused"
        return
    labels = push_and_read_group(pushgateway_server, "hostile", key, instance=instance)
    assert labels == {"job": "hostile", "instance": instance, **key}


# -- item 13: grouping label names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a-b", "not a valid label name"),
        ("1x", "not a valid label name"),
        ("a.b", "not a valid label name"),
        ("é", "not a valid label name"),
        ("team\n", "not a valid label name"),
        ("__name__", "reserved"),
        ("__x", "reserved"),
        ("job", "pass job= instead"),
        ("status", "label of the toolkit's own metrics"),
        ("module", "label of the toolkit's own metrics"),
        ("le", "label of the toolkit's own metrics"),
    ],
)
def test_grouping_label_names_that_cannot_work_are_refused(name: str, message: str) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match=message):
        Instrumentation(
            registry=registry, pushgateway="http://127.0.0.1:9", grouping_key={name: "x"}
        )
    with pytest.raises(ValueError, match=message):
        PushTarget("http://127.0.0.1:9", job="j", grouping_key={name: "x"})
    assert collector_names(registry) == []


def test_every_label_of_our_metrics_is_refused_as_a_grouping_label() -> None:
    # Derived from the definitions: a label added to metrics.py is refused without a change here.
    for name in sorted(OUR_LABELS):
        with pytest.raises(ValueError, match="pick another name"):
            Instrumentation(registry=CollectorRegistry(), grouping_key={name: "x"})


def test_instance_is_refused_only_beside_instance_setting() -> None:
    with pytest.raises(ValueError, match="instance= adds it too"):
        Instrumentation(registry=CollectorRegistry(), grouping_key={"instance": "a"}, instance=True)
    with pytest.raises(ValueError, match="instance= adds it too"):
        Instrumentation(registry=CollectorRegistry(), grouping_key={"instance": "a"}, instance="w1")
    Instrumentation(registry=CollectorRegistry(), grouping_key={"instance": "a"}).close()
    with pytest.raises(TypeError, match="instance must be True, False or a string"):
        Instrumentation(registry=CollectorRegistry(), instance=3)  # type: ignore[arg-type]


def test_bad_grouping_label_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match="INSTRUMENT_GROUPING_KEY='module=x' is not valid"):
        from_environment({"INSTRUMENT_GROUPING_KEY": "module=x"})


@pytest.mark.integration
def test_an_own_instance_label_lands_when_instance_is_not_set(pushgateway: Pushgateway) -> None:
    labels = push_and_read_group(pushgateway, "hostile", {"instance": "mine"})
    assert labels == {"job": "hostile", "instance": "mine"}


label_names = st.one_of(
    st.sampled_from(sorted(OUR_LABELS | {"job", "instance", "__name__", "_", "a_1"})),
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
    st.text(max_size=6),
)


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(name=label_names, instance=st.booleans())
def test_every_accepted_grouping_label_name_lands(
    pushgateway_server: Pushgateway, name: str, instance: bool
) -> None:
    expected_refusal = (
        not LABEL_NAME.fullmatch(name)
        or name.startswith("__")
        or name in OUR_LABELS | {"job"}
        or (name == "instance" and instance)
    )
    key = {name: "v"}
    try:
        Instrumentation(registry=CollectorRegistry(), grouping_key=key, instance=instance)
    except (ValueError, TypeError) as exc:
        assert expected_refusal, f"{name!r} refused: {exc}"
        return
    assert not expected_refusal, f"{name!r} accepted"
    labels = push_and_read_group(pushgateway_server, "hostile", key, instance=instance)
    if instance:  # instance=True adds host-pid
        assert labels.pop("instance").endswith(f"-{os.getpid()}")
    assert labels == {"job": "hostile", **key}


# -- label values and namespaces, down to the gateway ----------------------------------------------


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(module=st.one_of(st.sampled_from(SPECIAL_VALUES), st.text(max_size=12)))
def test_every_accepted_label_value_lands_as_given(
    pushgateway_server: Pushgateway, module: str
) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(
        registry=registry, pushgateway=pushgateway_server.url, job="hostile", push_mode="off"
    )
    try:
        inst.record_analysis(module, "t", 0.5)
    except (TypeError, ValueError) as exc:
        bad_utf8 = gateway_refuses_value(module, job=False)
        assert module == "" or bad_utf8, f"{module!r} refused: {exc}"
        # Nothing was half recorded, and the registry still pushes.
        assert inst.push()
        return
    pushgateway_server.wipe()
    assert inst.push()
    labels = {"module": module, "analysis_type": "t", "status": "success", "job": "hostile"}
    assert pushgateway_server.value("codomyrmex_analyses_total", **labels) == 1
    inst.close()


def test_a_label_value_that_is_not_utf8_is_refused_before_it_breaks_every_push(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    from prometheus_client import generate_latest

    with pytest.raises(ValueError, match="lone surrogate"):
        inst.record_analysis("m\udcff", "t", 0.5)
    with pytest.raises(ValueError, match="lone surrogate"):
        inst.monitored_analysis("\ud800", "t")
    generate_latest(registry)  # would raise UnicodeEncodeError had one been recorded


namespaces = st.one_of(
    st.sampled_from(["a\n", "a\r", "\na", "a ", "_", "__x", "a1", "1a", "ns:x", "ü", "A_b"]),
    st.text(max_size=8),
)


@pytest.mark.integration
@GATEWAY_EXAMPLES
@given(namespace=namespaces)
def test_every_accepted_namespace_lands_and_no_other(
    pushgateway_server: Pushgateway, namespace: str
) -> None:
    valid = re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", namespace) is not None
    registry = CollectorRegistry()
    try:
        inst = Instrumentation(
            registry=registry,
            namespace=namespace,
            pushgateway=pushgateway_server.url,
            job="hostile",
            push_mode="off",
        )
    except ValueError as exc:
        assert not valid, f"{namespace!r} refused: {exc}"
        assert "use letters, digits and underscores" in str(exc)
        assert collector_names(registry) == []
        return
    assert valid, f"{namespace!r} accepted"
    pushgateway_server.wipe()
    inst.record_analysis("m", "t", 0.5)
    assert inst.push()
    inst.close()
    labels = {**LABELS, "status": "success", "job": "hostile"}
    assert pushgateway_server.value(f"{namespace}_analyses_total", **labels) == 1


def test_a_namespace_or_dashboard_uid_with_a_final_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid Prometheus metric prefix"):
        Instrumentation(registry=CollectorRegistry(), namespace="a\n")
    with pytest.raises(ValueError, match="not a valid Prometheus metric prefix"):
        Metrics.get(CollectorRegistry(), "codomyrmex\n")
    with pytest.raises(ValueError, match="INSTRUMENT_NAMESPACE='a\\\\n' is not valid"):
        from_environment({"INSTRUMENT_NAMESPACE": "a\n"})
    with pytest.raises(ValueError, match="is not a Grafana dashboard uid"):
        build_dashboard("codomyrmex", uid="abc\n")


# -- item 14: URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1 :9091",
        "http://127.0.0.1:9091/some path",
        "http://127.0.0.1:9091/a\tb",
        "http://127.0.0.1\t:9091",
        "http://127.0.0.1:9091/\x00",
        "http://127.0.0.1:9091/\x7f",
        "http://127.0.0.1:9091/a\nb",
        "http://127.0.0.1:9091/a\u00a0b",
        "http://127.0.0.1:9091/\u200b",
        "http://user:pass word@127.0.0.1:9091",
    ],
)
def test_urls_with_whitespace_or_control_characters_are_refused(url: str) -> None:
    for build in (
        lambda: PushTarget(url, job="j", grouping_key={}),
        lambda: gateway_inst(url),
    ):
        with pytest.raises(ValueError, match="whitespace or a control character") as info:
            build()
        assert "pass word" not in str(info.value)
    with pytest.raises(ValueError, match=r"INSTRUMENT_PUSHGATEWAY_URL=.* is not valid"):
        from_environment({"INSTRUMENT_PUSHGATEWAY_URL": url})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", "cannot be parsed"),
        ("http://host:0", "invalid port"),
        ("http://host:65536", "invalid port"),
        ("http://%41", "invalid host"),
        ("http://a..b", "invalid host"),
        ("http://[fe80::zz]", "cannot be parsed|invalid host"),
    ],
)
def test_urls_no_connection_can_be_made_to_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_url(url, what="pushgateway URL", example="http://127.0.0.1:9091")


def test_a_url_keeps_its_surrounding_newline_out_and_goes_out_as_ascii() -> None:
    assert split_url(" http://gw.example:9091/\n", what="x", example="y") == (
        "http://gw.example:9091",
        None,
    )
    base, _ = split_url("http://bücher.example/pfad/ä", what="x", example="y")
    assert base == "http://xn--bcher-kva.example/pfad/%C3%A4"


@pytest.mark.integration
def test_a_gateway_url_with_a_trailing_newline_still_lands(pushgateway: Pushgateway) -> None:
    inst = Instrumentation(
        registry=CollectorRegistry(), pushgateway=pushgateway.url + "/\n", push_mode="off"
    )
    inst.record_analysis("m", "t", 0.5)
    assert inst.push()
    inst.close()
    assert pushgateway.value("codomyrmex_analyses_total", **LABELS, status="success") == 1


@given(st.one_of(st.text(max_size=40), st.none(), st.integers(), st.binary(max_size=8)))
def test_split_url_accepts_or_raises_value_or_type_error_only(url: Any) -> None:
    if isinstance(url, str):
        assert isinstance(mask_url(url), str)  # never raises
    try:
        base, _ = split_url(url, what="pushgateway URL", example="http://e", bare_host=True)
    except (ValueError, TypeError):
        return
    assert base.isascii()
    assert not any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in base)
    assert base.startswith(("http://", "https://"))
    assert "@" not in base


MARKER = "S3CR"  # in every password; hosts and paths below never hold capitals
hosts = st.one_of(
    st.sampled_from(["gw.example", "127.0.0.1", "[::1]", "[fe80::1]", "localhost", "bücher.de"]),
    st.text(alphabet="abcdefghij0123456789.-_[]:%", max_size=12),
)
secrets = st.lists(
    st.one_of(
        st.sampled_from(["://", "@", "/", "?", "#", ":", "%40", "%2F", " ", "\n"]),
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    ),
    max_size=6,
).map(lambda parts: MARKER + "".join(parts))


def test_a_password_holding_a_scheme_separator_is_masked_too() -> None:
    # Without a scheme, the "://" in the password was taken for the end of one.
    assert mask_url("alice:S3CR://x@gw.example:9091") == "***@gw.example:9091"
    with pytest.raises(ValueError) as info:
        PushTarget("alice:S3CR://x@gw.example:9091", job="j", grouping_key={})
    assert MARKER not in str(info.value)


@given(
    scheme=st.sampled_from(["http", "https", "ftp", "HTTP", ""]),
    user=st.text(alphabet="abcxyz%40", max_size=5),
    password=secrets,
    host=hosts,
    port=st.one_of(st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}"), st.just(":x")),
    path=st.text(alphabet="abc/._~-?#@ %\t", max_size=10),
)
def test_no_password_ever_shows_in_a_mask_or_an_error(
    scheme: str, user: str, password: str, host: str, port: str, path: str
) -> None:
    prefix = f"{scheme}://" if scheme else ""
    url = f"{prefix}{user}:{password}@{host}{port}{path}"
    assert MARKER not in mask_url(url)
    for bare_host in (False, True):
        try:
            base, credentials = split_url(url, what="x", example="y", bare_host=bare_host)
        except (ValueError, TypeError) as exc:
            assert MARKER not in str(exc)
            continue
        assert MARKER not in base
        assert credentials is not None and credentials[1].startswith(MARKER)
    try:
        target = PushTarget(url, job="j", grouping_key={})
    except (ValueError, TypeError) as exc:
        assert MARKER not in str(exc)
    else:
        assert MARKER not in repr(target) and MARKER not in mask_url(target.group_url)


# -- item 12: buckets, and registration all or nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "error", "message"),
    [
        ([math.inf], ValueError, "at least one finite bound"),
        ([], ValueError, "at least one finite bound"),
        ([1, math.nan, 2], ValueError, "finite numbers"),
        ([math.nan], ValueError, "finite numbers"),
        ([-math.inf, 1], ValueError, "finite numbers"),
        ([1, math.inf, 2], ValueError, "finite numbers"),
        ([1, 1], ValueError, "strictly increasing"),
        ([2, 1], ValueError, "strictly increasing"),
        ([10**400], ValueError, "too large"),
        (["1", "2"], TypeError, "must hold numbers"),
        ([True, 2], TypeError, "must hold numbers"),
        ({"ai_call_duration_seconds": "12"}, TypeError, "sequence of numbers"),
        ({"ai_call_duration_seconds": 5}, TypeError, "sequence of numbers"),
        ({"analyses_total": [1]}, ValueError, "is not a histogram"),
    ],
)
def test_refused_buckets_leave_the_registry_untouched(
    buckets: Any, error: type[Exception], message: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(error, match=message):
        Instrumentation(registry=registry, buckets=buckets)
    assert collector_names(registry) == []
    assert list(registry.collect()) == []
    records_fine(registry)


def test_a_clash_midway_through_registration_rolls_back() -> None:
    registry = CollectorRegistry()
    # The last metric defined: every other one would be registered before the clash.
    theirs = Counter("codomyrmex_pushes", "someone else's", registry=registry)
    before = collector_names(registry)
    with pytest.raises(ValueError, match="clash with collectors already on this registry"):
        Instrumentation(registry=registry)
    assert collector_names(registry) == before
    # Another namespace works beside it, and once theirs is gone ours does too.
    records_fine(registry, namespace="other")
    registry.unregister(theirs)
    records_fine(registry)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"push_mode": "bogus"}, "push_mode must be one of"),
        ({"push_mode": "each"}, "needs a target"),
        ({"prices": "/nonexistent/prices.json"}, "cannot read the price table"),
        ({"namespace": "ns", "grouping_key": {"a-b": "x"}}, "not a valid label name"),
    ],
)
def test_any_refused_setting_leaves_the_registry_untouched(
    kwargs: dict[str, Any], message: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match=message):
        Instrumentation(registry=registry, **kwargs)
    assert collector_names(registry) == []
    # Nothing claimed the bucket configuration either.
    records_fine(registry, buckets=[1, 2])


def test_a_refused_instrumentation_on_a_shared_registry_leaves_the_others_working() -> None:
    registry = CollectorRegistry()
    first = Instrumentation(registry=registry)
    names = collector_names(registry)
    with pytest.raises(ValueError, match="push_mode must be one of"):
        Instrumentation(registry=registry, push_mode="bogus")
    assert collector_names(registry) == names
    first.record_analysis("m", "t", 0.5)
    labels = {**LABELS, "status": "success"}
    assert registry.get_sample_value("codomyrmex_analyses_total", labels) == 1
    first.close()


def test_instrumentations_made_at_once_from_threads_share_one_set_of_metrics() -> None:
    registry = CollectorRegistry()
    made: list[Instrumentation] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def make(number: int) -> None:
        start.wait()
        try:
            # Every other one is refused after its metrics exist: it must not take back
            # metrics another thread just picked up.
            inst = Instrumentation(registry=registry, push_mode="bogus" if number % 2 else "off")
        except ValueError:
            return
        except BaseException as exc:  # anything else is the failure under test
            errors.append(exc)
            return
        made.append(inst)
        inst.record_analysis("m", "t", 0.5)

    threads = [threading.Thread(target=make, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(made) == 4
    assert len({id(inst.metrics) for inst in made}) == 1
    labels = {**LABELS, "status": "success"}
    assert registry.get_sample_value("codomyrmex_analyses_total", labels) == len(made)


class FailingRegistry(CollectorRegistry):
    """A registry whose ``register`` raises on one call: a fault midway through ours."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def register(self, collector: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected fault")
        super().register(collector)


@pytest.mark.parametrize("fail_at", [1, 2, 3, len(METRICS), len(METRICS) + 1])
def test_a_fault_at_any_registration_leaves_nothing_behind(fail_at: int) -> None:
    registry = FailingRegistry(fail_at)
    with pytest.raises(RuntimeError, match="injected fault"):
        Instrumentation(registry=registry)
    assert collector_names(registry) == []
    registry.fail_at = 0
    records_fine(registry)


def le_values(registry: CollectorRegistry, name: str) -> set[str]:
    return {
        sample.labels["le"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == f"{name}_bucket"
    }


def expected_bounds(values: list[Any]) -> tuple[float, ...] | None:
    """The oracle: the bounds prometheus_client and Prometheus can take, or None."""
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return None
    try:
        bounds = [float(v) for v in values]
    except OverflowError:
        return None
    if bounds and bounds[-1] == math.inf:
        bounds.pop()
    if not bounds or not all(math.isfinite(b) for b in bounds):
        return None
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        return None
    return tuple(bounds)


bucket_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.sampled_from([10**400, True, "1", None, math.inf, -0.0, 0.0]),
)
bucket_lists = st.one_of(
    st.lists(bucket_values, max_size=6),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6, unique=True).map(sorted),
    st.lists(st.floats(0, 1e3), min_size=1, max_size=5, unique=True).map(
        lambda b: [*sorted(b), math.inf]
    ),
)


@settings(max_examples=300, deadline=None)
@given(buckets=bucket_lists, metric=st.sampled_from([None, *HISTOGRAMS]))
def test_buckets_are_taken_exactly_or_refused_leaving_nothing(
    buckets: list[Any], metric: str | None
) -> None:
    registry = CollectorRegistry()
    given_buckets: Any = buckets if metric is None else {metric: buckets}
    suffix = metric or "analysis_duration_seconds"
    bounds = expected_bounds(buckets)
    try:
        inst = Instrumentation(registry=registry, buckets=given_buckets)
    except (ValueError, TypeError) as exc:
        assert bounds is None, f"{buckets!r} refused: {exc}"
        assert collector_names(registry) == []
        records_fine(registry)
        return
    assert bounds is not None, f"{buckets!r} accepted"
    if suffix.startswith("analysis"):
        inst.record_analysis("m", "t", 0.5)
    else:
        getattr(inst.metrics, next(s.attr for s in METRICS if s.suffix == suffix)).labels(
            "p", "x"
        ).observe(0.5)
    expected = {floatToGoString(b) for b in bounds} | {"+Inf"}  # type: ignore[no-untyped-call]
    assert le_values(registry, f"codomyrmex_{suffix}") == expected
    # The same buckets, spelled with or without the implied +Inf, share the registry.
    same = [*bounds, math.inf] if buckets[-1] != math.inf else list(bounds)
    again = Instrumentation(registry=registry, buckets=same if metric is None else {metric: same})
    assert again.metrics is inst.metrics
    inst.close()


# -- item 11: registries are freed ------------------------------------------------------------------


def use_everything(inst: Instrumentation) -> None:
    @inst.monitored_analysis("m", "t")
    def analyze() -> int:
        return 1

    @inst.track_ai_call("openai", "gpt-4o")
    def ask() -> dict[str, Any]:
        return {"model": "gpt-4o", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    analyze()
    ask()
    with inst.monitored_analysis("m", "block"):
        pass


def full_collect() -> None:
    # An object freed by a weakref callback during one pass (a WeakKeyDictionary entry whose
    # key died) is garbage only from the next pass on.
    for _ in range(3):
        gc.collect()


def collected(make: Callable[[], weakref.ref[CollectorRegistry]]) -> bool:
    ref = make()
    full_collect()
    return ref() is None


@pytest.mark.parametrize(
    "options",
    [{}, {"push_mode": "coalesce", "textfile": "metrics.prom"}, {"enabled": False}],
    ids=["plain", "coalesce-textfile", "disabled"],
)
def test_a_closed_and_dropped_instrumentation_frees_its_registry(
    options: dict[str, Any], tmp_path: Any
) -> None:
    if "textfile" in options:
        options = {**options, "textfile": str(tmp_path / options["textfile"])}

    def make() -> weakref.ref[CollectorRegistry]:
        registry = CollectorRegistry()
        inst = Instrumentation(registry=registry, **options)
        use_everything(inst)
        count = registry.get_sample_value(
            "codomyrmex_analyses_total", {**LABELS, "status": "success"}
        )
        assert count == (1 if inst.enabled else None)
        inst.close()
        return weakref.ref(registry)

    assert collected(make)


def test_an_isolated_instrumentation_frees_its_registry(clean_environment: Any) -> None:
    def make() -> weakref.ref[CollectorRegistry]:
        with isolated_instrumentation() as inst:
            use_everything(inst)
            return weakref.ref(inst.registry)

    assert collected(make)


def test_three_hundred_create_and_close_cycles_do_not_grow(clean_environment: Any) -> None:
    def live_registries() -> int:
        full_collect()
        return sum(isinstance(o, CollectorRegistry) for o in gc.get_objects())

    def cycle() -> None:
        inst = Instrumentation(registry=CollectorRegistry())
        use_everything(inst)
        inst.close()
        with isolated_instrumentation() as isolated:
            isolated.record_analysis("m", "t", 0.1)

    cycle()
    before = live_registries()
    for _ in range(300):
        cycle()
    assert live_registries() <= before + 2


def test_metrics_alone_keep_their_registry_and_are_freed_with_it() -> None:
    def make() -> weakref.ref[CollectorRegistry]:
        metrics = Metrics.get(CollectorRegistry(), "alone")  # the only handle on it
        gc.collect()
        metrics.analyses.labels("m", "t", "success").inc()
        labels = {**LABELS, "status": "success"}
        assert metrics.registry.get_sample_value("alone_analyses_total", labels) == 1
        assert Metrics.get(metrics.registry, "alone") is metrics
        return weakref.ref(metrics.registry)

    assert collected(make)


# -- numbers of seconds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds",
    [0, -1, math.nan, math.inf, 1e300, 10**400],
    ids=["0", "-1", "nan", "inf", "1e300", "1e400"],
)
@pytest.mark.parametrize("keyword", ["push_interval", "push_timeout"])
def test_seconds_no_thread_wait_or_socket_can_take_are_refused(keyword: str, seconds: Any) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match=f"{keyword} must be a positive number of seconds"):
        Instrumentation(registry=registry, pushgateway="http://127.0.0.1:9", **{keyword: seconds})
    assert collector_names(registry) == []
    with pytest.raises(TypeError, match=f"{keyword} must be a number of seconds"):
        wrong: dict[str, Any] = {keyword: "5"}
        Instrumentation(registry=registry, **wrong)


# -- item 15: a bad environment variable -----------------------------------------------------------


@monitored_analysis("env", "calls")
def follows_the_default(x: int) -> int:
    return x * 2


def instrument_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "instrument" and r.levelno >= logging.WARNING]


def test_a_bad_push_mode_logs_one_error_and_calls_record_with_defaults(
    clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_environment.setenv("INSTRUMENT_PUSH_MODE", "bogus")
    clean_environment.setenv("INSTRUMENT_NAMESPACE", "envcalls")
    with caplog.at_level(logging.WARNING, logger="instrument"):
        results = [follows_the_default(i) for i in range(1000)]
    assert results == [i * 2 for i in range(1000)]
    errors = instrument_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "INSTRUMENT_PUSH_MODE='bogus' is not valid" in message
    assert "each, coalesce, off" in message
    assert errors[0].exc_info is None  # one line, no traceback
    # The other variable still applies; the bad one takes its default.
    inst = get_instrumentation()
    assert inst.namespace == "envcalls" and inst.push_mode == "off"
    labels = {"module": "env", "analysis_type": "calls", "status": "success"}
    assert inst.registry.get_sample_value("envcalls_analyses_total", labels) == 1000


def test_settings_that_do_not_go_together_fall_back_to_the_defaults_once(
    clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_environment.setenv("INSTRUMENT_PUSH_MODE", "each")  # each, with no target
    with caplog.at_level(logging.WARNING, logger="instrument"):
        for i in range(100):
            assert follows_the_default(i) == i * 2
    errors = instrument_errors(caplog)
    assert len(errors) == 1
    assert "needs a target" in errors[0].getMessage()
    assert "INSTRUMENT_PUSH_MODE" in errors[0].getMessage()
    labels = {"module": "env", "analysis_type": "calls", "status": "success"}
    assert (
        get_instrumentation().registry.get_sample_value("codomyrmex_analyses_total", labels) == 100
    )
    with pytest.raises(ValueError, match=r"needs a target.*INSTRUMENT_PUSH_MODE"):
        configure()


def test_configure_with_a_bad_environment_raises_at_once(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("INSTRUMENT_PUSH_MODE", "bogus")
    with pytest.raises(
        ValueError, match="INSTRUMENT_PUSH_MODE='bogus' is not valid: expected one of"
    ):
        configure()
    # A keyword given explicitly wins, so its variable is not even read.
    inst = configure(registry=CollectorRegistry(), push_mode="off")
    assert inst.push_mode == "off" and get_instrumentation() is inst


def test_secrets_in_bad_variables_are_never_shown(
    clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_TOKEN", "tk-S3CRET\x01")
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_URL", "http://u:S3CRET@gw example")
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_USERNAME", "alice")
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_PASSWORD", "S3CRET\x02")
    with pytest.raises(ValueError) as info:
        configure()
    text = str(info.value)
    for name in ("TOKEN", "URL", "PASSWORD"):
        assert f"INSTRUMENT_PUSHGATEWAY_{name}" in text
    assert "S3CRET" not in text
    with caplog.at_level(logging.WARNING, logger="instrument"):
        follows_the_default(1)
    logged = " ".join(r.getMessage() for r in instrument_errors(caplog))
    assert "INSTRUMENT_PUSHGATEWAY_TOKEN" in logged and "S3CRET" not in logged


def test_a_password_without_a_username_is_reported() -> None:
    with pytest.raises(ValueError, match="INSTRUMENT_PUSHGATEWAY_PASSWORD is set but"):
        from_environment({"INSTRUMENT_PUSHGATEWAY_PASSWORD": "pw"})


ENV_SETTINGS = [s for s in SETTINGS if s.env is not None]
env_texts = st.one_of(
    st.sampled_from(["", " ", "0", "1", "-1", "nan", "inf", "1e999", "true", "off", "each",
                     "a\n", ".", "..", "x=y", "module=x", "http://h:1", "http://h :1", "5.5",
                     "http://u:S3CRETpw@h:1", "S3CRET\x01", "٣"]),
    st.text(max_size=12),
)  # fmt: skip


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(setting=st.sampled_from(ENV_SETTINGS), value=env_texts)
def test_any_value_of_any_variable_configures_or_names_the_variable(
    clean_environment: Any, setting: Any, value: str
) -> None:
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        assume(False)
    assume("\x00" not in value)
    # Never a request to a host hypothesis made up: pushing stays off unless tested itself.
    kwargs: dict[str, Any] = {"registry": CollectorRegistry()}
    if setting.keyword != "push_mode":
        kwargs["push_mode"] = "off"
    with mock.patch.dict(os.environ, {setting.env: value}):
        try:
            inst = configure(**kwargs)
        except ValueError as exc:
            text = str(exc)
            assert setting.env in text, text
            # A token is never shown; a URL's password is what precedes its last "@".
            hidden = setting.env == "INSTRUMENT_PUSHGATEWAY_TOKEN" or (
                setting.env == "INSTRUMENT_PUSHGATEWAY_URL"
                and value.rfind("@") > value.find("S3CRET")
            )
            if "S3CRET" in value and hidden:
                assert "S3CRET" not in text
            return
    assert get_instrumentation() is inst
    inst.close()


def test_every_variable_in_the_readme_sentence_about_bad_values() -> None:

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert "logs that error once and ignores the variable" in section
    assert "`configure()` raise a `ValueError` naming it" in section


# -- wave 3: keyword values of the wrong type, credentials no header can carry --------------------

GATEWAY = "http://127.0.0.1:9091"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"enabled": "false"}, TypeError),
        ({"enabled": 0}, TypeError),
        ({"enabled": None}, TypeError),
        ({"pushgateway": GATEWAY, "delete_on_exit": "no"}, TypeError),
        ({"delete_on_exit": 1}, TypeError),
        ({"pushgateway": "https://127.0.0.1:9091", "tls_verify": "false"}, TypeError),
        ({"tls_verify": "false"}, TypeError),
        ({"pushgateway": GATEWAY, "basic_auth": "user:pass"}, TypeError),
        ({"pushgateway": GATEWAY, "basic_auth": "ab"}, TypeError),
        ({"pushgateway": GATEWAY, "basic_auth": ("user",)}, TypeError),
        ({"pushgateway": GATEWAY, "basic_auth": ("u", "p", "x")}, TypeError),
        ({"pushgateway": GATEWAY, "basic_auth": ("user", 1)}, TypeError),
        ({"pushgateway": GATEWAY, "bearer_token": ""}, ValueError),
        ({"pushgateway": GATEWAY, "bearer_token": "   "}, ValueError),
        ({"pushgateway": GATEWAY, "bearer_token": "tök\u20ac"}, ValueError),
        ({"pushgateway": GATEWAY, "bearer_token": "tok\u2028x"}, ValueError),
    ],
)
def test_keyword_values_of_the_wrong_kind_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(error) as info:
        Instrumentation(registry=registry, push_mode="off", **kwargs)
    message = str(info.value)
    assert says_what_to_do(message), message
    for secret in ("user:pass", "tök", "tok\u2028"):  # a credential is never echoed
        assert secret not in message
    assert collector_names(registry) == []  # refused before the registry was touched


def test_a_non_latin1_token_is_refused_in_the_environment_naming_the_variable(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_TOKEN", "tök€S3CRET")
    with pytest.raises(ValueError) as info:
        from_environment()
    assert "INSTRUMENT_PUSHGATEWAY_TOKEN" in str(info.value)
    assert "S3CRET" not in str(info.value)


def test_a_latin1_token_and_a_pair_of_credentials_still_push(pushgateway: Pushgateway) -> None:
    for auth in ({"bearer_token": "tok-123"}, {"basic_auth": ["user", "pässwörd密"]}):
        registry = CollectorRegistry()
        inst = Instrumentation(
            registry=registry, pushgateway=pushgateway.url, push_mode="off", **auth
        )
        inst.record_analysis("m", "t", 0.25)
        assert inst.push() is True
        inst.close()


def test_start_http_server_refuses_a_bool_port(inst: Instrumentation) -> None:
    with pytest.raises(ValueError, match="port must be an integer"):
        inst.start_http_server(True)


def test_a_price_table_path_with_a_typo_is_the_only_variable_ignored(
    clean_environment: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    pushgateway: Pushgateway,
    tmp_path: Any,
) -> None:
    missing = tmp_path / "prices-typo.json"
    clean_environment.setenv("INSTRUMENT_AI_PRICES", str(missing))
    clean_environment.setenv("INSTRUMENT_PUSHGATEWAY_URL", pushgateway.url)
    clean_environment.setenv("INSTRUMENT_NAMESPACE", "envprices")
    with caplog.at_level(logging.WARNING, logger="instrument"):
        inst = get_instrumentation()
    errors = instrument_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "INSTRUMENT_AI_PRICES" in errors[0].getMessage()
    assert "cannot read the price table" in errors[0].getMessage()
    # The other variables still apply: it pushes to the gateway under its namespace.
    assert inst.namespace == "envprices" and inst.push_mode == "coalesce"
    inst.record_analysis("m", "t", 0.25)
    assert inst.push() is True
    with pytest.raises(ValueError, match="INSTRUMENT_AI_PRICES"):
        configure()
    not_a_table = tmp_path / "list.json"
    not_a_table.write_text("[1, 2]")
    clean_environment.setenv("INSTRUMENT_AI_PRICES", str(not_a_table))
    with pytest.raises(ValueError, match=r"INSTRUMENT_AI_PRICES.*must be a mapping"):
        from_environment()


@pytest.mark.parametrize(
    "credentials",
    [{"bearer_token": "s3cret-token"}, {"basic_auth": ("user", "s3cret-pass")}],
    ids=["bearer_token", "basic_auth"],
)
@pytest.mark.parametrize("target", [{}, {"textfile": "metrics.prom"}], ids=["none", "textfile"])
def test_credentials_without_a_pushgateway_are_refused(
    credentials: dict[str, Any], target: dict[str, Any], tmp_path: Path
) -> None:
    # Only the Pushgateway sends them: given without one, they were dropped silently.
    if target:
        target = {"textfile": str(tmp_path / target["textfile"])}
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="only the Pushgateway sends credentials") as info:
        Instrumentation(registry=registry, **credentials, **target)
    assert "s3cret" not in str(info.value)
    assert list(registry.collect()) == []  # refused before the registry was touched
