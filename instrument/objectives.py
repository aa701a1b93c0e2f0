"""Service level objectives declared beside the code they measure.

An :class:`Objective` says what share of events must be good over a window: analyses or AI
calls that succeed (``success=0.995``), or that finish under a latency threshold
(``latency=(2.56, 0.99)``). Given to a decorator (``objective=``), it covers that
decorator's series: module and analysis type for ``monitored_analysis``, provider and model
for ``track_ai_call``. ``build_rules`` turns what each instrumentation's decorators declared
(:func:`declared`) into multi-window, multi-burn-rate alerts.

Everything is checked when the objective is made or given to a decorator, so a threshold
that no histogram bucket can measure fails at import, not in a silent rule.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client.utils import floatToGoString

from .metrics import METRICS, check_label_value

if TYPE_CHECKING:
    from .instrumentation import Instrumentation

__all__ = [
    "WINDOWS",
    "Coverage",
    "Objective",
    "ObjectiveArg",
    "check_measurable",
    "declare",
    "declared",
    "every_declared",
    "le_value",
    "objectives_of",
]

#: The windows an objective may be measured over (Sloth's and Pyrra's usual periods).
WINDOWS = ("7d", "14d", "28d", "30d")

Kind = Literal["analysis", "ai"]

_SERIES: dict[Kind, tuple[str, str]] = {
    # kind: (the counter with a status label, the duration histogram), keys of metrics.py
    "analysis": ("analyses", "analysis_duration"),
    "ai": ("ai_api_calls", "ai_call_duration"),
}


#: The slowest burn that pages (the 6h and 30m windows): a budget of 1/6 or more could
#: never be burnt that fast, since an error ratio cannot pass 100 %.
_SLOWEST_PAGE = 6


def _share(what: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value < 1
    ):
        raise ValueError(
            f"{what} must lie strictly between 0 and 1 (0.995 is 99.5 % good), got {value!r}"
        )
    if (1 - value) * _SLOWEST_PAGE >= 1:
        raise ValueError(
            f"{what}={value!r} leaves an error budget of {1 - value:.3g}: burning it "
            f"{_SLOWEST_PAGE}x as fast would need more than 100 % errors, so no burn-rate alert "
            "could page; use a share above 0.834 (5/6), such as 0.99"
        )
    return float(value)


@dataclass(frozen=True)
class Objective:
    """A share of good events over a window, e.g. 99.5 % of analyses succeed over 30 days.

    >>> available = Objective("analysis-availability", success=0.995)
    >>> fast_llm = Objective("llm-latency", latency=(2.56, 0.99), window="28d")

    ``latency=(seconds, share)``: that share of events finish within ``seconds``, which
    must be a bucket boundary of the histogram measured. ``min_events``: the alerts stay
    quiet while the long window holds fewer events (sparse batch jobs, one failure).
    """

    name: str
    success: float | None = None
    latency: tuple[float, float] | None = None
    window: str = "30d"
    min_events: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(
                f"an Objective needs a non-empty name, such as 'analysis-availability'; got "
                f"{self.name!r}"
            )
        check_label_value("the objective's name", self.name)
        where = f"Objective {self.name!r}"
        if (self.success is None) == (self.latency is None):
            raise ValueError(
                f"{where}: give exactly one of success=0.995 (the share of events that must "
                "succeed) or latency=(2.56, 0.99) (seconds, the share that must be faster)"
            )
        if self.success is not None:
            object.__setattr__(self, "success", _share(f"{where}: success", self.success))
        if self.latency is not None:
            latency = self.latency
            if isinstance(latency, str | bytes) or not isinstance(latency, Sequence):
                raise ValueError(
                    f"{where}: latency must be a (seconds, share) pair such as (2.56, 0.99), "
                    f"got {latency!r}"
                )
            if len(latency) != 2:
                raise ValueError(
                    f"{where}: latency must be a (seconds, share) pair such as (2.56, 0.99), "
                    f"got {len(latency)} values"
                )
            seconds, share = latency
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or not seconds > 0
            ):
                raise ValueError(
                    f"{where}: the latency threshold must be a positive number of seconds (a "
                    f"histogram bucket boundary), got {seconds!r}"
                )
            share = _share(f"{where}: the latency share", share)
            object.__setattr__(self, "latency", (float(seconds), share))
        if not isinstance(self.window, str) or self.window not in WINDOWS:
            raise ValueError(
                f"{where}: window must be one of {', '.join(WINDOWS)}, got {self.window!r}"
            )
        if (
            isinstance(self.min_events, bool)
            or not isinstance(self.min_events, int)
            or self.min_events < 1
        ):
            raise ValueError(
                f"{where}: min_events must be a positive integer (events in the long window "
                f"before an alert may fire), got {self.min_events!r}"
            )

    @property
    def kind(self) -> Literal["success", "latency"]:
        """``success`` or ``latency``: the ``slo_kind`` label of its rules."""
        return "success" if self.success is not None else "latency"

    @property
    def target(self) -> float:
        """The share of events that must be good."""
        return self.success if self.success is not None else self.latency[1]  # type: ignore[index]

    @property
    def budget(self) -> float:
        """The error budget, 1 - target, without the float noise of the subtraction."""
        return round(1 - self.target, 12)

    @property
    def threshold(self) -> float | None:
        """A latency objective's threshold in seconds."""
        return None if self.latency is None else self.latency[0]


@dataclass(frozen=True)
class Coverage:
    """The series of one decorator an objective covers: ``kind`` picks the metrics,
    ``labels`` select that decorator's series (an AI tracker with ``model=None`` covers
    every model of its provider)."""

    kind: Kind
    labels: tuple[tuple[str, str], ...]

    @property
    def counter(self) -> str:
        """The key (in metrics.py) of the counter whose ``status`` label says good or bad."""
        return _SERIES[self.kind][0]

    @property
    def histogram(self) -> str:
        """The key (in metrics.py) of the duration histogram."""
        return _SERIES[self.kind][1]

    @property
    def histogram_suffix(self) -> str:
        """The duration histogram's name after the namespace, as ``buckets=`` names it."""
        return _SUFFIX_BY_ATTR[self.histogram]


def le_value(bound: float) -> str:
    """A bucket bound as prometheus_client writes it in ``le`` (``2.56``, ``1.0``)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


ObjectiveArg = Objective | Sequence[Objective] | None


def objectives_of(objective: ObjectiveArg) -> tuple[Objective, ...]:
    """``objective=`` as a tuple of objectives, or a TypeError saying what to give."""
    if objective is None:
        return ()
    if isinstance(objective, Objective):
        return (objective,)
    if isinstance(objective, str | bytes) or not isinstance(objective, Iterable):
        raise TypeError(
            "objective must be an Objective or a list of them, e.g. "
            f"objective=Objective('availability', success=0.995); got {type(objective).__name__}"
        )
    found = tuple(objective)
    for item in found:
        if not isinstance(item, Objective):
            raise TypeError(
                f"objective= holds a {type(item).__name__}; give Objective instances, e.g. "
                "Objective('availability', success=0.995)"
            )
    return found


_DEFAULT_BUCKETS = {spec.suffix: spec.buckets for spec in METRICS if spec.buckets}
_SUFFIX_BY_ATTR = {spec.attr: spec.suffix for spec in METRICS}


def check_measurable(objective: Objective, histogram: str, buckets: Sequence[float]) -> None:
    """A latency objective's threshold is one of ``buckets``, else a ValueError listing them."""
    threshold = objective.threshold
    if threshold is None or threshold in buckets:
        return
    bounds = ", ".join(le_value(b) for b in buckets if math.isfinite(b))
    raise ValueError(
        f"Objective {objective.name!r}: the latency threshold {le_value(threshold)} s is not a "
        f"bucket boundary of {histogram}, so no rule can count the events under it; use one of "
        f"{bounds} (or record that histogram with buckets= that include it)"
    )


def _same(first: Objective, second: Objective) -> None:
    if first != second:
        raise ValueError(
            f"two different objectives are named {first.name!r} ({first!r} and {second!r}); "
            "give each its own name, or reuse the same Objective"
        )


class _Table:
    """What the decorators of one instrumentation (or those following the default) declared."""

    def __init__(self) -> None:
        self.objectives: dict[str, Objective] = {}
        self.coverage: dict[str, list[Coverage]] = {}


_lock = threading.Lock()
_following_default = _Table()
_by_inst: weakref.WeakKeyDictionary[Instrumentation, _Table] = weakref.WeakKeyDictionary()


def declare(inst: Instrumentation | None, objective: ObjectiveArg, coverage: Coverage) -> None:
    """Note that ``coverage`` counts towards ``objective`` (one or a list) on ``inst`` (None:
    the default instrumentation); called at decoration time. Refuses, before noting any, a
    latency threshold the histogram cannot measure and a second, different objective under
    a name already declared."""
    objectives = objectives_of(objective)
    if not objectives:
        return
    suffix = coverage.histogram_suffix
    buckets = _DEFAULT_BUCKETS[suffix] if inst is None else inst.metrics.buckets[suffix]
    for item in objectives:
        check_measurable(item, suffix, buckets)
    with _lock:
        table = _following_default if inst is None else _by_inst.setdefault(inst, _Table())
        seen: dict[str, Objective] = dict(table.objectives)
        for item in objectives:
            _same(seen.setdefault(item.name, item), item)
        for item in objectives:
            table.objectives[item.name] = item
            covered = table.coverage.setdefault(item.name, [])
            if coverage not in covered:
                covered.append(coverage)


def declared(
    inst: Instrumentation | None, *, following_default: bool = False
) -> list[tuple[Objective, tuple[Coverage, ...]]]:
    """The objectives declared on ``inst``'s decorators (None: none of them), plus, with
    ``following_default``, those on the decorators following the default instrumentation;
    each with the series it covers, in declaration order."""
    with _lock:
        tables = [] if inst is None else [_by_inst.get(inst, _Table())]
        if following_default:
            tables.append(_following_default)
        merged: dict[str, Objective] = {}
        coverage: dict[str, list[Coverage]] = {}
        for table in tables:
            for name, item in table.objectives.items():
                _same(merged.setdefault(name, item), item)
                covered = coverage.setdefault(name, [])
                covered.extend(c for c in table.coverage[name] if c not in covered)
    return [(item, tuple(coverage[name])) for name, item in merged.items()]


def every_declared() -> list[tuple[Objective, tuple[Coverage, ...]]]:
    """Every objective this process declared, on any instrumentation (what ``instrument
    rules --import`` collects after importing the modules)."""
    with _lock:
        insts = list(_by_inst.keys())
    found: dict[str, tuple[Objective, list[Coverage]]] = {}
    for entry in [*(declared(i) for i in insts), declared(None, following_default=True)]:
        for item, covered in entry:
            other, merged = found.setdefault(item.name, (item, []))
            _same(other, item)
            merged.extend(c for c in covered if c not in merged)
    return [(item, tuple(covered)) for item, covered in found.values()]
