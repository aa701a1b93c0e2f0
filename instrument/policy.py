"""What every decorator shares: its binding to one Instrumentation, looked up once, and
following the default instrumentation when it is given none.

A policy (``analysis.py``, ``ai.py``) subclasses :class:`Policy` and :class:`Binding`; it
says what to record, the engine (``_engine``) runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._engine import Instrumenter, Probe
from .defaults import get_instrumentation, instrumentation_class, track_binding
from .delivery import multiprocess_enabled

if TYPE_CHECKING:
    from collections.abc import Callable

    from .instrumentation import Instrumentation

__all__ = ["Binding", "Policy"]

P = TypeVar("P", bound=Probe)
B = TypeVar("B", bound="Binding")


class Binding:
    """What a decorator needs from one Instrumentation, looked up once."""

    def __init__(self, inst: Instrumentation) -> None:
        self.inst = inst
        self.enabled = inst.enabled
        #: Start a span per job when a tracer provider is set (``_tracing``).
        self.tracing = inst.tracing
        #: The hot path's one check: True when the slow path (:meth:`Policy.binding`) must
        #: decide, because recording is off or the instrumentation stopped being the default.
        # Tracked first, so a retirement running meanwhile cannot miss this binding.
        track_binding(self)
        self.stale = not inst.enabled or inst.retired
        #: What a probe's ``after_job`` should be: None when nothing is ever pushed.
        self.after_job = inst.delivery.call_hook()
        #: Its async counterpart, None too when nothing is ever pushed.
        self.after_job_async: Callable[[], Any] | None = (
            None if self.after_job is None else inst.delivery.after_call_async
        )
        #: Checked as a job starts: ``t0 > handover.overdue`` finds the flusher starved of
        #: the GIL, and ``handover.hand_over()`` lowers the switch interval for it.
        self.handover = inst.delivery.handover
        #: What a job ended outside a call does instead: mark the state, never push.
        self.note_change = inst.delivery.note_change
        #: Record through per-thread cells (``_cells``), folded before every read. Not in
        #: prometheus_client's multiprocess mode: there a process's values must be in its
        #: files as it records them, so the children are updated directly.
        self.cells = not multiprocess_enabled()


class Policy(Instrumenter[P], Generic[P, B]):
    """A decorator bound to one Instrumentation, or (``inst=None``) following the default.

    Following the default, it binds on first use and rebinds when :func:`configure`
    replaces the default: one identity check per call.
    """

    _binding: B | None = None

    def __init__(self, inst: Instrumentation | None) -> None:
        if inst is not None and not isinstance(inst, instrumentation_class()):
            raise TypeError(f"expected an Instrumentation, got {type(inst).__name__}")
        super().__init__()
        self._inst = inst

    def bind(self, inst: Instrumentation) -> B:
        raise NotImplementedError

    def prepare(self, func: Callable[..., Any]) -> None:
        # Bound to a given Instrumentation: bind the label children now, at decoration time.
        if self._inst is not None:
            self.binding()

    def binding(self) -> B:
        """The current binding. Hot paths call it only when ``b is None or b.stale``."""
        b = self._binding
        if b is None or (self._inst is None and b.inst is not get_instrumentation()):
            b = self._binding = self.bind(self._inst or get_instrumentation())
        return b
