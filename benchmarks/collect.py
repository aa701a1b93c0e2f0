"""Section 10: what one read costs, against the number of live threads that recorded.

A read (scrape, push, textfile, ``get_sample_value``) is one ``registry.collect()``. With
per-thread cells it first folds every cell into the children, so its cost grows with the
threads that recorded; the issue bounds it at 2x 0.1.0's with 64 live threads. Each timed
read follows a round in which every thread of the pool made one decorated call (so every
cell has something to fold); the rounds themselves are not timed. One row reads with
nothing recorded since the last read (a steady scrape of idle threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation

from .before import BeforeMonitor
from .calls import KIND, MODULE, successes
from .fakes import make_work
from .harness import Batch, Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_collect"]

THREADS = (1, 8, 64, 256)


class _Pool:
    """``size`` live threads, each making one call of ``func`` per round."""

    def __init__(self, size: int, func: Callable[[int], Any]) -> None:
        self.go = threading.Barrier(size + 1)
        self.done = threading.Barrier(size + 1)
        self.stopping = False
        self.calls = 0
        self.threads = [threading.Thread(target=self._run, args=(func,)) for _ in range(size)]
        for t in self.threads:
            t.start()

    def _run(self, func: Callable[[int], Any]) -> None:
        while True:
            self.go.wait()
            if self.stopping:
                return
            func(1)
            self.done.wait()

    def round(self) -> None:
        self.go.wait()
        self.done.wait()
        self.calls += len(self.threads)

    def stop(self) -> None:
        self.stopping = True
        self.go.wait()
        for t in self.threads:
            t.join()


def _reads(registry: CollectorRegistry, pool: _Pool | None) -> Batch:
    def batch(n: int) -> float:
        elapsed = 0.0
        for _ in range(n):
            if pool is not None:
                pool.round()
            t0 = perf_counter()
            for _family in registry.collect():
                pass
            elapsed += perf_counter() - t0
        return elapsed

    return batch


def run_collect(settings: Settings) -> Section:
    section = Section(
        "collect",
        10,
        "Read: one registry.collect(), by live threads that recorded since the last read",
        ratio_columns=[("vs_before", "vs before")],
    )
    reads = 10 if settings.quick else 40
    instances: list[Instrumentation] = []
    pools: list[_Pool] = []
    variants = []
    counted: dict[str, tuple[Instrumentation, _Pool]] = {}

    def add(key: str, label: str, threads: int, *, before: bool, idle: bool = False) -> None:
        inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
        monitor = (BeforeMonitor if before else inst.monitored_analysis)(
            *((inst, MODULE, KIND) if before else (MODULE, KIND))
        )
        pool = _Pool(threads, monitor(make_work()))
        pool.round()  # cells made, children bound
        instances.append(inst)
        pools.append(pool)
        counted[key] = (inst, pool)
        batch = _reads(inst.registry, None if idle else pool)
        variants.append(Variant(key, label, batch, fixed_calls=reads))

    try:
        add("before_64", "before (0.1.0): 64 threads recorded", 64, before=True)
        for n in THREADS:
            add(f"cells_{n}", f"cells: {n} threads recorded", n, before=False)
        add("cells_64_idle", "cells: 64 threads, nothing new", 64, before=False, idle=True)
        timings = measure(variants, rounds=settings.rounds, batch_seconds=settings.batch_seconds)
    finally:
        for pool in pools:
            pool.stop()
        for inst in instances:
            inst.close()
    before = timings["before_64"].median
    for timing in timings.values():
        row = Row.from_timing(timing)
        row.ratios = {"vs_before": ratio(row.median, before)}
        section.rows.append(row)
    section.targets.append(
        Target(
            "collect() with 64 live threads / 0.1.0's",
            ratio(section.row("cells_64").median, before),
            "<=",
            2,
        )
    )
    section.notes.append(
        "each read folds every series of the process (every Instrumentation's), then "
        "exposes this registry's families"
    )
    for key, (inst, pool) in counted.items():
        section.checks.append(
            Check(
                f"{key}: all {pool.calls} calls of the pool read back",
                successes(inst.metrics) == pool.calls,
            )
        )
    return section
