"""Helpers for your own tests: an isolated instrumentation, a pytest fixture, assertions.

>>> def test_pipeline(instrument_isolated):       # the fixture this plugin registers
...     run_pipeline()                              # uses @monitored_analysis(...)
...     assert_analyses(instrument_isolated, "static_analysis", "codebase", success=2, error=1)

The plugin is loaded in every pytest run of a project that installs the package, so its
fixture carries the package's prefix: ``instrumentation``, its old name, is a common word a
project's own fixture may use. That name stays for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from .defaults import discard, replace_default
from .instrumentation import Instrumentation

__all__ = [
    "assert_analyses",
    "assert_sample",
    "isolated_instrumentation",
    "sample_value",
]


@contextmanager
def isolated_instrumentation(
    *, as_default: bool = True, **kwargs: Any
) -> Iterator[Instrumentation]:
    """An Instrumentation on a fresh registry that pushes nowhere unless told to.

    With ``as_default`` it is also the default, so module-level decorators report to it;
    the previous default is restored afterwards.
    """
    kwargs.setdefault("registry", CollectorRegistry())
    inst = Instrumentation(**kwargs)
    saved = replace_default(inst) if as_default else None
    try:
        yield inst
    finally:
        inst.close()
        if as_default:
            # Whatever is the default now (inst, or one configure() made in the block)
            # gives way to the one from before, and is closed.
            current = replace_default(saved)
            if current is not None:
                discard(current)


def _registry(source: Instrumentation | CollectorRegistry) -> CollectorRegistry:
    return source.registry if isinstance(source, Instrumentation) else source


def _namespace(source: Instrumentation | CollectorRegistry, name: str) -> str:
    """The full sample name: with an Instrumentation, ``name`` may leave out the namespace
    (``analyses_total``). A name that already carries it is taken as it is only when the
    prefixed reading has no samples, so namespace "ai" still finds ``ai_ai_api_calls_total``."""
    if not isinstance(source, Instrumentation):
        return name
    prefixed = f"{source.namespace}_{name}"
    if not name.startswith(source.namespace + "_"):
        return prefixed
    present = {s.name for family in source.registry.collect() for s in family.samples}
    return name if name in present and prefixed not in present else prefixed


def sample_value(
    source: Instrumentation | CollectorRegistry, name: str, labels: Mapping[str, str] | None = None
) -> float | None:
    """A sample's value, or None. With an Instrumentation the namespace may be left out."""
    return _registry(source).get_sample_value(_namespace(source, name), dict(labels or {}))


def assert_sample(
    source: Instrumentation | CollectorRegistry,
    name: str,
    labels: Mapping[str, str] | None,
    expected: float,
) -> None:
    """Assert a sample's value; the failure lists the samples that do exist under that name."""
    __tracebackhide__ = True
    full = _namespace(source, name)
    actual = sample_value(source, full, labels)
    if actual == expected:
        return
    registry = _registry(source)
    present = [
        f"  {s.name}{dict(s.labels)} = {s.value}"
        for family in registry.collect()
        for s in family.samples
        if s.name == full
    ]
    listing = "\n".join(present) if present else "  (no samples with that name)"
    raise AssertionError(
        f"expected {full}{dict(labels or {})} == {expected}, found {actual}\n"
        f"samples named {full}:\n{listing}"
    )


def assert_analyses(
    source: Instrumentation | CollectorRegistry,
    module: str,
    analysis_type: str,
    *,
    success: int | None = None,
    error: int | None = None,
    cancelled: int | None = None,
) -> None:
    """Assert how many analyses ended in each status, e.g. ``success=2, error=1``; a status
    left out is not checked."""
    __tracebackhide__ = True
    expected = {"success": success, "error": error, "cancelled": cancelled}
    for status, count in expected.items():
        if count is None:
            continue
        labels = {"module": module, "analysis_type": analysis_type, "status": status}
        value = sample_value(source, _namespace(source, "analyses_total"), labels)
        if (value or 0) != count:
            assert_sample(source, "analyses_total", labels, count)


def _fresh_default() -> Iterator[Instrumentation]:
    """A fresh default Instrumentation for one test (registered by the pytest plugin)."""
    with isolated_instrumentation() as inst:
        yield inst


#: The fixture's name, and the name it had before (kept for one release).
FIXTURE = "instrument_isolated"
OLD_FIXTURE = "instrumentation"


def _fresh_default_by_its_old_name() -> Iterator[Instrumentation]:
    warnings.warn(
        f"the pytest fixture {OLD_FIXTURE!r} of instrument.testing is renamed {FIXTURE!r}; "
        "the old name is removed in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    yield from _fresh_default()


# The pytest plugin part: the rest of this module works without pytest installed.
try:
    import pytest
except ImportError:  # pragma: no cover - exercised only where pytest is absent
    pass
else:
    instrument_isolated = pytest.fixture(name=FIXTURE)(_fresh_default)
    instrumentation = pytest.fixture(name=OLD_FIXTURE)(_fresh_default_by_its_old_name)
