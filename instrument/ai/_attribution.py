"""Attribution labels, bounded: each label of an Instrumentation's ``attribution=`` has at
most ``max_attribution_values`` values, then "other"; every value is made one the
exposition can encode, and none ever fails the call it comes with."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._engine import report_failure
from ..delivery import multiprocess_enabled
from ..metrics import check_label_value
from ._series import OTHER_MODEL

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation
    from ._series import ModelSeries, ProviderModels

logger = logging.getLogger("instrument")

#: The longest attribution value kept as it is: longer ones are "other" (a label value is
#: repeated on every series of the money metrics, in every scrape and push).
MAX_ATTRIBUTION_VALUE = 128


class AttributionGuard:
    """The values each attribution label has had on one Instrumentation: at most ``limit``
    per label, then "other" (one warning per label). A value is made a label value here
    and never raises: bytes are decoded, what is not valid UTF-8 is escaped, one whose
    ``str()`` fails is "", one longer than ``MAX_ATTRIBUTION_VALUE`` is "other". Warnings
    never show a value: it may be an e-mail address or a user id."""

    def __init__(self, labels: tuple[str, ...], limit: int) -> None:
        self.labels = labels
        self.limit = limit
        self._seen: dict[str, set[str]] = {label: set() for label in labels}
        #: The values of a call that gave none.
        self.none = ("",) * len(labels)
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def seed(self, series: Iterable[Mapping[str, str]]) -> None:
        """Count the values the label sets ``series`` hold as seen (up to the cap): in
        multiprocess mode, what earlier and sibling workers recorded already."""
        with self._lock:
            for labels in series:
                for label, seen in self._seen.items():
                    value = labels.get(label)
                    if value and value != OTHER_MODEL and len(seen) < self.limit:
                        seen.add(value)

    def values(self, given: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The label values of a call that gave ``given``: "" where it gave none."""
        if not given:
            return self.none
        found = []
        seen = self._seen
        for label in self.labels:
            value = given.get(label)
            # A value seen before was checked then: the usual call, one set lookup.
            found.append(value if type(value) is str and value in seen[label] else
                         self._value(label, value))  # fmt: skip
        return tuple(found)

    def _value(self, label: str, value: Any) -> str:
        if value is None:
            return ""
        seen = self._seen[label]
        if type(value) is str and value in seen:
            return value  # the usual case: a value seen before, checked then
        text = self._text(label, value)
        if text in seen or text == "":
            return text
        if len(text) > MAX_ATTRIBUTION_VALUE:
            self._warn(
                label,
                "long",
                "instrument: attribution label %r got a value of %d characters (more than "
                "%d); such values are reported as %s=%r",
                label,
                len(text),
                MAX_ATTRIBUTION_VALUE,
                label,
                OTHER_MODEL,
            )
            return OTHER_MODEL
        with self._lock:
            if text in seen:
                return text
            if len(seen) < self.limit:
                seen.add(text)
                return text
        self._warn(
            label,
            "cap",
            "instrument: attribution label %r has more than %d values; further ones are "
            "reported as %s=%r. Raise max_attribution_values, or map the values to a "
            "bounded set",
            label,
            self.limit,
            label,
            OTHER_MODEL,
        )
        return OTHER_MODEL

    def _text(self, label: str, value: Any) -> str:
        """``value`` as a label value the exposition can encode."""
        try:
            if isinstance(value, bytes | bytearray):
                text = bytes(value).decode("utf-8", "backslashreplace")
            else:
                text = str(value)
            if type(text) is not str:  # a str subclass, whose methods may misbehave
                text = str.__str__(text)
        except Exception as exc:
            self._warn(
                label,
                "str",
                'instrument: attribution label %r: str() of a %s value raised %s; the label is ""',
                label,
                type(value).__name__,
                type(exc).__name__,
            )
            return ""
        try:
            check_label_value(label, text)
        except ValueError:  # a lone surrogate (a header decoded with surrogateescape)
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text

    def _warn(self, label: str, what: str, message: str, *args: Any) -> None:
        key = (label, what)
        if key in self._warned:
            return
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning(message, *args)


#: How many value combinations one :class:`AttributedSeries` remembers: the values a call
#: may give are unbounded (those past the guard's cap all lead to "other").
ATTRIBUTED_KEPT = 1024


class AttributedSeries:
    """The series of one fixed model by the attribution values a call gave, remembered
    by those values as given: the guard maps a value the same way every time (a value it
    admitted stays admitted, one past its cap or too long stays "other"), so the series
    a value led to once is the one it leads to again. Only values that are exactly
    strings are looked up or remembered: another type's ``str()`` may change, and a str
    subclass equal to a remembered string may say something else. At most
    ``ATTRIBUTED_KEPT`` combinations are remembered."""

    __slots__ = ("_by_values", "_empty", "_labels", "_one", "_strs", "guard", "label", "model",
                 "models")  # fmt: skip

    def __init__(
        self, guard: AttributionGuard, models: ProviderModels, label: str, model: str
    ) -> None:
        self.guard = guard
        self.models = models
        #: The model's label, and its name as given (what its price is looked up by).
        self.label = label
        self.model = model
        labels = guard.labels
        self._labels = labels
        # One label (the usual case): remembered by its value alone, no tuple per call.
        self._one = labels[0] if len(labels) == 1 else None
        self._empty: Any = "" if self._one is not None else guard.none
        self._strs = (str,) * len(labels)
        self._by_values: dict[Any, ModelSeries] = {}

    def series(self, given: Mapping[str, Any] | None) -> ModelSeries:
        """The series of a call that gave ``given`` (its attribution values by label)."""
        if not given:
            key: Any = self._empty
            exact = True
        elif self._one is not None:
            key = given.get(self._one)
            exact = type(key) is str
        else:
            key = tuple(map(given.get, self._labels))
            exact = tuple(map(type, key)) == self._strs
        found = self._by_values.get(key) if exact else None
        if found is None:
            found = self.models.attributed(self.label, self.guard.values(given))
            if exact and len(self._by_values) < ATTRIBUTED_KEPT:
                self._by_values[key] = found
        return found


_lock = threading.Lock()
_attribution_guards: weakref.WeakKeyDictionary[Instrumentation, AttributionGuard] = (
    weakref.WeakKeyDictionary()
)


def attribution_guard(inst: Instrumentation) -> AttributionGuard | None:
    """The attribution guard of ``inst``, or None when it declares no attribution."""
    if not inst.attribution:
        return None
    with _lock:
        guard = _attribution_guards.get(inst)
        if guard is None:
            guard = AttributionGuard(inst.attribution, inst.max_attribution_values)
            if multiprocess_enabled():
                guard.seed(_recorded_series(inst.metrics.names()["ai_api_calls"]))
            _attribution_guards[inst] = guard
        return guard


def _recorded_series(name: str) -> list[Mapping[str, str]]:
    """The label sets of ``name`` in the multiprocess directory, read once when a guard
    starts: each worker has its own guard, and without them a worker recycled (gunicorn's
    max_requests) or one of many would admit ``max_attribution_values`` new values each.
    Workers starting together may still each admit some before they see one another's:
    the cap is then per live worker, not per fleet."""
    try:
        from prometheus_client.multiprocess import MultiProcessCollector

        return [
            sample.labels
            for family in MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
            for sample in family.samples
            if sample.name == name
        ]
    except Exception:  # an unreadable directory fails the scrape too; not the call
        report_failure("reading the attribution values of the multiprocess directory")
        return []
