"""Delivery of the registry's state to where it is stored (see the README's "Delivery").

One module per job: ``_flusher`` (the push modes, the send on either transport),
``_flusher_thread`` (the coalescing thread), ``_gil`` (the switch interval while that
thread starves of the GIL), ``_lifecycle`` (exit, fork, multiprocessing
children, SIGTERM), ``_pushgateway`` (the gateway target and its checks), ``_http`` and
``_aiohttp`` (the sync and async transports, and what an answer means), ``_textfile`` (the
textfile target), ``_snapshot`` (the state of one moment, and the hooks run before it is
taken).
``_remote_write`` (the remote-write target: imported only with ``remote_write=``, with its
encoders ``_prompb`` and ``_snappy``), ``_prune`` (deleting a gateway's old groups).
"""

from typing import TYPE_CHECKING, Any

from ._aiohttp import read_capped
from ._flusher import PUSH_MODES, Delivery
from ._http import ANSWER_LIMIT, PushFailed
from ._lifecycle import (
    exit_flush_running,
    follow_multiprocess_env,
    install_sigterm_handler,
    multiprocess_enabled,
)
from ._pushgateway import (
    PushTarget,
    check_group_value,
    check_grouping_key,
    check_job,
    check_seconds,
    grouping_path,
)
from ._snapshot import BeforeCollect, Snapshot, register_before_snapshot
from ._textfile import check_textfile

if TYPE_CHECKING:
    from ._prune import Group, Pruned, prune_groups

__all__ = [
    "ANSWER_LIMIT",
    "PUSH_MODES",
    "BeforeCollect",
    "Delivery",
    "Group",
    "Pruned",
    "PushFailed",
    "PushTarget",
    "Snapshot",
    "check_group_value",
    "check_grouping_key",
    "check_job",
    "check_seconds",
    "check_textfile",
    "exit_flush_running",
    "follow_multiprocess_env",
    "grouping_path",
    "install_sigterm_handler",
    "multiprocess_enabled",
    "prune_groups",
    "read_capped",
    "register_before_snapshot",
]


def __getattr__(name: str) -> Any:
    # Pruning a gateway's old groups is an operator's command (``instrument gateway
    # prune``, ``Instrumentation.prune_groups``), not part of delivering: imported then.
    if name in ("Group", "Pruned", "prune_groups"):
        from ._prune import Group, Pruned, prune_groups

        return {"Group": Group, "Pruned": Pruned, "prune_groups": prune_groups}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
