"""PromQL as data, shared by the dashboard and the rules.

A query is a small tree (:class:`Series`, :class:`Rate`, :class:`Sum`, :class:`Ratio`, ...)
that names metrics by their key in ``metrics.py``; :meth:`Expr.promql` writes it out for
one :class:`Context` (a namespace's metric names and the rate windows). The dashboard's
panels and the rule files are tables of these trees, so a renamed namespace renames every
query and no expression is copy-pasted with a twist.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from .metrics import METRICS, Metrics, check_namespace

if TYPE_CHECKING:
    from .instrumentation import Instrumentation

Source: TypeAlias = "Instrumentation | Metrics | str"


def _metrics(source: Source) -> Metrics:
    if isinstance(source, Metrics):
        return source
    metrics = getattr(source, "metrics", None)
    if isinstance(metrics, Metrics):
        return metrics
    raise TypeError(
        f"expected an Instrumentation, a Metrics or a namespace string, got {type(source).__name__}"
    )


def namespace_of(source: Source) -> str:
    """The namespace of an Instrumentation, a Metrics, or a namespace string (checked as
    recording checks it)."""
    return check_namespace(source) if isinstance(source, str) else _metrics(source).namespace


def buckets_of(source: Source, suffix: str) -> tuple[float, ...]:
    """The bucket bounds ``source`` records the histogram ``suffix`` with: its own for an
    Instrumentation or a Metrics, the default ones for a namespace."""
    if isinstance(source, str):
        check_namespace(source)
        (default,) = [s.buckets for s in METRICS if s.suffix == suffix and s.buckets]
        return default
    return _metrics(source).buckets[suffix]


# Prometheus' own duration syntax (model.ParseDuration): each unit at most once, largest
# first. ASCII digits only, as Go's \d means.
DURATION_RE = re.compile(
    r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$", re.ASCII
)
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


def duration_ms(what: str, value: str) -> int:
    """A Prometheus duration (``'5m'``, ``'1h30m'``) in milliseconds, or a ValueError naming
    ``what``: Prometheus keeps durations in int64 nanoseconds and refuses 0 for a window."""
    match = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    total = 0
    if match:
        total = sum(int(match[2 * i + 2] or 0) * ms for i, ms in enumerate(_DURATION_UNITS_MS))
    if not 0 < total * 1_000_000 < 2**63:
        raise ValueError(
            f"{what} must be a Prometheus duration above zero, its units largest first, such "
            f"as '5m', '1h30m' or '90s', got {value!r}"
        )
    return total


def quoted(value: str) -> str:
    """``value`` as a PromQL string literal: Go's escapes for a backslash, quote, newline."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def number(value: float) -> str:
    """A threshold as PromQL reads it: ``0.05``, ``300``, ``1000000``."""
    as_float = float(value)
    return str(int(as_float)) if as_float.is_integer() else repr(as_float)


def series(metric: str, *matchers: str) -> str:
    """``metric{a="x", b=~"$b"}``; ``matchers`` are written out as given."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(selector: str, window: str) -> str:
    return f"rate({selector}[{window}])"


def increase(selector: str, window: str) -> str:
    return f"increase({selector}[{window}])"


def sum_by(expr: str, by: Sequence[str] = ()) -> str:
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum({expr})"


def max_by(expr: str, by: Sequence[str] = ()) -> str:
    return f"max by ({', '.join(by)}) ({expr})" if by else f"max({expr})"


def zero_if_empty(expr: str, like: str | None = None) -> str:
    """``expr``, or 0 where it has no series.

    Without labels that is ``or vector(0)``; grouped, ``or like * 0`` gives a 0 for each
    group ``like`` has, so the 0 lands on the right label set.
    """
    fallback = "vector(0)" if like is None else f"{like} * 0"
    return f"({expr} or {fallback})"


def ratio(numerator: str, denominator: str, by: Sequence[str] = ()) -> str:
    """``numerator / denominator`` that is 0, not empty, when the numerator has no series."""
    return f"{zero_if_empty(numerator, denominator if by else None)} / {denominator}"


def histogram_quantile(quantile: float, bucket_rate: str, by: Sequence[str] = ()) -> str:
    """``histogram_quantile(q, sum by (le, ...) (<bucket rate>))``."""
    return f"histogram_quantile({number(quantile)}, {sum_by(bucket_rate, ('le', *by))})"


# -- queries as data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a query is written out against: the series name of each key (the metrics'
    attributes, plus any recorded series), and the windows of its rates."""

    names: Mapping[str, str]
    rate_window: str
    #: The window of :class:`Increase`: the dashboard's picked time range.
    range_window: str = "$__range"


class Expr(ABC):
    """A PromQL expression whose metric names are filled in by :meth:`promql`."""

    @abstractmethod
    def promql(self, ctx: Context) -> str: ...


#: An operand of :class:`Op`: an expression, a number, or PromQL as written (``"time()"``).
Operand: TypeAlias = "Expr | float | str"


def _operand(value: Operand, ctx: Context) -> str:
    if isinstance(value, Expr):
        return value.promql(ctx)
    return value if isinstance(value, str) else number(value)


@dataclass(frozen=True)
class Series(Expr):
    """The series of ``key`` (plus ``suffix``, e.g. ``_bucket``), filtered by ``where``."""

    key: str
    where: tuple[str, ...] = ()
    suffix: str = ""

    def promql(self, ctx: Context) -> str:
        return series(ctx.names[self.key] + self.suffix, *self.where)


@dataclass(frozen=True)
class Rate(Expr):
    """Per second over the rate window."""

    of: Series

    def promql(self, ctx: Context) -> str:
        return rate(self.of.promql(ctx), ctx.rate_window)


@dataclass(frozen=True)
class Increase(Expr):
    """The total over the range window."""

    of: Series

    def promql(self, ctx: Context) -> str:
        return increase(self.of.promql(ctx), ctx.range_window)


@dataclass(frozen=True)
class MaxOverTime(Expr):
    """The largest value of a gauge over ``window``."""

    of: Series
    window: str

    def promql(self, ctx: Context) -> str:
        return f"max_over_time({self.of.promql(ctx)}[{self.window}])"


@dataclass(frozen=True)
class Sum(Expr):
    of: Expr
    by: tuple[str, ...] = ()

    def promql(self, ctx: Context) -> str:
        return sum_by(self.of.promql(ctx), self.by)


@dataclass(frozen=True)
class Max(Expr):
    """``max by (by)``, or with ``without``, ``max without (without)``."""

    of: Expr
    by: tuple[str, ...] = ()
    without: tuple[str, ...] = ()

    def promql(self, ctx: Context) -> str:
        if self.without:
            return f"max without ({', '.join(self.without)}) ({self.of.promql(ctx)})"
        return max_by(self.of.promql(ctx), self.by)


@dataclass(frozen=True)
class Ratio(Expr):
    """:func:`ratio`: 0, not empty, when the numerator has no series."""

    numerator: Expr
    denominator: Expr
    by: tuple[str, ...] = ()

    def promql(self, ctx: Context) -> str:
        return ratio(self.numerator.promql(ctx), self.denominator.promql(ctx), self.by)


@dataclass(frozen=True)
class Quantile(Expr):
    """:func:`histogram_quantile` over a rate of buckets, kept apart ``by`` these labels."""

    q: float
    buckets: Expr
    by: tuple[str, ...] = ()

    def promql(self, ctx: Context) -> str:
        return histogram_quantile(self.q, self.buckets.promql(ctx), self.by)


@dataclass(frozen=True)
class OrZero(Expr):
    """:func:`zero_if_empty` without labels."""

    of: Expr

    def promql(self, ctx: Context) -> str:
        return zero_if_empty(self.of.promql(ctx))


@dataclass(frozen=True)
class Op(Expr):
    """``left op right``; ``grouped`` puts it in parentheses."""

    left: Operand
    op: str
    right: Operand
    grouped: bool = False

    def promql(self, ctx: Context) -> str:
        text = f"{_operand(self.left, ctx)} {self.op} {_operand(self.right, ctx)}"
        return f"({text})" if self.grouped else text
