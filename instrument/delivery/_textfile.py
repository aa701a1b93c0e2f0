"""The textfile target: the state written for node_exporter's textfile collector.

prometheus_client writes the file atomically (a temporary file beside it, then a rename),
so the collector never reads half of one. Two writes can overlap (an async push beside the
flusher, or a write its cancelled caller stopped waiting for), so they go one at a time and
an older state never replaces a newer one. Async code writes from a worker thread: a disk
that stalls never stalls an event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading

from prometheus_client import write_to_textfile

from ._snapshot import Snapshot

__all__ = ["TextfileTarget", "check_textfile"]


def check_textfile(textfile: object) -> str | None:
    """``textfile`` as a str path (None for none), or a TypeError/ValueError saying what to
    do: checked at configure time, so a path the flusher could never write (or not even
    name in its log) is refused before any call is recorded."""
    if textfile is None:
        return None
    if not isinstance(textfile, str | os.PathLike):
        raise TypeError(f"textfile must be a path (str or os.PathLike), got {textfile!r}")
    path = os.fspath(textfile)
    if not isinstance(path, str):
        raise TypeError(f"textfile must be a str path, not bytes: got {textfile!r}")
    if not path:
        return None  # an empty setting (INSTRUMENT_TEXTFILE=) means no textfile
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"textfile {path!r}: its directory {directory!r} does not exist; create it (the "
            "directory node_exporter's --collector.textfile.directory reads) before configuring"
        )
    return path


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

    @property
    def where(self) -> str:
        return self.path

    def send(self, snapshot: Snapshot, timeout: float) -> None:
        """One delivery target's step (a local write: no timeout applies)."""
        self.write(snapshot)

    async def asend(self, session: object, snapshot: Snapshot, timeout: float) -> None:
        """The async twin of :meth:`send`: off the loop, no session needed."""
        await self.awrite(snapshot)
