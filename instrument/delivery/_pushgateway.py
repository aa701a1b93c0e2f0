"""The Pushgateway target: where a group lives (URL, job, grouping key), how it is
checked, and how a push or a delete reaches it over either transport.

A group's path follows the gateway's rules: ``/metrics/job/<job>{/<label>/<value>}``, a value
that is empty or holds a ``/`` sent as ``<label>@base64/<value>``. The sync transport goes
through prometheus_client's gateway functions with our own handler (bounded, never
redirected, scrubbed); the async one through aiohttp.
"""

from __future__ import annotations

import base64
import copy
import math
import re
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

from prometheus_client import generate_latest
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    delete_from_gateway,
    push_to_gateway,
    pushadd_to_gateway,
)
from prometheus_client.registry import Collector

from .._scrub import Scrubber
from .._urls import authorization, mask_url, split_url, ssl_context
from ..metrics import SAMPLE_LABELS, check_label_value
from ._aiohttp import arequest
from ._http import ANSWER_LIMIT, request

if TYPE_CHECKING:
    import aiohttp

    from ._snapshot import Snapshot

__all__ = [
    "PushTarget",
    "check_group_value",
    "check_grouping_key",
    "check_job",
    "check_seconds",
    "grouping_path",
]


def _escape(label: str, value: str) -> str:
    # The Pushgateway's rule: an empty value, or one with "/" (or a space), goes base64;
    # so do "." and "..", path segments its router would clean away with a 301 redirect.
    if value == "":
        return f"{label}@base64/="
    if "/" in value or " " in value or value in (".", ".."):
        encoded = base64.urlsafe_b64encode(value.encode()).decode()
        return f"{label}@base64/{encoded}"
    return f"{label}/{quote_plus(value)}"


_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def check_group_value(what: str, value: str) -> str:
    """``value`` if the Pushgateway can take it in a group's URL path, else a ValueError
    saying what to do. ``what`` names it in the message ("job")."""
    # The base64 escape carries "/", "", "." and ".." (see _escape): any text a label
    # value can hold lands.
    return check_label_value(what, value)


def check_job(job: object) -> str:
    """``job`` if it can name a Pushgateway job, else a ValueError saying what to do."""
    if not isinstance(job, str) or not job:
        raise ValueError(f"job must be a non-empty string, got {job!r}")
    return check_group_value("job", job)


def check_grouping_key(
    grouping_key: object,
    *,
    instance: bool | str = False,
    what: str = "grouping_key",
    attribution: Collection[str] = (),
) -> dict[str, str]:
    """The grouping labels as a dict, or a TypeError/ValueError saying what to do.

    A name must be a valid Prometheus label name, not reserved (``__*``), not ``job``
    (that is the job keyword), not one our own metrics use (the gateway would reject every
    push, or overwrite that label of every sample), and not ``instance`` when
    ``instance=`` adds that label. A string ``instance`` is checked as a label value.
    ``what`` names the mapping in messages: remote write's ``external_labels`` obey the
    same rules, as they land on every series beside the grouping labels. Nor may a name be
    one of the ``attribution`` labels the money metrics carry: the gateway refuses a push
    whose samples hold a grouping label, and remote write would overwrite every tenant's
    value with the external one.
    """
    if not isinstance(instance, bool | str):
        raise TypeError(f"instance must be True, False or a string, got {type(instance).__name__}")
    if isinstance(instance, str) and instance:
        check_group_value("instance", instance)
    if not isinstance(grouping_key, Mapping):
        raise TypeError(
            f"{what} must be a mapping of label to value, got {type(grouping_key).__name__}"
        )
    group: dict[str, str] = {}
    for name, value in grouping_key.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} label must be a non-empty string, got {name!r}")
        if not isinstance(value, str):
            raise TypeError(f"{what}[{name!r}] must be a string, got {type(value).__name__}")
        if not _LABEL_NAME_RE.fullmatch(name):
            raise ValueError(
                f"{what} label {name!r} is not a valid label name; use letters, "
                "digits and underscores, not starting with a digit"
            )
        if name.startswith("__"):
            raise ValueError(f"{what} label {name!r} is reserved (names starting with __)")
        if name == "job":
            raise ValueError(f"{what} must not hold 'job': pass job= instead")
        if name in SAMPLE_LABELS:
            raise ValueError(
                f"{what} label {name!r} is a label of the toolkit's own metrics, which "
                f"the gateway would overwrite or refuse; pick another name (not one of "
                f"{sorted(SAMPLE_LABELS)})"
            )
        if name in attribution:
            raise ValueError(
                f"{what} label {name!r} is also an attribution label (attribution="
                f"{tuple(attribution)!r}), which the money metrics carry with each call's "
                "value; the gateway would refuse every push, or remote write overwrite "
                "every value with this one. Rename one of them"
            )
        if name == "instance" and instance:
            raise ValueError(f"{what} holds 'instance' and instance= adds it too; pass only one")
        group[name] = check_group_value(f"{what}[{name!r}]", value)
    return group


def check_seconds(what: str, value: object) -> float:
    """``value`` as a float number of seconds, positive, finite and within what thread
    waits and socket timeouts take; else a TypeError/ValueError saying so."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0 < seconds <= threading.TIMEOUT_MAX:
        raise ValueError(
            f"{what} must be a positive number of seconds up to {threading.TIMEOUT_MAX:g}, "
            f"got {value!r}"
        )
    return seconds


def grouping_path(job: str, grouping_key: Mapping[str, str]) -> str:
    """The URL path of a group: ``/metrics/job/<job>{/<label>/<value>}``, values escaped."""
    labels = "".join("/" + _escape(k, v) for k, v in sorted(grouping_key.items()))
    return f"/metrics/{_escape('job', job)}{labels}"


class PushTarget:
    """Where and how to push: URL, group, method, auth and TLS. Never shows credentials."""

    def __init__(
        self,
        url: str,
        *,
        job: str,
        grouping_key: Mapping[str, str],
        method: str = "put",
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url, credentials = split_url(
            url, what="pushgateway URL", example="http://127.0.0.1:9091", bare_host=True
        )
        if credentials is not None and basic_auth is None:
            basic_auth = credentials
        if not isinstance(method, str) or method.lower() not in ("put", "post"):
            raise ValueError(f"push_method must be 'put' or 'post', got {method!r}")
        self.job = check_job(job)
        self.grouping_key = check_grouping_key(grouping_key)
        self.method = method.upper()
        self.timeout = check_seconds("push_timeout", timeout)
        header, secrets = authorization(
            token=bearer_token, basic_auth=basic_auth, token_name="bearer_token"
        )
        self._headers: list[tuple[str, str]] = [] if header is None else [("Authorization", header)]
        #: Removes this target's credentials from texts the network sent back.
        self.scrubber = Scrubber(secrets)
        self._ssl = ssl_context(self.url, tls_verify=tls_verify, ca_file=ca_file)

    def __repr__(self) -> str:
        auth = ", auth=***" if self._headers else ""
        return f"PushTarget({self.url!r}, job={self.job!r}, method={self.method}{auth})"

    @property
    def group_url(self) -> str:
        return self.url + grouping_path(self.job, self.grouping_key)

    @property
    def where(self) -> str:
        """The group's URL as a log line may show it (credentials masked)."""
        return mask_url(self.group_url)

    # -- sync transport: prometheus_client's gateway functions with our handler --------------

    def _handler(
        self,
        url: str,
        method: str,
        timeout: float | None,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> Callable[[], None]:
        # The group's path as we escape it, not prometheus_client's: its escaping leaves
        # "." and ".." plain, which the gateway's router answers with a redirect.
        def send() -> None:
            group_url = self.group_url
            request(
                group_url,
                method,
                [*headers, *self._headers],
                data,
                timeout,
                self._ssl,
                self.scrubber,
            )

        return send

    def _timeout(self, limit: float | None) -> float:
        return self.timeout if limit is None else max(0.001, min(self.timeout, limit))

    def push(self, registry: Collector, timeout: float | None = None) -> None:
        """Push the registry's full state now, within ``push_timeout`` (or ``timeout`` if
        shorter) in all. Raises PushFailed, whose message never holds credentials."""
        gateway_function = push_to_gateway if self.method == "PUT" else pushadd_to_gateway
        gateway_function(
            self.url,
            job=self.job,
            registry=registry,
            grouping_key=self.grouping_key,
            timeout=self._timeout(timeout),
            handler=self._handler,
        )

    def delete(self, timeout: float | None = None) -> None:
        delete_from_gateway(
            self.url,
            job=self.job,
            grouping_key=self.grouping_key,
            timeout=self._timeout(timeout),
            handler=self._handler,
        )

    def for_job(self, job: str) -> PushTarget:
        """The same target, pushing under another job name."""
        other = copy.copy(self)
        other.job = check_job(job)
        other.grouping_key = dict(self.grouping_key)
        return other

    def call(self, method: str, path: str, timeout: float, limit: int = ANSWER_LIMIT) -> bytes:
        """The body (at most ``limit`` bytes) of the answer to ``method`` on ``path`` of the
        gateway, sent with this target's credentials and TLS; raises PushFailed."""
        return request(
            self.url + path, method, self._headers, b"", timeout, self._ssl, self.scrubber, limit
        )

    def send(self, snapshot: Snapshot, timeout: float) -> None:
        """One delivery target's step, as the flusher calls every target's."""
        self.push(snapshot, timeout)

    async def asend(
        self,
        session: Callable[[], Awaitable[aiohttp.ClientSession]],
        snapshot: Snapshot,
        timeout: float,
    ) -> None:
        """The async twin of :meth:`send`, on the session ``session()`` gives."""
        await self.push_async(await session(), snapshot, timeout)

    # -- async transport: aiohttp ------------------------------------------------------------

    async def push_async(
        self,
        session: aiohttp.ClientSession,
        registry: Collector,
        timeout: float | None = None,
    ) -> None:
        """The async twin of :meth:`push`, on ``session``."""
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, **dict(self._headers)}
        await arequest(
            session,
            self.group_url,
            self.method,
            headers,
            generate_latest(registry),
            self._timeout(timeout),
            self._ssl,
            self.scrubber,
        )
