"""The few protobuf messages of Prometheus Remote-Write 1.0, encoded by hand.

``WriteRequest``, ``TimeSeries``, ``Label``, ``Sample``, ``Exemplar`` and ``MetricMetadata``
from prompb's remote.proto and types.proto: six messages of strings, doubles and integers,
simpler to write out than to carry the protobuf runtime and generated code for. Field
numbers and wire types are the .proto's; the tests decode the output with a generic
protobuf reader and Prometheus's own receiver.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample as PromSample

__all__ = [
    "METRIC_TYPES",
    "STALE_NAN",
    "Exemplar",
    "Metadata",
    "Sample",
    "Series",
    "encode_write_request",
    "series_of",
]

#: Prometheus's staleness marker: the NaN with this exact bit pattern (not any NaN).
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]

#: prompb's MetricMetadata.MetricType, by prometheus_client's family type.
METRIC_TYPES: Mapping[str, int] = {
    "unknown": 0,
    "counter": 1,
    "gauge": 2,
    "histogram": 3,
    "gaugehistogram": 4,
    "summary": 5,
    "info": 6,
    "stateset": 7,
}

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    value: float
    timestamp_ms: int


class Exemplar(NamedTuple):
    labels: Labels
    value: float
    timestamp_ms: int


class Series(NamedTuple):
    """One time series: labels sorted by name (``__name__`` among them), samples in time order."""

    labels: Labels
    samples: tuple[Sample, ...]
    exemplars: tuple[Exemplar, ...] = ()


class Metadata(NamedTuple):
    type: int
    family: str
    help: str
    unit: str = ""


# -- the wire format ----------------------------------------------------------------------------

_VARINT, _FIXED64, _LEN = 0, 1, 2


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # an int64 goes out as its two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _bytes(field, text.encode("utf-8"))


def _double(field: int, value: float) -> bytes:
    # struct copies the double's bits, so the staleness NaN keeps its payload.
    return _key(field, _FIXED64) + struct.pack("<d", value)


def _labels(labels: Labels) -> bytes:
    return b"".join(_bytes(1, _string(1, name) + _string(2, value)) for name, value in labels)


def _series(series: Series, cache: dict[Labels, bytes] | None) -> bytes:
    labels = None if cache is None else cache.get(series.labels)
    if labels is None:
        labels = _labels(series.labels)
        if cache is not None:
            cache[series.labels] = labels
    parts = [labels]
    parts += [
        _bytes(2, _double(1, s.value) + _key(2, _VARINT) + _varint(s.timestamp_ms))
        for s in series.samples
    ]
    parts += [
        _bytes(
            3,
            b"".join(_bytes(1, _string(1, n) + _string(2, v)) for n, v in e.labels)
            + _double(2, e.value)
            + _key(3, _VARINT)
            + _varint(e.timestamp_ms),
        )
        for e in series.exemplars
    ]
    return b"".join(parts)


def _metadata(meta: Metadata) -> bytes:
    body = _key(1, _VARINT) + _varint(meta.type) + _string(2, meta.family)
    if meta.help:
        body += _string(4, meta.help)
    if meta.unit:
        body += _string(5, meta.unit)
    return body


def encode_write_request(
    series: Iterable[Series],
    metadata: Iterable[Metadata] = (),
    labels_cache: dict[Labels, bytes] | None = None,
) -> bytes:
    """A serialized ``WriteRequest`` (not yet compressed). ``labels_cache`` keeps each
    series' encoded labels for the next request: a writer sends the same series again and
    again, and their labels are most of the work."""
    return b"".join(_bytes(1, _series(s, labels_cache)) for s in series) + b"".join(
        _bytes(3, _metadata(m)) for m in metadata
    )


# -- from prometheus_client's families ------------------------------------------------------------


try:
    from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
except ImportError:  # prometheus_client before 0.22: it accepts legacy names only, kept as they are

    def escape_metric_name(s: str, escaping: str = "") -> str:
        return s

    def escape_label_name(s: str, escaping: str = "") -> str:
        return s


@functools.lru_cache(maxsize=8192)
def _label_name(name: str) -> str:
    return escape_label_name(name, "underscores")


@functools.lru_cache(maxsize=8192)
def _metric_name(name: str) -> str:
    # A UTF-8 name ("my.metric") as the text format's default escaping gives it to a scrape
    # and a gateway push ("my_metric"), so one query matches the series of every target.
    return escape_metric_name(name, "underscores")


def _family_name(family: Metric) -> str:
    # The name the text format (and so a scrape) gives the family: counters with _total.
    return _metric_name(f"{family.name}_total" if family.type == "counter" else family.name)


def series_of(
    families: Iterable[Metric],
    extra: Mapping[str, str],
    timestamp_ms: int,
    *,
    stale: bool = False,
    clashed: set[str] | None = None,
) -> tuple[list[Series], list[Metadata]]:
    """Every sample of ``families`` as a series with ``extra`` labels added, one sample at
    ``timestamp_ms`` (the staleness marker instead when ``stale``), and each family's
    metadata. Names are escaped as a scrape escapes them. Histograms go out as their
    ``_bucket``/``_sum``/``_count`` series; ``_created`` samples are left out, and empty
    label values too (in Prometheus an empty label is an absent one). ``extra`` wins over
    a sample's own label of the same name (the series identity must hold); the names of
    the samples that had one are added to ``clashed``."""
    out: list[Series] = []
    meta: list[Metadata] = []
    for family in families:
        meta.append(
            Metadata(
                METRIC_TYPES.get(family.type, 0),
                _family_name(family),
                family.documentation,
                family.unit,
            )
        )
        for sample in _samples(family):
            own = {_label_name(k): v for k, v in sample.labels.items()}
            if clashed is not None and not own.keys().isdisjoint(extra):
                clashed.add(sample.name)
            labels = {**own, **extra, "__name__": _metric_name(sample.name)}
            ordered = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
            value = STALE_NAN if stale else float(sample.value)
            exemplars: tuple[Exemplar, ...] = ()
            if sample.exemplar is not None and not stale:
                ex = sample.exemplar
                ex_ms = timestamp_ms if ex.timestamp is None else int(float(ex.timestamp) * 1000)
                exemplars = (Exemplar(tuple(sorted(ex.labels.items())), float(ex.value), ex_ms),)
            out.append(Series(ordered, (Sample(value, timestamp_ms),), exemplars))
    return out, meta


def _samples(family: Metric) -> Iterator[PromSample]:
    for sample in family.samples:
        # _created is OpenMetrics' creation time, not a value a query of the family reads.
        if family.type in ("counter", "histogram", "summary") and sample.name.endswith("_created"):
            continue
        yield sample
