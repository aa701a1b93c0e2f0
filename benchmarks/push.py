"""Section 5: calls per second with each push mode, against a real local Pushgateway.

The gateway is the tests' own (``tests.servers.Pushgateway``: a free loopback port, no
persistence file, so nothing is written outside the run and no stale groups are loaded).

Every variant runs ``@monitored_analysis`` (or the original design's code) on a trivial
function, so the numbers are what delivery costs the caller:

- ``off``: never pushes (the baseline);
- ``coalesce``: the call marks the state dirty; a daemon flusher pushes at most once per
  ``push_interval``. The interval here is shorter than the default 1 s so that every timed
  batch contains pushes (the flusher's HTTP and exposition work competes for the GIL);
- ``each``: a blocking push at the end of every call;
- the original design's ``push_metrics()`` after every analysis: labels looked up per call,
  then ``generate_latest`` and a POST with a new ``aiohttp.ClientSession`` each time.

``each`` and the original style are slow, so they run a fixed small number of calls per
round. The coalesced instrumentations are flushed (untimed) after each batch so a pending
push never lands in the next variant's time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from instrument import Instrumentation
from instrument.metrics import Metrics
from tests.servers import INSTALL_HINT, Pushgateway

from .calls import KIND, MODULE, AsyncFn, async_batch, sync_batch
from .fakes import make_async_work, make_work
from .harness import Batch, Timing, Variant, measure
from .report import Check, Row, Section, Target, ratio
from .settings import Settings

__all__ = ["run_push"]

logger = logging.getLogger("benchmarks")

GATEWAY = "prometheus-pushgateway"


class SeedStyle:
    """The original design's PrometheusIntegration, reduced to what one analysis does."""

    def __init__(self, pushgateway_url: str, job: str) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics.get(self.registry)
        self.url = f"{pushgateway_url}/metrics/job/{job}"
        self.failed = 0

    def record_analysis(
        self, module: str, analysis_type: str, duration: float, success: bool
    ) -> None:
        status = "success" if success else "error"
        self.metrics.analyses.labels(
            module=module, analysis_type=analysis_type, status=status
        ).inc()
        self.metrics.analysis_duration.labels(module=module, analysis_type=analysis_type).observe(
            duration
        )

    def update_active_jobs(self, job_type: str, count: int) -> None:
        self.metrics.active_jobs.labels(job_type=job_type).set(count)

    async def push_metrics(self) -> None:
        import aiohttp

        metrics_data = generate_latest(self.registry)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url, data=metrics_data, headers={"Content-Type": "text/plain"}
            ) as resp,
        ):
            if resp.status != 200:
                self.failed += 1
                logger.error("seed-style push failed: %s", resp.status)

    def workflow(self) -> AsyncFn:
        """``monitored_analysis_workflow`` of the original design, around a trivial function."""
        work = make_async_work()

        async def monitored_analysis_workflow(x: int) -> int:
            start_time = time.time()
            self.update_active_jobs(MODULE, 1)
            try:
                result = await work(x)
                self.record_analysis(MODULE, KIND, time.time() - start_time, success=True)
                await self.push_metrics()
                return result
            except Exception:
                self.record_analysis(MODULE, KIND, time.time() - start_time, success=False)
                await self.push_metrics()
                raise
            finally:
                self.update_active_jobs(MODULE, 0)

        return monitored_analysis_workflow


def flushed(batch: Batch, inst: Instrumentation) -> Batch:
    """``batch``, then an untimed flush so the next variant starts with nothing pending."""

    def run(n: int) -> float:
        elapsed = batch(n)
        inst.flush()
        return elapsed

    return run


def pushed_count(gw: Pushgateway, job: str) -> float | None:
    return gw.value(
        "codomyrmex_analyses_total", job=job, module=MODULE, analysis_type=KIND, status="success"
    )


def rate_row(timing: Timing) -> Row:
    """A row in calls per second (the quartiles swap: a slow round is a low rate)."""
    seconds = Row.from_timing(timing)
    assert seconds.p25 is not None and seconds.p75 is not None
    return Row(
        key=timing.key,
        label=timing.label,
        median=1 / seconds.median,
        unit="calls/s",
        p25=1 / seconds.p75,
        p75=1 / seconds.p25,
        samples=seconds.samples,
        info={**seconds.info, "seconds_per_call": seconds.median},
    )


def run_push(settings: Settings) -> Section:
    section = Section(
        "push",
        5,
        "Push: calls per second, @monitored_analysis on a trivial function",
        display=("calls/s", 1.0),
        ratio_columns=[("vs_no_push", "vs no push"), ("vs_seed", "vs seed")],
    )
    # Checked here: outside pytest, the server helper's own check would raise pytest's Skipped.
    if shutil.which(GATEWAY) is None:
        section.skipped.append(f"push modes: {GATEWAY} is not installed: {INSTALL_HINT}")
        return section
    gw = Pushgateway().start()
    try:
        measure_push(section, settings, gw)
    finally:
        gw.stop()
    return section


def measure_push(section: Section, settings: Settings, gw: Pushgateway) -> None:
    interval = settings.push_interval

    def instrumentation(job: str, mode: str) -> Instrumentation:
        return Instrumentation(
            registry=CollectorRegistry(),
            pushgateway=gw.url,
            job=job,
            push_mode=mode,
            push_interval=interval,
        )

    insts = {
        "off": instrumentation("bench_off", "off"),
        "coalesce": instrumentation("bench_coalesce", "coalesce"),
        "each": instrumentation("bench_each", "each"),
        "async_off": instrumentation("bench_async_off", "off"),
        "async_coalesce": instrumentation("bench_async_coalesce", "coalesce"),
    }
    seed = SeedStyle(gw.url, "bench_seed")
    loop = asyncio.new_event_loop()

    def decorated(key: str) -> Callable[[int], int]:
        wrapped: Callable[[int], int] = insts[key].monitored_analysis(MODULE, KIND)(make_work())
        return wrapped

    def decorated_async(key: str) -> AsyncFn:
        wrapped: AsyncFn = insts[key].monitored_analysis(MODULE, KIND)(make_async_work())
        return wrapped

    slow = settings.push_slow_calls
    variants = [
        Variant("off", "sync, push_mode='off'", sync_batch(decorated("off"))),
        Variant(
            "coalesce",
            f"sync, push_mode='coalesce' (interval {interval:g} s)",
            flushed(sync_batch(decorated("coalesce")), insts["coalesce"]),
        ),
        Variant(
            "each",
            "sync, push_mode='each' (blocking push per call)",
            sync_batch(decorated("each")),
            fixed_calls=slow,
        ),
        Variant(
            "async_off", "async, push_mode='off'", async_batch(loop, decorated_async("async_off"))
        ),
        Variant(
            "async_coalesce",
            f"async, push_mode='coalesce' (interval {interval:g} s)",
            flushed(async_batch(loop, decorated_async("async_coalesce")), insts["async_coalesce"]),
        ),
        Variant(
            "seed",
            "original: aiohttp POST, new session per call",
            async_batch(loop, seed.workflow()),
            fixed_calls=slow,
        ),
    ]
    try:
        timings = measure(
            variants, rounds=settings.push_rounds, batch_seconds=settings.push_batch_seconds
        )
        for inst in insts.values():
            inst.flush()
        pushed = {key: pushed_count(gw, f"bench_{key}") for key in timings}
    finally:
        loop.run_until_complete(asyncio.sleep(0))  # let aiohttp finish closing its transports
        loop.close()
        for inst in insts.values():
            inst.close()

    rows = {key: rate_row(timing) for key, timing in timings.items()}
    seed_rate = rows["seed"].median
    for key, row in rows.items():
        base = rows["async_off" if key.startswith("async") or key == "seed" else "off"].median
        row.ratios = {
            "vs_no_push": ratio(row.median, base),
            "vs_seed": ratio(row.median, seed_rate),
        }
        row.detail = f"{row.info['seconds_per_call'] * 1e6:,.1f} µs per call"
        section.rows.append(row)
    section.targets += [
        Target(
            "slowdown of coalesce vs off (off calls/s / coalesce calls/s, sync)",
            ratio(rows["off"].median, rows["coalesce"].median),
            "<=",
            1.5,
        ),
        Target(
            "slowdown of coalesce vs off (async)",
            ratio(rows["async_off"].median, rows["async_coalesce"].median),
            "<=",
            1.5,
        ),
        Target(
            "coalesce calls/s / original per-call POST calls/s (both async)",
            ratio(rows["async_coalesce"].median, seed_rate),
            ">=",
            100,
        ),
    ]
    for key in ("coalesce", "each", "async_coalesce", "seed"):
        calls = timings[key].calls
        section.checks.append(
            Check(
                f"{key}: the gateway holds all {calls} calls after the final flush",
                pushed[key] == calls,
            )
        )
    section.checks.append(Check("original style: every POST answered 200", seed.failed == 0))
    section.notes.append(
        f"each and the original style: {slow} calls per round; push_interval {interval:g} s "
        "(the default is 1 s) so coalesced batches include pushes"
    )
    section.notes.append("coalesce at 10,000 series against off: section 8")
