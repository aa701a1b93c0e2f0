"""Credentials out of texts that came from the network, before a log or an exception shows them.

A server, a proxy in front of it, or the HTTP library quoting what it received may echo a
credential back: in a reason phrase, a body, a ``Location``, an exception's text. Every such
text goes through a :class:`Scrubber` built from the secrets of the client that sent them.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["DETAIL_LIMIT", "Scrubber"]

#: How much of an answer's text an exception message quotes.
DETAIL_LIMIT = 200
# An HTML tag; "a < b" is left alone.
_TAG_RE = re.compile(r"<[A-Za-z/!?][^<>]*>")
_HEAD_START_RE = re.compile(r"<head[\s>]", re.IGNORECASE)
_HEAD_END_RE = re.compile(r"</head\s*>", re.IGNORECASE)
_MASK = "***"


def _spellings(secret: str) -> set[str]:
    """The ways a secret can come back: as sent, percent-encoded (a Location, a query),
    escaped as Python (an exception quoting a line with repr) or JSON (a body) does, and
    its UTF-8 bytes read as Latin-1 (http.client's reading of a reason phrase), and
    HTML-escaped (a proxy's error page)."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode("utf-8", "surrogatepass").decode("latin-1"),
        html.escape(secret),  # an HTML error page quoting what it received
        html.escape(secret, quote=False),
    }
    return {form for form in forms if form}


class Scrubber:
    """Replaces every spelling of the given secrets with ``***``, in any letter case."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= _spellings(secret)
        # Longest first, so a header is replaced whole rather than around its token.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None
        )

    def scrub(self, text: str) -> str:
        """``text`` without any spelling of a secret."""
        if self._pattern is None:
            return text
        return self._pattern.sub(_MASK, text)

    def scrub_data(self, data: Any) -> Any:
        """A decoded JSON answer with every string in it (keys too) scrubbed: a success
        answer reaches results, logs and a CLI's output as much as an error's text."""
        if self._pattern is None:
            return data
        if isinstance(data, str):
            return self.scrub(data)
        if isinstance(data, dict):
            return {self.scrub_data(key): self.scrub_data(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.scrub_data(item) for item in data]
        return data

    def one_line(self, text: str, limit: int = DETAIL_LIMIT) -> str:
        """``text`` as an exception message may quote it: credentials scrubbed, one line.

        The whole text is scrubbed before it is cut (a cut secret would no longer match);
        an HTML page loses its tags (and its head, if the body says anything), control
        characters and runs of whitespace become one space. Scrubbed again at the end, as
        unescaped entities or joined lines could spell a secret anew.
        """
        text = self.scrub(text)
        if _TAG_RE.search(text):
            text = _html_text(text)
        text = "".join(char if char.isprintable() else " " for char in text)
        text = self.scrub(" ".join(text.split()))
        return text if len(text) <= limit else text[: limit - 3] + "..."


def _html_text(page: str) -> str:
    """The text of an HTML error page (a proxy's 502), tags dropped; linear time."""
    start, end = _HEAD_START_RE.search(page), _HEAD_END_RE.search(page)
    body = page
    if start and end and start.start() < end.start():
        body = page[: start.start()] + page[end.end() :]
    text = _TAG_RE.sub(" ", body)
    if not text.strip():  # all it says is in its <title>
        text = _TAG_RE.sub(" ", page)
    return html.unescape(text)
