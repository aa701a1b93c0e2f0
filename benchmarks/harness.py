"""Interleaved timing: all variants of a section run in one process, round-robin.

Frequency scaling, a noisy neighbour or a garbage collection then hits every variant
alike instead of whichever happened to run last, and each variant is summarised by the
median of its rounds. Times are whole per-operation times (loop and bare call included),
so the ratios are the ones a caller would see.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Timing", "Variant", "measure", "quartiles"]

#: ``batch(n)`` performs ``n`` calls and returns the elapsed seconds, timed inside the batch
#: so that set-up (an event loop turn, a generator's creation) stays out of it.
Batch = Callable[[int], float]


@dataclass
class Variant:
    key: str
    label: str
    batch: Batch
    #: Operations per call: a batch of n generator calls of 100 items times n * 100 items.
    per_call: int = 1
    #: Calls per round when calibration must not decide (slow variants, bounded on purpose).
    fixed_calls: int | None = None


@dataclass
class Timing:
    key: str
    label: str
    #: Seconds per operation, one sample per round.
    samples: list[float]
    #: Every call the batch function made, calibration and warm-up included.
    calls: int = 0
    calls_per_round: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class _Counter:
    calls: dict[str, int] = field(default_factory=dict)

    def run(self, variant: Variant, n: int) -> float:
        self.calls[variant.key] = self.calls.get(variant.key, 0) + n
        return variant.batch(n)


def _calibrate(counter: _Counter, variant: Variant, seconds: float) -> int:
    """The call count whose batch takes about ``seconds``."""
    if variant.fixed_calls is not None:
        return variant.fixed_calls
    n = 1
    while True:
        # The shortest of three: a stall on a loaded machine lengthens a batch, never
        # shortens it, and one stalled batch of a few calls would otherwise set every round
        # of this variant to a few calls (timer-bound, and as noisy as the stall).
        elapsed = min(counter.run(variant, n) for _ in range(3))
        if elapsed >= seconds / 8 or n >= 1 << 24:
            return max(1, round(n * seconds / max(elapsed, 1e-9)))
        n *= 8 if elapsed < seconds / 100 else 2


def measure(variants: Sequence[Variant], *, rounds: int, batch_seconds: float) -> dict[str, Timing]:
    """Time every variant ``rounds`` times, interleaved; return each variant's samples.

    Round ``r`` starts at variant ``r mod len(variants)`` so no variant always runs first
    (right after the previous section) or last.
    """
    counter = _Counter()
    sizes = {v.key: _calibrate(counter, v, batch_seconds) for v in variants}
    for v in variants:  # warm-up round: caches, lazily created label children, the flusher
        counter.run(v, sizes[v.key])
    samples: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(rounds):
        for i in range(len(variants)):
            v = variants[(r + i) % len(variants)]
            n = sizes[v.key]
            samples[v.key].append(counter.run(v, n) / (n * v.per_call))
    return {
        v.key: Timing(v.key, v.label, samples[v.key], counter.calls[v.key], sizes[v.key])
        for v in variants
    }


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (both the sample itself when there is only one)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q3
