"""What a section produces (rows, targets, checks) and how it is printed and saved."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .harness import Timing, quartiles

__all__ = ["Check", "Row", "Section", "Target", "ratio", "render"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


@dataclass
class Row:
    key: str
    label: str
    #: The headline number in ``unit``: seconds per operation, calls per second, MiB ...
    median: float
    unit: str
    p25: float | None = None
    p75: float | None = None
    samples: int = 1
    ratios: dict[str, float] = field(default_factory=dict)
    #: Extra numbers for the JSON (calls per round, RSS before and after, series count ...).
    info: dict[str, Any] = field(default_factory=dict)
    #: Printed after the row's numbers.
    detail: str = ""

    @classmethod
    def from_timing(cls, timing: Timing) -> Row:
        q1, q3 = quartiles(timing.samples)
        return cls(
            key=timing.key,
            label=timing.label,
            median=timing.median,
            unit="s",
            p25=q1,
            p75=q3,
            samples=len(timing.samples),
            info={"calls_per_round": timing.calls_per_round, "calls": timing.calls},
        )

    @property
    def spread(self) -> float | None:
        """Half the interquartile range relative to the median (the table's +-%)."""
        if self.p25 is None or self.p75 is None or not self.median:
            return None
        return abs(self.p75 - self.p25) / 2 / abs(self.median)


@dataclass
class Target:
    """A target from the issue: ``value op limit``. Informational: a miss never fails a run."""

    description: str
    value: float
    op: str
    limit: float

    @property
    def met(self) -> bool:
        return _OPS[self.op](self.value, self.limit)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass
class Check:
    """A sanity check that a variant did the work it is timed for (e.g. counted every call)."""

    description: str
    ok: bool


@dataclass
class Section:
    key: str
    number: int
    title: str
    #: How ``Row.median`` is shown: (unit name, factor from the row's unit).
    display: tuple[str, float] = ("µs", 1e6)
    ratio_columns: list[tuple[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Parts not run and why, e.g. "AI stream wrapper: not available yet (...)".
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "ok" if self.rows else "skipped"

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "status": self.status,
            "rows": [{**asdict(r), "spread": r.spread} for r in self.rows],
            "targets": [t.as_dict() for t in self.targets],
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
            "skipped": self.skipped,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def _number(value: float, unit: str) -> str:
    if unit == "calls/s":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _ratio(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}x"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def render(section: Section) -> str:
    """The section as a block of the printed table."""
    name, factor = section.display
    label_width = max([44, *(len(r.label) + 2 for r in section.rows)])
    head = f"{section.number}. {section.title}"
    lines = [head, "-" * max(len(head), 72)]
    if section.rows:
        columns = "".join(f"{title:>12}" for _, title in section.ratio_columns)
        lines.append(f"  {'variant':<{label_width}}{name:>12}{'+-':>7}{columns}")
        for row in section.rows:
            spread = "" if row.spread is None else f"{row.spread * 100:.0f}%"
            ratios = "".join(
                f"{_ratio(row.ratios[key]) if key in row.ratios else '':>12}"
                for key, _ in section.ratio_columns
            )
            shown = _number(row.median * factor, name)
            line = f"  {row.label:<{label_width}}{shown:>12}{spread:>7}{ratios}"
            lines.append(f"{line}  {row.detail}".rstrip())
    for target in section.targets:
        verdict = "PASS" if target.met else "MISS"
        lines.append(
            f"  target {verdict}: {target.description}: {target.value:.2f} "
            f"(target {target.op} {target.limit:g})"
        )
    for check in section.checks:
        lines.append(f"  check {'ok' if check.ok else 'FAILED'}: {check.description}")
    lines += [f"  note: {note}" for note in section.notes]
    lines += [f"  skipped: {part}" for part in section.skipped]
    if section.error is not None:
        lines.append(f"  ERROR: {section.error}")
    return "\n".join(lines)
