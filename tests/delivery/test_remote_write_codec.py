"""The remote-write wire format: snappy blocks and the prompb messages, checked against an
independent snappy (cramjam), a generic protobuf reader written from the wire-format rules,
and Prometheus's own remote-write receiver."""

from __future__ import annotations

import math
import struct
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from instrument.delivery import _snappy
from instrument.delivery._prompb import (
    STALE_NAN,
    Exemplar,
    Metadata,
    Sample,
    Series,
    encode_write_request,
    series_of,
)

from ..servers import Prometheus, Pushgateway

# -- a protobuf reader that knows only the wire format, not our messages -----------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) pairs: an int for varints, 8 raw bytes for fixed64, bytes for
    length-delimited fields. Anything else is a malformed message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield field, value
        elif wire == 1:
            yield field, data[pos : pos + 8]
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            assert pos + size <= len(data), "length runs past the message"
            yield field, data[pos : pos + size]
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    assert pos == len(data)


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _label(data: bytes) -> tuple[str, str]:
    got = dict(fields(data))
    return got.get(1, b"").decode(), got.get(2, b"").decode()


def decode_request(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    series, metadata = [], []
    for field, value in fields(data):
        if field == 1:
            entry: dict[str, Any] = {"labels": [], "samples": [], "exemplars": []}
            for f, v in fields(value):
                if f == 1:
                    entry["labels"].append(_label(v))
                elif f == 2:
                    s = dict(fields(v))
                    entry["samples"].append((s[1], _int64(s.get(2, 0))))
                elif f == 3:
                    labels = [_label(x) for g, x in fields(v) if g == 1]
                    e = dict((g, x) for g, x in fields(v) if g != 1)
                    entry["exemplars"].append((labels, e[2], _int64(e.get(3, 0))))
            series.append(entry)
        elif field == 3:
            m = dict(fields(value))
            metadata.append(
                {
                    "type": m.get(1, 0),
                    "family": m.get(2, b"").decode(),
                    "help": m.get(4, b"").decode(),
                    "unit": m.get(5, b"").decode(),
                }
            )
        else:
            raise AssertionError(f"WriteRequest has no field {field}")
    return series, metadata


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


# -- snappy ------------------------------------------------------------------------------------

# Repetitive inputs exercise copies (overlapping ones too), random ones literals of every size.
repetitive = st.builds(
    lambda chunk, n, tail: chunk * n + tail,
    st.binary(min_size=1, max_size=40),
    st.integers(1, 3000),
    st.binary(max_size=300),
)
payloads = st.one_of(st.binary(max_size=5000), repetitive)


@given(payloads)
@settings(max_examples=300, deadline=None)
def test_snappy_blocks_decode_with_an_independent_snappy(data: bytes) -> None:
    compressed = _snappy.compress(data)
    assert bytes(cramjam.snappy.decompress_raw(compressed)) == data
    assert _snappy.decompress(compressed) == data
    assert _snappy.decompress(bytes(cramjam.snappy.compress_raw(data))) == data


@pytest.mark.parametrize("size", [0, 1, 59, 60, 61, 255, 256, 65535, 65536, 65537, 200_000])
def test_snappy_literal_lengths_and_block_edges(size: int) -> None:
    # Random bytes never match: one literal per block, of every header width.
    import random

    data = random.Random(size).randbytes(size)
    assert bytes(cramjam.snappy.decompress_raw(_snappy.compress(data))) == data
    text = (b"remote write " * (size // 13 + 1))[:size]
    assert bytes(cramjam.snappy.decompress_raw(_snappy.compress(text))) == text


def test_snappy_compresses_repeated_text() -> None:
    data = b'codomyrmex_analyses_total{module="m",status="success"} 1\n' * 2000
    assert len(_snappy.compress(data)) < len(data) / 10


@pytest.mark.parametrize("bad", [b"", b"\x05\x00", b"\x04\x0a\x01", b"\x02\x01ab"])
def test_snappy_decoder_refuses_malformed_blocks(bad: bytes) -> None:
    with pytest.raises((ValueError, IndexError)):
        _snappy.decompress(bad)


# -- protobuf ----------------------------------------------------------------------------------

text = st.text(max_size=30)
label_sets = st.dictionaries(text, text, max_size=6).map(lambda d: tuple(sorted(d.items())))
doubles = st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, 0.0, -0.0])
int64s = st.integers(-(2**63), 2**63 - 1)
samples = st.builds(Sample, doubles, int64s)
exemplars = st.builds(Exemplar, label_sets, doubles, int64s)
series_lists = st.lists(
    st.builds(
        Series,
        label_sets,
        st.lists(samples, max_size=3).map(tuple),
        st.lists(exemplars, max_size=2).map(tuple),
    ),
    max_size=5,
)
metadata_lists = st.lists(st.builds(Metadata, st.integers(0, 7), text, text, text), max_size=4)


@given(series_lists, metadata_lists)
@settings(max_examples=200, deadline=None)
def test_write_request_reads_back_field_by_field(
    series: list[Series], metadata: list[Metadata]
) -> None:
    got_series, got_meta = decode_request(encode_write_request(series, metadata))
    assert len(got_series) == len(series)
    for want, got in zip(series, got_series, strict=True):
        assert tuple(got["labels"]) == want.labels
        assert got["samples"] == [(_bits(s.value), s.timestamp_ms) for s in want.samples]
        assert got["exemplars"] == [
            (list(e.labels), _bits(e.value), e.timestamp_ms) for e in want.exemplars
        ]
    assert got_meta == [m._asdict() for m in metadata]


def test_the_staleness_marker_keeps_its_exact_bits() -> None:
    request = encode_write_request([Series((("__name__", "x"),), (Sample(STALE_NAN, 5),))])
    (series,), _ = decode_request(request)
    assert series["samples"] == [(struct.pack("<Q", 0x7FF0000000000002), 5)]


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    c = Counter("jobs", "Jobs done", ["module", "project"], registry=registry)
    c.labels("m", "").inc(3)
    Gauge("active", "In flight", registry=registry).set(2)
    h = Histogram("took_seconds", "Durations", ["module"], buckets=[1, 2], registry=registry)
    h.labels("m").observe(1.5)
    return registry


def test_families_become_series_as_a_scrape_would_name_them() -> None:
    series, metadata = series_of(_registry().collect(), {"job": "j", "instance": "h-1"}, 1000)
    by_name = {dict(s.labels)["__name__"]: s for s in series if "le" not in dict(s.labels)}
    assert set(by_name) == {"jobs_total", "active", "took_seconds_count", "took_seconds_sum"}
    # Labels sorted, extra labels added, the sample's own empty label dropped (not "").
    assert by_name["jobs_total"].labels == (
        ("__name__", "jobs_total"),
        ("instance", "h-1"),
        ("job", "j"),
        ("module", "m"),
    )
    assert by_name["jobs_total"].samples == (Sample(3.0, 1000),)
    buckets = {dict(s.labels)["le"]: s.samples[0].value for s in series if "le" in dict(s.labels)}
    assert buckets == {"1.0": 0.0, "2.0": 1.0, "+Inf": 1.0}
    assert [(m.type, m.family, m.help) for m in metadata] == [
        (1, "jobs_total", "Jobs done"),
        (2, "active", "In flight"),
        (3, "took_seconds", "Durations"),
    ]
    stale, _ = series_of(_registry().collect(), {"job": "j"}, 2000, stale=True)
    assert [s.labels for s in stale] == [
        tuple(p for p in s.labels if p != ("instance", "h-1")) for s in series
    ]
    # The labels remote write adds win over a sample's own (a metric registered after the
    # configure-time check), and the samples that had one are named for a log line.
    clashed: set[str] = set()
    own, _ = series_of(_registry().collect(), {"module": "other"}, 1, clashed=clashed)
    assert {dict(s.labels).get("module") for s in own} == {"other"}
    assert clashed == {
        "jobs_total",
        "took_seconds_bucket",
        "took_seconds_count",
        "took_seconds_sum",
    }
    assert {_bits(s.samples[0].value) for s in stale} == {_bits(STALE_NAN)}


# -- Prometheus's receiver is the judge --------------------------------------------------------


@pytest.fixture(scope="module")
def receiver(pushgateway_server: Pushgateway) -> Iterator[Prometheus]:
    server = Prometheus(pushgateway_server, flags=("--web.enable-remote-write-receiver",))
    server.start()
    yield server
    server.stop()


def _write(receiver: Prometheus, series: list[Series], metadata: list[Metadata]) -> int:
    body = _snappy.compress(encode_write_request(series, metadata))
    request = urllib.request.Request(
        f"{receiver.url}/api/v1/write",
        data=body,
        method="POST",
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status: int = response.status
    return status


@pytest.mark.integration
def test_prometheus_stores_what_we_write_and_honours_the_stale_marker(
    receiver: Prometheus,
) -> None:
    now = int(time.time() * 1000)
    extra = {"job": "codec-test", "instance": "w-1"}
    series, metadata = series_of(_registry().collect(), extra, now - 2000)
    assert _write(receiver, series, metadata) == 204
    result = receiver.query('jobs_total{job="codec-test"}')
    assert [(r["metric"], float(r["value"][1])) for r in result] == [
        (
            {"__name__": "jobs_total", "job": "codec-test", "instance": "w-1", "module": "m"},
            3.0,
        )
    ]
    quantile = receiver.query(
        'histogram_quantile(1, sum by (le) (took_seconds_bucket{job="codec-test"}))'
    )
    assert float(quantile[0]["value"][1]) == 2.0
    stale, _ = series_of(_registry().collect(), extra, now - 1000, stale=True)
    assert _write(receiver, stale, []) == 204
    assert receiver.query('jobs_total{job="codec-test"}') == []
    kept = receiver.query('last_over_time(jobs_total{job="codec-test"}[10m])')
    assert [float(r["value"][1]) for r in kept] == [3.0]
