"""What ``remote_write=`` is configured with, checked before anything is written: the
receiver's URL, the headers, the external labels, the labels of the metrics already on
the registry, and which series another target of this process writes already.

Errors say what to do and never show a header's value, a credential or a query value.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import weakref
from collections.abc import Collection, Mapping
from typing import Protocol
from urllib.parse import quote, urlsplit

from prometheus_client import CollectorRegistry

from .._urls import header_safe, split_url
from ._pushgateway import check_grouping_key

__all__ = [
    "EXAMPLE_URL",
    "check_external_labels",
    "check_headers",
    "check_remote_write_url",
    "claim_series",
    "parse_headers",
    "refuse_clashes",
    "release_series",
]

EXAMPLE_URL = "http://127.0.0.1:9090/api/v1/write"
_QUERY_SAFE = "".join(chr(i) for i in range(0x21, 0x7F))
#: Headers the protocol sets itself: a user's value would break every write.
_PROTOCOL_HEADERS = frozenset(
    {
        "content-encoding",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "host",
        "x-prometheus-remote-write-version",
    }
)
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110's token: a header name


def check_remote_write_url(url: object) -> tuple[str, str, tuple[str, str] | None]:
    """The receiver's URL without credentials or query (as logs show it), its query
    (``extra_label=...`` for VictoriaMetrics; "" for none), and any ``user:password``."""
    base, credentials = split_url(url, what="remote write URL", example=EXAMPLE_URL)
    assert isinstance(url, str)  # split_url refused anything else
    # Kept as given, only what a request line cannot carry percent-encoded.
    query = quote(urlsplit(url.strip()).query, safe=_QUERY_SAFE)
    return base, query, credentials


def check_headers(headers: object) -> dict[str, str]:
    """``remote_write_headers`` as a dict, or a TypeError/ValueError saying what to do;
    values are never shown, they are credentials as often as not."""
    if not isinstance(headers, Mapping):
        raise TypeError(
            "remote_write_headers must be a mapping of header name to value, e.g. "
            f"{{'X-Scope-OrgID': 'team-a'}}; got {type(headers).__name__}"
        )
    return _check_pairs(list(headers.items()))


def _check_pairs(pairs: list[tuple[object, object]]) -> dict[str, str]:
    """The header pairs as a dict, checked in the order given: a name given twice (in any
    case) is refused before one of the values could silently replace the other."""
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for number, (name, value) in enumerate(pairs, 1):
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            # The name is not shown: a malformed entry is often a whole "Name: secret".
            hint = " (write Name=value, not Name: value)" if ":" in str(name) else ""
            raise ValueError(
                f"remote_write_headers entry {number}: its name is not an HTTP header name{hint}; "
                "a name is letters, digits and '-', as in X-Scope-OrgID=team-a"
            )
        lowered = name.lower()
        if lowered in _PROTOCOL_HEADERS:
            raise ValueError(
                f"remote_write_headers must not set {name!r}: the remote-write protocol sets it"
            )
        if lowered in seen:
            raise ValueError(f"remote_write_headers holds {name!r} twice (names ignore case)")
        seen.add(lowered)
        what = f"remote_write_headers[{name!r}]"
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a string, got {type(value).__name__}")
        text = header_safe(what, value)
        if not text:
            raise ValueError(f"{what} is empty; give its value, or leave the header out")
        checked[name] = text
    return checked


def parse_headers(text: str) -> dict[str, str]:
    """``INSTRUMENT_REMOTE_WRITE_HEADERS``'s ``Name=value,Name2=value2``, checked; a value
    may hold '=' (base64 tokens end with it), not ','."""
    pairs: list[tuple[object, object]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError("expected Name=value pairs separated by commas")
        pairs.append((name.strip(), value.strip()))
    return _check_pairs(pairs)


def check_external_labels(
    external_labels: object,
    grouping_key: Mapping[str, str],
    attribution: Collection[str] = (),
) -> dict[str, str]:
    """``external_labels`` as a dict, or a TypeError/ValueError saying what to do: the rules
    of grouping labels (they land on every series the same way), no name of the grouping
    key, no ``instance`` (``instance=`` sets it), no empty value (an empty label is none), no
    ``attribution`` label."""
    labels = check_grouping_key(
        external_labels, instance=True, what="external_labels", attribution=attribution
    )
    for name, value in labels.items():
        if name in grouping_key:
            raise ValueError(
                f"external_labels and grouping_key both hold {name!r}; every series gets "
                "both, so pass it in only one"
            )
        if not value:
            raise ValueError(
                f"external_labels[{name!r}] is empty, and an empty label is no label in "
                "Prometheus; give a value or leave it out"
            )
    return labels


def refuse_clashes(registry: CollectorRegistry, names: set[str]) -> None:
    """A ValueError if a metric already on ``registry`` has a label of ``names``: one of
    the two values would be lost from every series it is on. (The toolkit's own labels are
    refused by the grouping-key rules; this finds those of a user's shared registry.)"""
    try:
        families = list(registry.collect())
    except Exception:
        # A collector failing now (its database down at startup) fails a push later, as
        # it would for any target; it is no reason to refuse the configuration.
        return
    for family in families:
        for sample in family.samples:
            clash = names.intersection(sample.labels)
            if clash:
                raise ValueError(
                    f"the metric {sample.name!r} already has the label {sorted(clash)[0]!r}, "
                    "which remote write adds to every series (job, instance, grouping_key, "
                    "external_labels); rename one of them"
                )


class _Writer(Protocol):
    url: str

    def identity(self) -> tuple[str, tuple[tuple[str, str], ...]]: ...


#: The live targets of this process, by receiver and series identity: two writing one
#: series would take its counter back and forth, and one's close would end the other's.
_writers: weakref.WeakValueDictionary[tuple[str, tuple[tuple[str, str], ...]], _Writer] = (
    weakref.WeakValueDictionary()
)
_writers_lock = threading.Lock()


def claim_series(target: _Writer, *, refuse: bool = True) -> None:
    """Take ``target``'s series for it, or a ValueError (when ``refuse``) if another live
    target of this process writes them."""
    identity = target.identity()
    if not refuse:
        # A forked child's reset, single-threaded: the lock may be a parent thread's copy.
        _release_locked(target)
        _writers[identity] = target
        return
    with _writers_lock:
        _release_locked(target)
        other = _writers.get(identity)
        if refuse and other is not None and other is not target:
            other = None  # held here, it could not be collected
            gc.collect()  # an instrumentation dropped without close() is no writer
            other = _writers.get(identity)
        if refuse and other is not None and other is not target:
            labels = dict(identity[1])
            raise ValueError(
                f"another Instrumentation of this process already writes the series of "
                f"job={labels.get('job')!r}, instance={labels.get('instance')!r} to "
                f"{target.url}; give each its own instance= or job=, or close() the other first"
            )
        _writers[identity] = target


def _new_lock() -> None:
    global _writers_lock
    _writers_lock = threading.Lock()  # a parent thread may have held the old one at the fork


os.register_at_fork(after_in_child=_new_lock)


def release_series(target: _Writer) -> None:
    with _writers_lock:
        _release_locked(target)


def _release_locked(target: _Writer) -> None:
    for identity, writer in list(_writers.items()):
        if writer is target:
            del _writers[identity]
