"""The Grafana client's errors, in httpx's shape.

:class:`GrafanaError` is the base. :class:`GrafanaTransportError` means no answer came
(refused, timed out, TLS refused, dropped); :class:`GrafanaStatusError` means Grafana
answered and the answer says no, its ``http_status`` the status it gave. The classes a
caller acts on derive from those two, and :class:`GrafanaUnavailableError` (try again later)
gathers the transport errors and the answers asking to come back later. A server that does
not answer as Grafana does raises :class:`GrafanaError` itself.

Every message comes from one table, :data:`_MESSAGES`, keyed by HTTP status or by
condition: what happened, then what to do next. The advice names what the reader can
change where the error appears: the Python API's arguments, or the ``instrument``
command's options and variables (:data:`_ADVICE`, one column per audience).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUDIENCES",
    "GrafanaAuthError",
    "GrafanaBadRequestError",
    "GrafanaConflictError",
    "GrafanaError",
    "GrafanaNotFoundError",
    "GrafanaRetryLaterError",
    "GrafanaServerError",
    "GrafanaStatusError",
    "GrafanaTransportError",
    "GrafanaUnavailableError",
    "error_for",
]


class GrafanaError(Exception):
    """Any failure talking to Grafana; raised as itself for a server that does not answer
    as Grafana does. ``http_status`` is None when no answer came."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class GrafanaUnavailableError(GrafanaError):
    """Grafana cannot take the request now: no answer (:class:`GrafanaTransportError`), or
    asked to come back later (:class:`GrafanaRetryLaterError`)."""


class GrafanaTransportError(GrafanaUnavailableError):
    """No answer: a refused connection, a timeout, an untrusted certificate or a failed TLS
    handshake, a connection dropped midway. ``http_status`` is None."""


class GrafanaStatusError(GrafanaError):
    """Grafana answered, and the answer says no: ``http_status`` is its status (None only
    when a 2xx answer itself means "not found", such as a list without the data source)."""


class GrafanaAuthError(GrafanaStatusError):
    """401 or 403: the credentials are wrong, missing, or lack the permission.

    ``refusal`` says what Grafana refused, without the advice the message ends with, and
    ``credentials_sent`` is False when the request carried none: a caller that takes the
    credentials from elsewhere (a command's environment) can give its own advice.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        refusal: str = "",
        credentials_sent: bool = True,
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.refusal = refusal or message
        self.credentials_sent = credentials_sent


class GrafanaNotFoundError(GrafanaStatusError):
    """404: no such dashboard, folder or data source."""


class GrafanaConflictError(GrafanaStatusError):
    """409 or 412: ``status`` is Grafana's reason (version-mismatch, name-exists, ...)."""

    def __init__(
        self, message: str, *, http_status: int | None = None, status: str | None = None
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.status = status


class GrafanaBadRequestError(GrafanaStatusError):
    """400 or 422: Grafana refused the request's content."""


class GrafanaServerError(GrafanaStatusError):
    """5xx, still after the retries."""


class GrafanaRetryLaterError(GrafanaStatusError, GrafanaUnavailableError):
    """Grafana asks to come back later: still rate limited (429) after the retries, or a
    ``Retry-After`` longer than the client waits. ``retry_after`` is the wait it asked for,
    in seconds, when it said."""

    def __init__(
        self, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


#: Who reads a message: code calling the client ("python") or a user of the command ("cli").
AUDIENCES = ("python", "cli")

#: The words of the advice, per audience: each ``then`` template names these.
_ADVICE: dict[str, tuple[str, str]] = {
    "trust": (
        "pass ca_file= with the CA certificate (PEM) that signed it, or tls_verify=False to "
        "skip the check",
        "pass --ca-file FILE with the CA certificate (PEM) that signed it, or --insecure to "
        "skip the check",
    ),
    "wait_longer": (", or raise timeout=", ""),
    "credentials": (
        "pass token= (a service account token)",
        "set GRAFANA_TOKEN (or GRAFANA_API_KEY) to a service account token",
    ),
    "other_org": (" or use another org_id", ""),
    "overwrite": (
        "upsert with overwrite=True, or fetch the latest version and apply the change to it",
        "apply it again (the command overwrites), or fetch the latest version and apply the "
        "change to it",
    ),
    "rename": (
        "use another title or uid, or overwrite=True to replace it",
        "use another --title or --uid",
    ),
    "pick_source": ("pass name= or uid=", "pass --datasource-uid UID"),
}


@dataclass(frozen=True)
class _Say:
    """One message: ``says`` what happened, ``then`` what to do; both are ``str.format``
    templates over the facts :func:`error_for` is given."""

    error: type[GrafanaError]
    says: str
    then: str
    sep: str = "; "


_REFUSED_TO_SAVE = "{where} refused to save the {what} ({said})"
_INVALID = _Say(
    GrafanaBadRequestError,
    "{where} rejected {method} {path} as invalid ({said})",
    "fix the request (a dashboard needs a title and a uid of at most 40 characters)",
)
_PROXY = _Say(
    GrafanaServerError,
    "the proxy in front of {where} answered {method} {path} with {said} {tries}",
    "Grafana behind it is down, unreachable or too slow; check that Grafana is running and "
    "the proxy's upstream address and timeouts, then try again",
    sep=": ",
)

#: Every message of the client, by HTTP status or condition.
_MESSAGES: dict[int | str, _Say] = {
    # -- no answer
    "timeout": _Say(
        GrafanaTransportError,
        "Grafana at {url} did not answer {method} {path} within {timeout:g} s "
        "(attempt {attempt} of {attempts})",
        "check that it is up and reachable{wait_longer}",
    ),
    "certificate": _Say(
        GrafanaTransportError,
        "the TLS certificate of Grafana at {url} is not trusted ({cause})",
        "{trust}",
    ),
    "tls": _Say(
        GrafanaTransportError,
        "the TLS handshake with Grafana at {url} failed ({cause})",
        "check that the URL's scheme matches the server (https only if Grafana or its proxy "
        "serves TLS)",
    ),
    "connect": _Say(
        GrafanaTransportError,
        "cannot connect to Grafana at {url} ({cause})",
        "check the URL and that Grafana is running",
    ),
    "dropped": _Say(
        GrafanaTransportError,
        "the connection to Grafana at {url} failed during {method} {path} ({cause})",
        "check the URL, proxies and that Grafana is running",
    ),
    # -- an answer that is not Grafana's
    "not grafana": _Say(
        GrafanaError,
        "the server at {url} did not answer as Grafana does ({method} {path} answered {answered})",
        "is this URL a Grafana server (mind a sub-path such as /grafana)?",
    ),
    # -- Grafana's answers
    "no credentials": _Say(
        GrafanaAuthError,
        "{where} refused {method} {path} ({said}): no credentials were sent",
        "{credentials}",
    ),
    401: _Say(
        GrafanaAuthError,
        "{where} refused the credentials ({said})",
        "check the service account token (API keys are deprecated in favour of service "
        "account tokens) or the basic auth password",
    ),
    403: _Say(
        GrafanaAuthError,
        "{where} denied {method} {path} ({said})",
        "give the service account a role that may do this (Editor for dashboards and folders)"
        "{other_org}",
    ),
    404: _Say(
        GrafanaNotFoundError,
        "{where} has no such {what} ({method} {path} answered {said})",
        "check the uid or name, and the URL's sub-path",
    ),
    "no data source": _Say(
        GrafanaNotFoundError,
        "Grafana at {url} has no {type} data source",
        "add one (Connections > Data sources), or {pick_source}",
    ),
    "data source type": _Say(
        GrafanaNotFoundError,
        "data source {name!r} at {url} is of type {found!r}, not {type!r}",
        "pass the name or uid of a {type} one",
    ),
    # 409 and 412, by Grafana's reason
    "conflict": _Say(
        GrafanaConflictError,
        _REFUSED_TO_SAVE,
        "it already exists or changed meanwhile; fetch it and retry",
        sep=": ",
    ),
    "conflict version-mismatch": _Say(
        GrafanaConflictError,
        _REFUSED_TO_SAVE,
        "the dashboard changed in Grafana since this version was read; {overwrite}",
        sep=": ",
    ),
    "conflict name-exists": _Say(
        GrafanaConflictError,
        _REFUSED_TO_SAVE,
        "another dashboard in that folder has the same title; {rename}",
        sep=": ",
    ),
    "conflict plugin-dashboard": _Say(
        GrafanaConflictError,
        _REFUSED_TO_SAVE,
        "a plugin owns that dashboard; save this one under another uid, or remove the "
        "plugin's dashboard first",
        sep=": ",
    ),
    400: _INVALID,
    422: _INVALID,
    429: _Say(
        GrafanaRetryLaterError,
        "{where} is still rate limiting {method} {path} ({said}) {tries}",
        "wait and try again, or lower the request rate",
    ),
    "wait": _Say(
        GrafanaRetryLaterError,
        "Grafana at {url} answered {status} to {method} {path} and asks to wait {delay:.0f} s "
        "(Retry-After) before trying again",
        "try again later",
    ),
    502: _PROXY,
    504: _PROXY,
    "5xx": _Say(
        GrafanaServerError,
        "{where} failed on {method} {path} ({said}) {tries}",
        "check Grafana's server log and its database, then try again",
    ),
    "unexpected": _Say(
        GrafanaStatusError,
        "{where} answered {method} {path} with {said}",
        "this client does not expect that here: check the URL (proxies, sub-path) and "
        "Grafana's version",
    ),
}


def _key(status: int, reason: str | None, credentials_sent: bool) -> int | str:
    if status in (401, 403) and not credentials_sent:
        return "no credentials"
    if status in (409, 412):
        return f"conflict {reason}" if f"conflict {reason}" in _MESSAGES else "conflict"
    if status in _MESSAGES:
        return status
    return "5xx" if status >= 500 else "unexpected"


def error_for(
    condition: int | str,
    *,
    http_status: int | None = None,
    reason: str | None = None,
    credentials_sent: bool = True,
    retry_after: float | None = None,
    audience: str = "python",
    **facts: Any,
) -> GrafanaError:
    """The error for an HTTP status (Grafana's ``reason`` for a conflict) or a condition of
    :data:`_MESSAGES`, its message filled in from ``facts``, its advice in the words of
    ``audience`` (one of :data:`AUDIENCES`). A status is also the error's ``http_status``."""
    if isinstance(condition, int):
        http_status = condition
        condition = _key(condition, reason, credentials_sent)
    say = _MESSAGES[condition]
    column = AUDIENCES.index(audience)
    words = {name: spelled[column] for name, spelled in _ADVICE.items()}
    says = say.says.format(**facts)
    message = f"{says}{say.sep}{say.then.format(**words, **facts)}"
    if say.error is GrafanaAuthError:
        return GrafanaAuthError(
            message, http_status=http_status, refusal=says, credentials_sent=credentials_sent
        )
    if say.error is GrafanaConflictError:
        return GrafanaConflictError(message, http_status=http_status, status=reason)
    if say.error is GrafanaRetryLaterError:
        return GrafanaRetryLaterError(message, http_status=http_status, retry_after=retry_after)
    return say.error(message, http_status=http_status)
