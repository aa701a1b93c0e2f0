"""Background threads that leave the process's signals to the main thread.

A signal sent to the process (``kill``, a container stop) is handled by whichever thread
the kernel picks. Python runs its handlers in the main thread only, and a main thread
blocked in a system call (``time.sleep``, a ``join``) is woken only if the signal landed
on it: one that landed on a background thread waits until that call returns on its own,
so a SIGTERM meant to end the process is ignored for as long as the main thread sleeps.
Every thread the toolkit starts therefore blocks the asynchronous signals, which leaves
the main thread (or the user's threads) to receive them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["signals_blocked", "start_daemon"]


def _asynchronous_signals() -> frozenset[signal.Signals]:
    # Faults are sent to the thread that caused them and must never be blocked; SIGKILL
    # and SIGSTOP cannot be; SIGPIPE comes from this thread's own write.
    names = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT", "SIGPIPE")
    synchronous = {getattr(signal, name) for name in names if hasattr(signal, name)}
    synchronous |= {signal.SIGKILL, signal.SIGSTOP}
    return frozenset(s for s in signal.valid_signals() if s not in synchronous)


_BLOCKED = _asynchronous_signals() if hasattr(signal, "pthread_sigmask") else frozenset()


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask that blocks the asynchronous signals. A signal
    arriving meanwhile stays pending and is delivered when the mask is restored."""
    if not _BLOCKED:  # no POSIX thread masks (Windows): nothing to do
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_daemon(target: Callable[..., object], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` that never receives process signals."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with signals_blocked():
        thread.start()
    return thread
