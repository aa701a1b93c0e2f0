"""The textfile target: the state written for node_exporter's textfile collector.

prometheus_client writes the file atomically (a temporary file beside it, then a rename),
so the collector never reads half of one. Two writes can overlap (an async push beside the
flusher, or a write its cancelled caller stopped waiting for), so they go one at a time and
an older state never replaces a newer one. Async code writes from a worker thread: a disk
that stalls never stalls an event loop.
"""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import write_to_textfile

from ._snapshot import Snapshot

__all__ = ["TextfileTarget"]


class TextfileTarget:
    """One ``.prom`` file, written with the newest snapshot it was given."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._newest = 0

    def __repr__(self) -> str:
        return f"TextfileTarget({self.path!r})"

    def write(self, snapshot: Snapshot) -> None:
        """Write ``snapshot``, unless a newer one is in the file already; raises OSError."""
        with self._lock:
            if snapshot.number > self._newest:
                write_to_textfile(self.path, snapshot)
                self._newest = snapshot.number

    async def awrite(self, snapshot: Snapshot) -> None:
        """:meth:`write` in a worker thread; the running event loop goes on meanwhile."""
        await asyncio.to_thread(self.write, snapshot)
