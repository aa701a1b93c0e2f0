"""Small PromQL builders shared by the dashboard and the rules.

Every query the toolkit ships is assembled from these and from the metric names in
``metrics.py``, so a renamed namespace renames every query and no expression is
copy-pasted with a twist.
"""

from __future__ import annotations

from collections.abc import Sequence
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
