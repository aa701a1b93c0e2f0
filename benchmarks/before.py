"""BENCHMARK FIXTURE ONLY: the recording path of instrument 0.1.0, kept measurable for one
release as the "before" rows (issue 13). Not shipped, not used by the package.

0.1.0 updated the prometheus_client children directly on every call (five locked value
updates per job) and ended an async job with ``await aend_job(probe)``: a second coroutine
per call. The direct updates are still the package's own path in prometheus_client's
multiprocess mode; here a binding is forced onto it. The async job below is a copy of
0.1.0's ``_awaited_job`` (the sync call path did not change).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from instrument import Instrumentation
from instrument._dispatch import _CALL_AT_START, Start, _start_guarded
from instrument._engine import aend_job, defer
from instrument._jobs import record_end, record_success
from instrument._proxy import InstrumentedFunction
from instrument.analysis import AnalysisMonitor, _AnalysisBinding

__all__ = ["BeforeMonitor", "before_async"]

F = TypeVar("F", bound=Callable[..., Any])


class _DirectBinding(_AnalysisBinding):
    """A binding on 0.1.0's path: the children updated directly, whatever
    ``Binding.__init__`` decides (it sets ``cells``; this one stays False)."""

    @property
    def cells(self) -> bool:
        return False

    @cells.setter
    def cells(self, value: bool) -> None:
        pass


class BeforeMonitor(AnalysisMonitor):
    """``inst.monitored_analysis(...)`` as 0.1.0 recorded it (sync calls and generators)."""

    def bind(self, inst: Instrumentation) -> _AnalysisBinding:
        return _DirectBinding(inst, self)


async def _awaited_job_0_1_0(
    work: Any, start: Start, wrapped: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """0.1.0's coroutine job, as it was: the post-job step is a coroutine of its own."""
    probe = _start_guarded(start, wrapped, args, kwargs)
    if probe is None:
        return await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    try:
        result = await (wrapped(*args, **kwargs) if work is _CALL_AT_START else work)
    except BaseException as exc:
        try:
            await aend_job(probe, exc)
        except RecursionError:
            defer(partial(record_end, probe, exc))
        raise
    result = record_success(probe, result)
    await aend_job(probe)
    return result


def before_async(monitor: BeforeMonitor, func: F) -> F:
    """``@monitor`` on a coroutine function, through 0.1.0's coroutine job."""
    monitor.prepare(func)
    wrapper = partial(_awaited_job_0_1_0, _CALL_AT_START, monitor.start)
    proxy: F = InstrumentedFunction(func, wrapper)  # type: ignore[assignment]
    return proxy
