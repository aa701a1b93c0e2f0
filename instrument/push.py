"""Deprecated: the names of :mod:`instrument.delivery`, kept importable from their old home
for one release. Import them from ``instrument.delivery`` instead.
"""

from ._urls import mask_url
from .delivery import (
    PUSH_MODES,
    BeforeCollect,
    Delivery,
    PushFailed,
    PushTarget,
    check_group_value,
    check_grouping_key,
    check_job,
    check_seconds,
    exit_flush_running,
    grouping_path,
    register_before_snapshot,
)

# The old private name, for code written against push.py before the split.
from .delivery import multiprocess_enabled as _multiprocess_enabled  # noqa: F401

__all__ = [
    "PUSH_MODES",
    "BeforeCollect",
    "Delivery",
    "PushFailed",
    "PushTarget",
    "check_group_value",
    "check_grouping_key",
    "check_job",
    "check_seconds",
    "exit_flush_running",
    "grouping_path",
    "mask_url",
    "register_before_snapshot",
]
