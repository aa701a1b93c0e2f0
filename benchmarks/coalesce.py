"""Section 8: coalescing on a large registry, calls per second with ``push_interval=0.1``
against ``off``, side by side, against a real local Pushgateway.

Each instrumentation's registry holds 10,000 series besides the toolkit's own (one gauge
with 10,000 label values, as a service with many tenants or models has), so one push
collects and serializes about 10,000 samples: tenths of a second of CPU that the callers
wait out while the flusher holds the GIL. The flusher stretches its interval so that
pushing takes at most a tenth of the time; the target is what callers keep: coalesce at
most 1.1x slower than off (before the stretch: 1.53x, issue 13).

As in section 5, every coalesced batch is followed by an untimed flush, so a pending push
never lands in the next variant's time.
"""

from __future__ import annotations

import shutil
import time

from prometheus_client import CollectorRegistry, Gauge

from instrument import Instrumentation
from tests.servers import INSTALL_HINT, Pushgateway

from .calls import KIND, MODULE, sync_batch
from .fakes import make_work
from .harness import Variant, measure
from .push import GATEWAY, flushed, pushed_count, rate_row
from .report import Check, Section, Target, ratio
from .settings import Settings

__all__ = ["SERIES", "run_coalesce"]

#: Series in each registry besides the toolkit's own.
SERIES = 10_000
INTERVAL = 0.1


def large_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    tenants = Gauge(
        "bench_tenant_queue_depth", "Queue depth per tenant", ["tenant"], registry=registry
    )
    for i in range(SERIES):
        tenants.labels(f"tenant-{i:05d}").set(i)
    return registry


def run_coalesce(settings: Settings) -> Section:
    section = Section(
        "coalesce",
        8,
        f"Coalesce on a large registry: calls per second with {SERIES:,} series",
        display=("calls/s", 1.0),
        ratio_columns=[("vs_no_push", "vs no push")],
    )
    if shutil.which(GATEWAY) is None:
        section.skipped.append(f"coalesce: {GATEWAY} is not installed: {INSTALL_HINT}")
        return section
    gw = Pushgateway().start()
    try:
        measure_coalesce(section, settings, gw)
    finally:
        gw.stop()
    return section


def measure_coalesce(section: Section, settings: Settings, gw: Pushgateway) -> None:
    insts = {
        mode: Instrumentation(
            registry=large_registry(),
            pushgateway=gw.url,
            job=f"bench_large_{mode}",
            push_mode=mode,
            push_interval=INTERVAL,
        )
        for mode in ("off", "coalesce")
    }
    decorated = {
        key: inst.monitored_analysis(MODULE, KIND)(make_work()) for key, inst in insts.items()
    }
    # A push's cost, measured once: what the stretch is made of.
    t0 = time.thread_time()
    insts["coalesce"].flush(timeout=30)
    push_cpu = time.thread_time() - t0
    # Batches long enough to hold several stretched intervals: a push costs tenths of a
    # second, so the flusher waits about nine times as long between pushes. A batch after
    # the other variant's starts with a push (the slot passed meanwhile): one more than
    # the steady state, which short batches (the quick run) overweight.
    batch_seconds = 1.0 if settings.quick else 6.0
    rounds = 3 if settings.quick else 5
    variants = [
        Variant("off", "sync, push_mode='off'", sync_batch(decorated["off"])),
        Variant(
            "coalesce",
            f"sync, push_mode='coalesce' (interval {INTERVAL:g} s)",
            flushed(sync_batch(decorated["coalesce"]), insts["coalesce"]),
        ),
    ]
    try:
        timings = measure(variants, rounds=rounds, batch_seconds=batch_seconds)
        insts["coalesce"].flush(timeout=30)
        pushed = pushed_count(gw, "bench_large_coalesce")
        pushes = insts["coalesce"].registry.get_sample_value("codomyrmex_pushes_total")
    finally:
        for inst in insts.values():
            inst.close()
    rows = {key: rate_row(timing) for key, timing in timings.items()}
    for row in rows.values():
        row.ratios = {"vs_no_push": ratio(row.median, rows["off"].median)}
        row.detail = f"{row.info['seconds_per_call'] * 1e6:,.2f} µs per call"
        section.rows.append(row)
    section.targets.append(
        Target(
            f"slowdown of coalesce vs off at {SERIES:,} series, push_interval={INTERVAL:g} "
            "(off calls/s / coalesce calls/s)",
            ratio(rows["off"].median, rows["coalesce"].median),
            "<=",
            1.1,
        )
    )
    calls = timings["coalesce"].calls
    section.checks.append(
        Check(
            f"coalesce: the gateway holds all {calls} calls after the final flush", pushed == calls
        )
    )
    section.notes.append(
        f"one push of this registry: {push_cpu:.3f} s of CPU; {pushes or 0:.0f} pushes in all "
        f"({rounds} rounds of about {batch_seconds:g} s per variant, each coalesced batch "
        "flushed untimed)"
    )
