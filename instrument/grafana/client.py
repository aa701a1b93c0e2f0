"""An async client for Grafana's HTTP API.

>>> async with GrafanaClient("http://127.0.0.1:3000", token=token) as grafana:
...     result = await grafana.upsert_dashboard(build_dashboard(inst))
...     print(result.url)

One aiohttp session is reused for every request. Answers map to one exception class per
thing the caller can do about them (``errors.py``). Requests are retried with backoff only
where that is safe: 5xx answers and dropped connections for requests that may be repeated,
429 (honouring ``Retry-After``) and refused connections for all; never an untrusted TLS
certificate. The credentials never appear in logs, reprs or exception messages, even when a
proxy echoes the ``Authorization`` header back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urljoin

import aiohttp

from .._scrub import DETAIL_LIMIT, Scrubber
from .._urls import authorization, split_url, ssl_context
from ..delivery import ANSWER_LIMIT, read_capped
from .errors import AUDIENCES, GrafanaConflictError, GrafanaError, GrafanaNotFoundError, error_for

__all__ = ["DashboardResult", "GrafanaClient"]

logger = logging.getLogger("instrument")

# Backoff between attempts: _BACKOFF_BASE * 2**(attempt - 1) seconds, jittered, capped.
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 10.0
# A Retry-After longer than this is not waited out: the caller hears about it instead.
_RETRY_AFTER_CAP = 60.0
# Far above any dashboard, far below what would hurt: an answer larger is not Grafana's.
_SUCCESS_LIMIT = 32 << 20
# Module-level so tests can swap it for a recorder instead of really sleeping.
_sleep = asyncio.sleep

_MAX_UID = 40


@dataclass(frozen=True)
class DashboardResult:
    """What Grafana answered to a saved dashboard: its uid, full URL and new version."""

    uid: str
    url: str
    version: int


# -- the client ---------------------------------------------------------------------------


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return quote(value, safe="")


def _retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    # str.isdigit() also takes "²" and "٣", which float() refuses or HTTP does not mean.
    if header.isascii() and header.isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class GrafanaClient:
    """Grafana's HTTP API over one aiohttp session; use it as ``async with``.

    ``token`` is a service account token (sent as ``Authorization: Bearer``; Grafana API
    keys are deprecated in favour of them), ``basic_auth`` a ``(user, password)`` pair,
    ``org_id`` selects an organisation (``X-Grafana-Org-Id``). A secret file's trailing
    newline is stripped from the credentials; one holding a control character is refused.
    ``timeout`` bounds each attempt in seconds; ``retries`` is the number of further
    attempts where retrying is safe. A ``session`` you pass is used as is and left open.
    Over https the certificate is verified against the system's CAs, or ``ca_file`` (a
    PEM bundle, for a private CA); ``tls_verify=False`` skips the check. The errors' advice
    names the Python API's arguments (``audience="python"``) or the command's (``"cli"``).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        org_id: int | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        session: aiohttp.ClientSession | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        audience: str = "python",
    ) -> None:
        if audience not in AUDIENCES:
            raise ValueError(f"audience must be one of {', '.join(AUDIENCES)}, got {audience!r}")
        self._audience = audience
        base, userinfo = split_url(url, what="Grafana URL", example="http://127.0.0.1:3000")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string (a service account token)")
        if basic_auth is not None and (
            not isinstance(basic_auth, tuple)
            or len(basic_auth) != 2
            or not all(isinstance(part, str) for part in basic_auth)
        ):
            raise ValueError("basic_auth must be a (user, password) tuple of strings")
        if basic_auth is None and token is None:
            basic_auth = userinfo
        # Checked now: aiohttp would only refuse a control character when sending.
        authorization_header, secrets = authorization(token=token, basic_auth=basic_auth)
        if org_id is not None and (isinstance(org_id, bool) or not isinstance(org_id, int)):
            raise ValueError(f"org_id must be an integer, got {org_id!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if not isinstance(tls_verify, bool):
            raise ValueError(f"tls_verify must be True or False, got {tls_verify!r}")
        self.url = base
        self.org_id = org_id
        self.timeout = float(timeout)
        self.retries = retries
        self._ssl = ssl_context(base, tls_verify=tls_verify, ca_file=ca_file)
        self._auth_kind = "token" if token else "basic" if basic_auth else "none"
        headers = {"Accept": "application/json", "User-Agent": "instrument-grafana-client"}
        if authorization_header is not None:
            headers["Authorization"] = authorization_header
        if org_id is not None:
            headers["X-Grafana-Org-Id"] = str(org_id)
        self._scrubber = Scrubber(secrets)
        self._headers = headers
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        org = f", org_id={self.org_id}" if self.org_id is not None else ""
        return f"GrafanaClient({self.url!r}, auth={self._auth_kind!r}{org})"

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it."""
        session, self._session = self._session, (None if self._owns_session else self._session)
        if self._owns_session and session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- the API ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``GET /api/health``: ``{"commit", "database", "version"}``; it needs no credentials,
        so it tells whether the URL is Grafana's before anything is sent."""
        answer = await self._request("GET", "/api/health")
        if not isinstance(answer, dict) or "database" not in answer:
            raise self._not_grafana("GET", "/api/health", f"200: {self._one_line(str(answer))}")
        return answer

    async def upsert_dashboard(
        self,
        dashboard: Mapping[str, Any],
        *,
        folder_uid: str | None = None,
        message: str | None = None,
        overwrite: bool = True,
    ) -> DashboardResult:
        """Create or update ``dashboard`` (matched by its uid).

        ``folder_uid=None`` keeps an existing dashboard in its folder (Grafana itself would
        move it to the root) and puts a new one at the root; ``""`` means the root.
        """
        if not isinstance(dashboard, Mapping) or not dashboard.get("title"):
            raise ValueError("dashboard must be a dashboard model (a mapping) with a title")
        uid = dashboard.get("uid")
        if uid is not None and (not isinstance(uid, str) or not 0 < len(uid) <= _MAX_UID):
            raise ValueError(f"dashboard uid {uid!r} must be a string of 1 to 40 characters")
        if folder_uid is None and uid:
            folder_uid = await self._folder_of(uid)
        # Matched by uid; a numeric id from another Grafana would point at the wrong one.
        body: dict[str, Any] = {"dashboard": {**dashboard, "id": None}, "overwrite": overwrite}
        if folder_uid is not None:
            body["folderUid"] = folder_uid
        if message is not None:
            body["message"] = message
        answer = await self._request(
            "POST", "/api/dashboards/db", body=body, idempotent=overwrite, what="dashboard"
        )
        try:
            return DashboardResult(
                uid=str(answer["uid"]),
                url=urljoin(self.url + "/", str(answer["url"])),
                version=int(answer["version"]),
            )
        except (KeyError, TypeError, ValueError):
            raise self._not_grafana(
                "POST",
                "/api/dashboards/db",
                f"200 without uid, url and version: {self._one_line(str(answer))}",
            ) from None

    async def _folder_of(self, uid: str) -> str | None:
        try:
            current = await self.get_dashboard(uid)
        except GrafanaNotFoundError:
            return None
        meta = current.get("meta")
        folder = meta.get("folderUid") if isinstance(meta, Mapping) else None
        return folder if isinstance(folder, str) else None

    async def get_dashboard(self, uid: str) -> dict[str, Any]:
        """``{"dashboard": ..., "meta": ...}``; :class:`GrafanaNotFoundError` if missing."""
        path = f"/api/dashboards/uid/{_segment(uid, 'uid')}"
        answer = await self._request("GET", path, what=f"dashboard {uid!r}")
        if not isinstance(answer, dict) or not isinstance(answer.get("dashboard"), Mapping):
            raise self._not_grafana("GET", path, f"200: {self._one_line(str(answer))}")
        return answer

    async def delete_dashboard(self, uid: str) -> None:
        """Delete a dashboard; :class:`GrafanaNotFoundError` if there is none with ``uid``."""
        path = f"/api/dashboards/uid/{_segment(uid, 'uid')}"
        await self._request("DELETE", path, what=f"dashboard {uid!r}")

    async def search(
        self, query: str | None = None, tag: str | Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Dashboards whose title matches ``query`` and that carry every ``tag``."""
        params: list[tuple[str, str]] = [("type", "dash-db")]
        if query is not None:
            params.append(("query", query))
        tags = [tag] if isinstance(tag, str) else list(tag or ())
        params.extend(("tag", t) for t in tags)
        answer: list[dict[str, Any]] = await self._request("GET", "/api/search", params=params)
        return answer

    async def ensure_folder(self, title: str, uid: str | None = None) -> dict[str, Any]:
        """The folder with ``uid`` (or, without one, titled ``title``), created if missing."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError("folder title must be a non-empty string")
        existing = await self._find_folder(title, uid)
        if existing is not None:
            return existing
        body = {"title": title} if uid is None else {"title": title, "uid": uid}
        try:
            created: dict[str, Any] = await self._request(
                "POST", "/api/folders", body=body, idempotent=uid is not None, what="folder"
            )
        except GrafanaConflictError:
            # Someone created it between our look and our create.
            existing = await self._find_folder(title, uid)
            if existing is None:
                raise
            return existing
        return created

    async def _find_folder(self, title: str, uid: str | None) -> dict[str, Any] | None:
        if uid is not None:
            try:
                found: dict[str, Any] = await self._request(
                    "GET", f"/api/folders/{_segment(uid, 'folder uid')}", what=f"folder {uid!r}"
                )
            except GrafanaNotFoundError:
                return None
            return found
        folders: list[dict[str, Any]] = await self._request(
            "GET", "/api/folders", params=[("limit", "1000")]
        )
        return next((f for f in folders if f.get("title") == title), None)

    async def find_datasource(
        self, type: str | None = "prometheus", name: str | None = None, uid: str | None = None
    ) -> dict[str, Any]:
        """A data source by ``uid``, else by ``name``, else the default (or first) of ``type``."""
        if uid is not None:
            path = f"/api/datasources/uid/{_segment(uid, 'data source uid')}"
            source: dict[str, Any] = await self._request("GET", path, what=f"data source {uid!r}")
        elif name is not None:
            path = f"/api/datasources/name/{_segment(name, 'data source name')}"
            source = await self._request("GET", path, what=f"data source {name!r}")
        else:
            sources: list[dict[str, Any]] = await self._request("GET", "/api/datasources")
            matching = [s for s in sources if type is None or s.get("type") == type]
            if not matching:
                raise self._error("no data source", "GET", "/api/datasources", type=type)
            return next((s for s in matching if s.get("isDefault")), matching[0])
        if type is not None and source.get("type") != type:
            found = source.get("type")
            raise self._error(
                "data source type", "GET", path, name=source.get("name"), found=found, type=type
            )
        return source

    # -- requests, retries and errors --------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        idempotent: bool = True,
        what: str = "resource",
    ) -> Any:
        session = self._ensure_session()
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            status: int | None = None
            try:
                async with session.request(
                    method,
                    self.url + path,
                    params=params,
                    json=body,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    allow_redirects=False,
                    ssl=self._ssl if self._ssl is not None else True,
                ) as response:
                    status = response.status
                    # A dashboard may be large; an error's text is worth a few lines at most.
                    limit = _SUCCESS_LIMIT if 200 <= status < 300 else ANSWER_LIMIT
                    raw = await read_capped(response, limit + 1)
                    wait = _retry_after(response.headers.get("Retry-After"))
            except TimeoutError:
                error: GrafanaError = self._error(
                    "timeout",
                    method,
                    path,
                    timeout=self.timeout,
                    attempt=attempt,
                    attempts=attempts,
                )
                retry = idempotent
            # Before ClientConnectorError, their base class: a certificate or handshake that
            # failed once fails again, so these are not retried.
            except aiohttp.ClientConnectorCertificateError as exc:
                failure = exc.certificate_error
                cause = getattr(failure, "verify_message", None) or str(failure)
                error = self._error("certificate", method, path, cause=self._one_line(cause))
                retry = False
            except aiohttp.ClientSSLError as exc:
                cause = self._one_line(str(exc.os_error))
                error = self._error("tls", method, path, cause=cause)
                retry = False
            except aiohttp.ClientConnectorError as exc:
                cause = self._one_line(str(exc.os_error))
                error = self._error("connect", method, path, cause=cause)
                retry = True  # nothing was sent
            except aiohttp.ClientError as exc:
                cause = f"{type(exc).__name__}: {self._one_line(str(exc))}"
                error = self._error("dropped", method, path, cause=cause)
                retry = idempotent
            else:
                logger.debug("instrument: Grafana %s %s -> %s", method, path, status)
                if 200 <= status < 300:
                    if len(raw) > _SUCCESS_LIMIT:
                        raise self._error(
                            "not grafana",
                            method,
                            path,
                            answered=f"an answer of more than {_SUCCESS_LIMIT >> 20} MiB",
                        )
                    return self._decode(raw, method, path)
                error = self._http_error(status, raw, method, path, what, attempt, wait)
                # 429 is refused before any work; 503 means "not now", so nothing was done
                # and even a create may be repeated. Other 5xx only for repeatable requests.
                retry = status in (429, 503) or (status >= 500 and idempotent)
            if not retry or attempt == attempts:
                raise error
            delay = wait if wait is not None else self._backoff(attempt)
            if delay > _RETRY_AFTER_CAP:
                raise self._error(
                    "wait",
                    method,
                    path,
                    http_status=status,
                    status=status,
                    delay=delay,
                    retry_after=delay,
                )
            logger.warning(
                "instrument: Grafana %s %s failed (%s); retrying in %.2f s (attempt %d of %d)",
                method,
                path,
                status if status is not None else "no answer",
                delay,
                attempt + 1,
                attempts,
            )
            await _sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1))

    def _decode(self, raw: bytes, method: str, path: str) -> Any:
        if not raw.strip():
            return {}
        try:
            return self._scrubber.scrub_data(json.loads(raw))
        except ValueError:
            text = self._one_line(raw.decode(errors="replace"), 80)
            raise self._not_grafana(method, path, f"something that is not JSON: {text!r}") from None

    def _not_grafana(self, method: str, path: str, answered: str) -> GrafanaError:
        """The error for an answer whose shape is not Grafana's: the URL is most likely
        another server (a Pushgateway, a proxy's own page) or misses Grafana's sub-path."""
        return self._error("not grafana", method, path, answered=answered)

    def _error(self, condition: int | str, method: str, path: str, **facts: Any) -> GrafanaError:
        return error_for(
            condition,
            audience=self._audience,
            url=self.url,
            where=f"Grafana at {self.url}",
            method=method,
            path=path,
            **facts,
        )

    def _one_line(self, text: str, limit: int = DETAIL_LIMIT) -> str:
        """``text`` as an exception message may quote it: credentials scrubbed, one line."""
        return self._scrubber.one_line(text, limit)

    def _http_error(
        self,
        status: int,
        raw: bytes,
        method: str,
        path: str,
        what: str,
        attempts: int,
        retry_after: float | None,
    ) -> GrafanaError:
        """The exception for a non-2xx answer, its message saying what to do next."""
        detail, reason = "", None
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            payload = None
            detail = raw.decode(errors="replace")
        # Grafana's API answers every error as a JSON object with a "message".
        grafana_shaped = isinstance(payload, Mapping) and isinstance(payload.get("message"), str)
        if isinstance(payload, Mapping):
            detail = str(payload.get("message") or "")
            reason = payload.get("status") if isinstance(payload.get("status"), str) else None
        elif payload is not None:
            detail = str(payload)
        detail = self._one_line(detail)
        said = f"{status}: {detail}" if detail else str(status)
        # A proxy in front of Grafana may give its own page for these (its own login, a rate
        # limit, a dead upstream) and they mean the same there. The other 4xx come from
        # Grafana's API only: without its shape, the URL is not Grafana's.
        if 400 <= status < 500 and status not in (401, 403, 429) and not grafana_shaped:
            return self._not_grafana(method, path, said)
        return self._error(
            status,
            method,
            path,
            reason=reason,
            credentials_sent=self._auth_kind != "none",
            retry_after=retry_after,
            said=said,
            what=what,
            tries=f"after {attempts} attempt{'s' if attempts > 1 else ''}",
        )
