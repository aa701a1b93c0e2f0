"""Section 9: one push of the full state, remote write against the Pushgateway, at 100,
1,000 and 10,000 series: time per push and bytes on the wire, side by side.

Both targets are real and local, the tests' own servers (``tests.servers``): a
Pushgateway, and a Prometheus with its remote-write receiver on. Each push goes through the
library's own target classes, so a push's time is what the flusher pays for it: encoding
(the text format for the gateway; protobuf plus snappy for remote write), the request, and
the server's work on it (the gateway checks the group for consistency; Prometheus appends
to its head block). The bytes are the request body as sent: the gateway's text is not
compressed, remote write's protobuf is snappy-compressed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from itertools import count

from prometheus_client import CollectorRegistry, Counter, generate_latest

from instrument.delivery import PushTarget, Snapshot
from instrument.delivery._prompb import encode_write_request, series_of
from instrument.delivery._remote_write import RemoteWriteTarget
from instrument.delivery._snappy import compress
from tests.servers import INSTALL_HINT, Prometheus, Pushgateway

from .harness import Batch, Variant, measure
from .report import Check, Row, Section, ratio
from .settings import Settings

__all__ = ["run_remote_write"]

SIZES = (100, 1_000, 10_000)
BINARIES = ("prometheus-pushgateway", "prometheus")


def _registry(series: int) -> CollectorRegistry:
    """``series`` counter series, with labels as long as the toolkit's own."""
    registry = CollectorRegistry()
    calls = Counter(
        "bench_analyses", "Analyses", ["module", "analysis_type", "status"], registry=registry
    )
    for i in range(series):
        calls.labels(f"module_{i:05d}", "codebase", "success").inc(i)
    return registry


def _body_sizes(registry: CollectorRegistry, labels: dict[str, str]) -> tuple[int, int]:
    """The bodies' bytes: the gateway's text, and a write's compressed WriteRequest."""
    series, metadata = series_of(registry.collect(), labels, int(time.time() * 1000))
    return len(generate_latest(registry)), len(compress(encode_write_request(series, metadata)))


def _pushes(push: Callable[[Snapshot], None], registry: CollectorRegistry) -> Batch:
    numbers = count(1)  # a write never sends an older state than the last: keep them rising

    def batch(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            push(Snapshot(registry, next(numbers), time.time()))
        return time.perf_counter() - started

    return batch


def run_remote_write(settings: Settings) -> Section:
    section = Section(
        "remote_write",
        9,
        "Remote write vs Pushgateway: one push of the full state",
        display=("ms", 1e3),
        ratio_columns=[("vs_gateway", "vs gateway")],
    )
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        section.skipped.append(f"pushes: {', '.join(missing)} not installed: {INSTALL_HINT}")
        return section
    gateway = Pushgateway().start()
    receiver = Prometheus(Pushgateway(), flags=("--web.enable-remote-write-receiver",))
    try:
        receiver.start()
        measure_pushes(section, settings, gateway, receiver)
    finally:
        receiver.stop()
        gateway.stop()
    return section


def measure_pushes(
    section: Section, settings: Settings, gateway: Pushgateway, receiver: Prometheus
) -> None:
    variants: list[Variant] = []
    sizes: dict[int, tuple[int, int]] = {}
    for series in SIZES:
        registry = _registry(series)
        pushgateway = PushTarget(gateway.url, job=f"bench_rw_{series}", grouping_key={}, timeout=60)
        remote = RemoteWriteTarget(
            f"{receiver.url}/api/v1/write",
            labels={"job": f"bench_rw_{series}"},
            instance="bench",
            timeout=60,
            stale_on_exit=False,
        )
        sizes[series] = _body_sizes(registry, remote.labels)
        calls = 1 if series >= 10_000 else (3 if series >= 1_000 else 10)
        variants += [
            Variant(
                f"gateway_{series}",
                f"Pushgateway PUT, {series:,} series",
                _pushes(pushgateway.push, registry),
                fixed_calls=calls,
            ),
            Variant(
                f"remote_{series}",
                f"remote write, {series:,} series",
                _pushes(remote.push, registry),
                fixed_calls=calls,
            ),
        ]
    timings = measure(variants, rounds=settings.push_rounds, batch_seconds=0)
    for series in SIZES:
        text_bytes, write_bytes = sizes[series]
        gateway_row = Row.from_timing(timings[f"gateway_{series}"])
        remote_row = Row.from_timing(timings[f"remote_{series}"])
        gateway_row.info["bytes"] = text_bytes
        remote_row.info["bytes"] = write_bytes
        gateway_row.detail = f"{text_bytes:,} bytes (text)"
        remote_row.detail = (
            f"{write_bytes:,} bytes (protobuf + snappy), "
            f"{ratio(write_bytes, text_bytes) * 100:.0f}% of the text"
        )
        gateway_row.ratios = {"vs_gateway": 1.0}
        remote_row.ratios = {"vs_gateway": ratio(remote_row.median, gateway_row.median)}
        section.rows += [gateway_row, remote_row]
    stored = receiver.query('count({__name__="bench_analyses_total", instance="bench"})')
    total = sum(SIZES)
    section.checks.append(
        Check(
            f"Prometheus holds all {total:,} written series",
            bool(stored) and float(stored[0]["value"][1]) == total,
        )
    )
    on_gateway = sum(1 for name, _, _ in gateway.samples() if name == "bench_analyses_total")
    section.checks.append(
        Check(f"the gateway holds all {total:,} pushed series", on_gateway == total)
    )
    section.notes.append(
        "time per push, the server's work included; the Pushgateway's slowdown with the number "
        "of groups it already holds is not measured here (one group per size)"
    )
