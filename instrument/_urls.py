"""Service URLs given by users: split off credentials, validate, and mask for logs."""

from __future__ import annotations

import base64
import ipaddress
import re
import ssl
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ["authorization", "header_safe", "mask_url", "split_url", "ssl_context"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def mask_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` and every query value and
    fragment by ``***`` (an ``?api_key=`` is as secret as a password), safe to log. Never
    raises.

    Everything up to the last ``@`` is masked, so a password holding a ``/`` (which URL
    parsers take for the start of the path) is masked too.
    """
    scheme, sep, rest = url.partition("://")
    # Only a real scheme counts: in "user:pa://ss@host" the "://" is the password's.
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        scheme, sep, rest = "", "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest, hashed, _ = rest.partition("#")
    rest, asked, query = rest.partition("?")
    if asked:
        # Names stay (they say which setting it is), values go; a bare part may be a key.
        parts = (p.partition("=") for p in query.split("&"))
        rest += "?" + "&".join(f"{n}=***" if eq else ("***" if n else "") for n, eq, _ in parts)
    return f"{scheme}{sep}{rest}{'#***' if hashed else ''}"


def split_url(
    url: object, *, what: str, example: str, bare_host: bool = False
) -> tuple[str, tuple[str, str] | None]:
    """The base URL (no credentials, query or trailing slash) and any ``user:password``.

    ``what`` names the service in error messages ("pushgateway URL"), ``example`` is a URL
    to suggest; ``bare_host`` accepts ``host:port`` as ``http://host:port`` (as
    prometheus_client's gateway functions do). Errors say what to do and never show a
    password.
    """
    if not isinstance(url, str):
        raise TypeError(f"the {what} must be a string such as {example}, got {type(url).__name__}")
    if not url.strip():
        raise ValueError(f"the {what} is empty: pass one such as {example}")
    # Only around it: a trailing newline read from a file or a variable is common.
    text = url.strip()
    shown = mask_url(text)
    if any(_unsendable(c) for c in text):
        # Which character is not said: it may sit in the password.
        raise ValueError(
            f"the {what} {shown!r} contains whitespace or a control character, which no "
            "request can carry; remove it, or percent-encode it (a space is %20)"
        )
    try:
        parts = urlsplit(text if "://" in text or not bare_host else f"http://{text}")
    except ValueError:  # an unclosed "[" of an IPv6 host
        raise ValueError(
            f"the {what} {shown!r} cannot be parsed; use one such as {example}"
        ) from None
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        raise ValueError(
            f"the {what} {shown!r} has an '@' after the host: a password holding '/', '?' or "
            "'#' must be percent-encoded (%2F, %3F, %23)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the {what} {shown!r} is not an http(s) URL; use one such as {example}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"the {what} {shown!r} has an invalid port; use 1 to 65535")
    host = _host(parts.hostname)
    if host is None:
        raise ValueError(
            f"the {what} {shown!r} has an invalid host; use a host name, an IPv4 address or "
            f"an IPv6 address in brackets, as in {example}"
        )
    netloc = host if port is None else f"{host}:{port}"
    credentials = None
    if parts.username is not None:
        credentials = (unquote(parts.username), unquote(parts.password or ""))
    # http.client sends the request line as ASCII: other characters are percent-encoded.
    path = quote(parts.path.rstrip("/"), safe=_ASCII_PRINTABLE)
    return urlunsplit((parts.scheme, netloc, path, "", "")), credentials


_ASCII_PRINTABLE = "".join(chr(i) for i in range(0x21, 0x7F))
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def _unsendable(char: str) -> bool:
    import unicodedata  # here: URLs are checked at configure time, import is paid by all

    return char.isspace() or unicodedata.category(char)[0] == "C"


def _host(hostname: str) -> str | None:
    """The host as it goes in a request (an IPv6 address in brackets, a name in its ASCII
    IDNA form), or None when no connection could be made to it."""
    if ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return None
        return f"[{hostname}]"
    try:
        ascii_name = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_name if _HOST_NAME_RE.fullmatch(ascii_name) else None


def header_safe(what: str, value: object, *, keep_spaces: bool = False) -> str:
    """A credential as it can go in an HTTP header. A secret file's trailing newline is
    removed (and, unless ``keep_spaces``, surrounding spaces: a token never has any, a
    password may); a control character inside is refused, without echoing the value."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string (or a pair of strings for basic_auth)")
    text = value.strip("\r\n") if keep_spaces else value.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{what} contains a control character; check how the secret is read")
    # A value that goes in the header as it is (not base64 like a password): http.client
    # encodes headers as Latin-1, so anything else would fail every push, one by one.
    if not keep_spaces and any(ord(c) > 0xFF for c in text):
        raise ValueError(
            f"{what} has a character outside Latin-1, which no HTTP header can carry; pass "
            "the token exactly as issued and check how the secret is read"
        )
    return text


def authorization(
    *, token: str | None, basic_auth: tuple[str, str] | None, token_name: str = "token"
) -> tuple[str | None, tuple[str, ...]]:
    """The ``Authorization`` header for a bearer token or a ``(user, password)`` pair (None
    without either), and every string an error text must never show: each credential and
    the header itself (a proxy may echo the base64 of user:password back)."""
    if token is not None and basic_auth is not None:
        raise ValueError(f"pass either {token_name} or basic_auth, not both")
    if token is not None:
        token = header_safe(token_name, token)
        if not token:
            raise ValueError(f"{token_name} is empty; pass the token, or None for no authorization")
        header = f"Bearer {token}"
        return header, (token, header)
    if basic_auth is not None:
        # A string unpacks too ("ab" as user "a", password "b"): only a real pair is taken.
        if not isinstance(basic_auth, tuple | list) or len(basic_auth) != 2:
            raise TypeError(
                "basic_auth must be a pair of strings, (user, password); "
                f"got {type(basic_auth).__name__}"
            )
        user, password = (header_safe("basic_auth", part, keep_spaces=True) for part in basic_auth)
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        header = f"Basic {encoded}"
        return header, tuple(s for s in (password, encoded, header) if s)
    return None, ()


def ssl_context(url: str, *, tls_verify: bool, ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for an https ``url`` (None for http), built once: loading CAs is slow.
    ``ca_file`` is a PEM bundle for a private CA; ``tls_verify=False`` skips the check."""
    if not url.startswith("https:"):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(
            f"ca_file {ca_file!r} cannot be read as PEM certificates ({exc}); pass the path "
            "of the CA certificate that signed the server's"
        ) from None
    if not tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
