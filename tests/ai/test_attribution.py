"""Issue 15: spend per tenant, bounded. The money metrics gain the Instrumentation's
attribution labels; histograms do not; past the cap values are "other" with one warning;
a missing value is ""; a raising callable never breaks the call; without attribution=
every label set is exactly today's."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation

from ..support import counted

MODEL = "gpt-4o"
PRICES = {MODEL: {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}


def response(prompt: int = 100, completion: int = 10, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"usage": usage}


@pytest.fixture
def attributed(registry: CollectorRegistry) -> Any:
    inst = Instrumentation(
        registry=registry, attribution=("tenant",), max_attribution_values=3, prices=PRICES
    )
    yield inst
    inst.close()


def calls(registry: CollectorRegistry, tenant: str, status: str = "success") -> float:
    return counted(
        registry, "ai_api_calls_total", provider="openai", model=MODEL, status=status, tenant=tenant
    )


def test_money_metrics_split_by_tenant_and_histograms_do_not(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["tenant_id"]})
    def ask(tenant_id: str, prompt: str) -> dict[str, Any]:
        return response(cached=40)

    ask("acme", "hi")
    ask(tenant_id="acme", prompt="again")
    ask("globex", "hi")

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["tenant_id"]})
    def ask_default(prompt: str, tenant_id: str = "globex") -> dict[str, Any]:
        return response(cached=40)

    ask_default("hi")  # the default's value, as the function sees it
    labels = {"provider": "openai", "model": MODEL}
    assert calls(registry, "acme") == 2 and calls(registry, "globex") == 2
    assert (
        counted(registry, "ai_tokens_used_total", token_type="input", tenant="acme", **labels)
        == 200
    )
    assert (
        counted(registry, "ai_token_details_total", detail="cache_read", tenant="globex", **labels)
        == 80
    )
    assert counted(registry, "ai_cost_usd_total", tenant="acme", **labels) == pytest.approx(
        2 * 120e-06
    )
    # One duration histogram for the model, whatever the tenant.
    assert counted(registry, "ai_call_duration_seconds_count", **labels) == 4
    for metric in registry.collect():
        if metric.name in ("codomyrmex_ai_call_duration_seconds", "codomyrmex_ai_operations"):
            assert all("tenant" not in s.labels for s in metric.samples)


def test_with_block_attribute_missing_and_raising(
    attributed: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with attributed.track_ai_call("openai", MODEL) as call:
        call.attribute(tenant="initech")
        call.record_response(response())
    with attributed.track_ai_call("openai", MODEL) as call:  # none given
        call.record_response(response())

    def broken(args: Any) -> str:
        raise KeyError("tenant_id")

    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": broken})
    def ask() -> dict[str, Any]:
        return response()

    with caplog.at_level(logging.WARNING, logger="instrument"):
        assert ask() == response()
        ask()
    assert calls(registry, "initech") == 1
    assert calls(registry, "") == 3
    assert [r.getMessage() for r in caplog.records].count(
        "instrument: the attribution callable for 'tenant' raised KeyError; the label is \"\""
    ) == 1
    with (
        pytest.raises(TypeError, match=r"attribute\(tenant=...\) takes a string"),
        attributed.track_ai_call("openai", MODEL) as call,
    ):
        call.attribute(tenant=42)  # type: ignore[arg-type]


def test_past_the_cap_values_are_other_with_one_warning(
    attributed: Instrumentation, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["t"]})
    def ask(t: str) -> dict[str, Any]:
        return response()

    with caplog.at_level(logging.WARNING, logger="instrument"):
        for tenant in ("a", "b", "c", "d", "e", "a", "f"):
            ask(tenant)
    assert {t: calls(registry, t) for t in "abcdef"} == {
        "a": 2, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0
    }  # fmt: skip
    assert calls(registry, "other") == 3
    warnings = [r for r in caplog.records if "more than 3 values" in r.getMessage()]
    assert len(warnings) == 1


def test_threads_count_every_tenant_exactly(
    attributed: Instrumentation, registry: CollectorRegistry
) -> None:
    @attributed.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["t"]})
    def ask(t: str) -> dict[str, Any]:
        return response(3, 1)

    def work(tenant: str) -> None:
        for _ in range(200):
            ask(tenant)

    threads = [threading.Thread(target=work, args=(t,)) for t in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls(registry, "a") == 400 and calls(registry, "b") == 400


def test_without_attribution_every_label_set_is_todays(
    inst: Instrumentation, registry: CollectorRegistry
) -> None:
    @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: "acme"})
    def ask() -> dict[str, Any]:
        return response()

    ask()
    labelled = {
        tuple(sorted(s.labels)) for m in registry.collect() for s in m.samples
        if m.name == "codomyrmex_ai_api_calls"
    }  # fmt: skip
    assert labelled == {("model", "provider", "status")}
    assert (
        counted(registry, "ai_api_calls_total", provider="openai", model=MODEL, status="success")
        == 1
    )


@pytest.mark.parametrize(
    ("attribution", "error"),
    [
        ("tenant", "attribution must be a tuple of label names"),
        (("model",), "is one of the toolkit's"),
        (("job",), "is one of the toolkit's"),
        (("9lives",), "is not a valid label name"),
        (("__name__",), "is not a valid label name"),
        (("tenant", "tenant"), "names a label twice"),
    ],
)
def test_bad_attribution_is_refused_before_the_registry_is_touched(
    attribution: Any, error: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises((TypeError, ValueError), match=error):
        Instrumentation(registry=registry, attribution=attribution)
    assert list(registry.collect()) == []


def test_two_attributions_on_one_registry_clash() -> None:
    registry = CollectorRegistry()
    first = Instrumentation(registry=registry, attribution=("tenant",))
    with pytest.raises(ValueError, match="already registered on this registry with attribution"):
        Instrumentation(registry=registry, attribution=("feature",))
    first.close()


def test_bad_tracker_attribution_is_refused_at_decoration(inst: Instrumentation) -> None:
    with pytest.raises(TypeError, match="attribution must map label names to callables"):
        inst.track_ai_call("openai", MODEL, attribution={"tenant": "acme"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="max_attribution_values must be a positive integer"):
        Instrumentation(registry=CollectorRegistry(), max_attribution_values=0)


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.text(max_size=30), st.integers(), st.none(), st.binary(max_size=6)))
def test_any_attribution_value_leaves_the_call_alone(value: Any) -> None:
    registry = CollectorRegistry()
    inst = Instrumentation(registry=registry, attribution=("tenant",))
    result = response()

    @inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: value})
    def ask() -> dict[str, Any]:
        return result

    assert ask() is result
    generate_latest(registry)  # every value can be exposed
    total = sum(
        s.value for m in registry.collect() if m.name == "codomyrmex_ai_api_calls"
        for s in m.samples if s.name.endswith("_total")
    )  # fmt: skip
    assert total == 1
    inst.close()


# -- what the callables are given: the call's arguments by name, defaults filled in ---------


def _one(tenant: Any) -> Any: ...
def _two(tenant: Any, prompt: Any = "hi") -> Any: ...
def _keyword_only(tenant: Any = "t", *, user: Any = "u") -> Any: ...
def _positional_only(tenant: Any, /, prompt: Any = "p") -> Any: ...
def _variadic(tenant: Any, *rest: Any, **extra: Any) -> Any: ...


class _Client:
    def ask(self, tenant: Any, prompt: Any = "p") -> Any: ...


_SIGNED: list[Callable[..., Any]] = [
    _one,
    _two,
    _keyword_only,
    _positional_only,
    _variadic,
    _Client.ask,
]


def _expected(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """What Signature.bind gives, defaults applied (an empty *args or **kwargs not given is
    left out), or None when the call does not bind (the function itself then raises)."""
    signature = inspect.signature(func)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    given = set(bound.arguments)
    bound.apply_defaults()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        name: value
        for name, value in bound.arguments.items()
        if name in given or signature.parameters[name].kind not in variadic
    }


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(range(len(_SIGNED))),
    positional=st.lists(st.integers(), max_size=3),
    keywords=st.dictionaries(st.sampled_from(["tenant", "prompt", "user", "other"]), st.integers()),
    through_instance=st.booleans(),
)
# One argument by position, the usual call (read without binding): each signature, always.
@example(which=0, positional=[5], keywords={}, through_instance=False)
@example(which=1, positional=[5], keywords={}, through_instance=False)
@example(which=1, positional=[5], keywords={"prompt": 6}, through_instance=False)
@example(which=2, positional=[5], keywords={}, through_instance=False)
@example(which=3, positional=[5], keywords={}, through_instance=False)
@example(which=4, positional=[5], keywords={}, through_instance=False)
@example(which=5, positional=[5], keywords={}, through_instance=True)
def test_the_callables_get_the_arguments_as_signature_bind_gives_them(
    which: int, positional: list[int], keywords: dict[str, int], through_instance: bool
) -> None:
    func = _SIGNED[which]
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off", attribution=("tenant",))
    seen: list[dict[str, Any]] = []

    def capture(arguments: Any) -> str:
        seen.append(dict(arguments))
        return "acme"

    decorated = inst.track_ai_call("openai", MODEL, attribution={"tenant": capture})(func)
    args: tuple[Any, ...] = tuple(positional)
    if func is _Client.ask and through_instance:
        client = _Client()
        call = decorated.__get__(client, _Client)  # as a method: wrapped is a bound method
        expected = _expected(func, (client, *args), keywords)
    else:
        call = decorated
        expected = _expected(func, args, keywords)
    try:
        call(*args, **keywords)
    except TypeError:
        assert expected is None  # refused exactly when the plain function refuses it
    else:
        assert expected is not None
        assert seen == [expected]
        assert calls(inst.registry, "acme") == 1
    inst.close()


def test_a_callable_without_a_signature_gives_the_callables_its_keywords() -> None:
    """``inspect.signature(dict)`` fails: nothing binds the arguments, so the callables get
    the keyword ones as given (they got none)."""
    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off", attribution=("tenant",))
    tracked = inst.track_ai_call("openai", MODEL, attribution={"tenant": lambda a: a["tenant"]})(
        dict
    )
    assert tracked(tenant="acme", usage={"prompt_tokens": 3, "completion_tokens": 1}) == {
        "tenant": "acme",
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert calls(inst.registry, "acme") == 1
    assert calls(inst.registry, "") == 0
    inst.close()
