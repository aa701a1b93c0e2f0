"""Pruning a Pushgateway: deleting the groups nobody pushed for a while.

The gateway never forgets a group on its own (TTLs were declined upstream), so every
worker that pushed under its own ``instance`` leaves one behind. Its JSON API
(``GET /api/v1/metrics``) lists each group's labels and ``push_time_seconds``; a group is
deleted by its grouping key, escaped as pushes escape it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ._http import PushFailed
from ._pushgateway import PushTarget, grouping_path

__all__ = ["Group", "Pruned", "prune_groups"]

#: Bytes of the group listing ever read: a gateway full of stale groups (the reason to
#: prune) lists megabytes, and one sending without end must not fill memory.
LISTING_LIMIT = 256 * 1024 * 1024


class Group(NamedTuple):
    """A group on the gateway: its labels (``job`` among them) and its last push time."""

    labels: dict[str, str]
    pushed: float


class Pruned(NamedTuple):
    """What a prune did: each group deleted (or, in a dry run, that would be), and each
    group whose delete failed, with why."""

    deleted: list[Group]
    failed: list[tuple[Group, str]]


def _push_time(group: dict[str, Any]) -> float | None:
    """When the group was last pushed, from the gateway's own gauge (None if unreadable)."""
    try:
        value = float(group["push_time_seconds"]["metrics"][0]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _groups(target: PushTarget, timeout: float) -> list[Group]:
    body = target.call("GET", "/api/v1/metrics", timeout, LISTING_LIMIT)
    if len(body) >= LISTING_LIMIT:
        raise PushFailed(
            f"the gateway's group listing is over {LISTING_LIMIT // 2**20} MiB; prune one "
            "job at a time with job="
        )
    try:
        entries = json.loads(body)["data"]
        if not isinstance(entries, list):
            raise TypeError(entries)
    except (ValueError, KeyError, TypeError):
        raise PushFailed(
            "the answer to GET /api/v1/metrics is not the Pushgateway's group listing; point "
            "the URL at the gateway itself (1.0 or newer)"
        ) from None
    found = []
    for entry in entries:
        labels = entry.get("labels") if isinstance(entry, dict) else None
        pushed = _push_time(entry) if isinstance(entry, dict) else None
        if not isinstance(labels, dict) or pushed is None:
            continue  # a group never pushed successfully has no age to judge it by
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            continue
        if isinstance(labels.get("job"), str):
            found.append(Group(dict(labels), pushed))
    return found


def prune_groups(
    target: PushTarget,
    older_than: float,
    *,
    job: str | None = None,
    dry_run: bool = False,
    timeout: float = 30.0,
    within: float | None = None,
    each: Callable[[Group, str | None], object] | None = None,
) -> Pruned:
    """Delete the groups on ``target``'s gateway whose last push is more than
    ``older_than`` seconds old (only ``job``'s, if given). Each request gets ``timeout``
    seconds, and all of them ``within`` seconds (none once it passed: those groups are
    reported failed, left for the next prune). ``each`` hears of every group as it is
    done: with None when it was deleted, else why not. A listing that fails raises
    PushFailed; a delete that fails is reported."""
    if isinstance(older_than, bool) or not isinstance(older_than, int | float):
        raise TypeError(f"older_than must be a number of seconds, got {older_than!r}")
    if not (math.isfinite(older_than) and older_than > 0):
        raise ValueError(f"older_than must be a positive number of seconds, got {older_than!r}")
    if job is not None and (not isinstance(job, str) or not job):
        raise ValueError(f"job must be a non-empty string (or None for every job), got {job!r}")
    deadline = math.inf if within is None else time.monotonic() + within
    cutoff = time.time() - older_than
    result = Pruned([], [])
    for group in _groups(target, min(timeout, max(deadline - time.monotonic(), 0.001))):
        labels = group.labels
        if group.pushed >= cutoff or (job is not None and labels["job"] != job):
            continue
        reason = None if dry_run else _delete(target, group, timeout, deadline)
        if reason is None:
            result.deleted.append(group)
        else:
            result.failed.append((group, reason))
        if each is not None:
            each(group, reason)
    return result


def _delete(target: PushTarget, group: Group, timeout: float, deadline: float) -> str | None:
    """Delete ``group``: None when it went, else why not."""
    left = deadline - time.monotonic()
    if left <= 0:
        return "not tried: the prune's overall time limit passed"
    key = {k: v for k, v in group.labels.items() if k != "job"}
    try:
        target.call("DELETE", grouping_path(group.labels["job"], key), min(timeout, left))
    except (PushFailed, ValueError) as exc:  # ValueError: a value URLs cannot carry
        return str(exc)
    return None
