"""The command line's argument types: each turns the text a user typed into a checked value,
or refuses it with a message saying what to give, before any command starts (argparse turns
an ``ArgumentTypeError`` into a usage error, exit status 2)."""

from __future__ import annotations

import argparse
import math
import ssl
from collections.abc import Callable
from pathlib import Path

from .metrics import check_namespace

__all__ = [
    "add_tls_options",
    "ca_file",
    "directory",
    "grafana_url",
    "link_base",
    "metric_namespace",
    "nonblank",
    "output_file",
    "port",
    "pushgateway_url",
    "usd",
]


def port(text: str) -> int:
    # ASCII digits only: int() also reads " 80", "8_0" and other scripts' digits.
    if text.isascii() and text.isdigit() and int(text) <= 65535:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a TCP port: give a number from 1 to 65535, or 0 for any free port"
    )


def directory(text: str) -> str:
    try:
        found = bool(text) and Path(text).is_dir()
    except (OSError, ValueError):  # a name too long, a NUL: is_dir() raises for those
        found = False
    if not found:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a directory; give a directory of Python files"
        )
    return text


def nonblank(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"the {what} is blank; give one")
        return text

    return check


def output_file(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty; give one, or '-' for stdout")
    return text


def ca_file(text: str) -> str:
    try:
        ssl.create_default_context(cafile=text)  # as the clients load it
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be read as PEM certificates ({exc}); give the file of the CA "
            "certificate that signed the server's"
        ) from None
    return text


def add_tls_options(parser: argparse.ArgumentParser, servers: str) -> None:
    """``--ca-file`` and ``--insecure`` for a command talking to ``servers`` over https."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ca-file",
        type=ca_file,
        metavar="FILE",
        help=f"trust the CA certificate (PEM) in FILE for {servers} over https",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help=f"do not verify the TLS certificate of {servers} (only for testing)",
    )


def metric_namespace(text: str) -> str:
    try:
        check_namespace(text)  # as recording checks it
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def link_base(text: str) -> str:
    from .rules import check_link_base

    try:
        check_link_base("runbook base URL", text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def usd(text: str) -> float:
    try:
        amount = float(text)
    except ValueError:
        amount = math.nan
    if not (math.isfinite(amount) and amount > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars, such as 500")
    return amount


def pushgateway_url(text: str) -> str:
    from .delivery import PushTarget

    try:
        PushTarget(text, job="instrument-demo", grouping_key={})
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    # The library also takes prometheus_client's bare "host:port"; a bare word is a typo far
    # more often than a gateway on port 80, and would only fail once the demo has run.
    if "://" not in text and ":" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a URL: give one such as http://127.0.0.1:9091 (or host:port)"
        )
    return text


def grafana_url(text: str) -> str:
    from .grafana import GrafanaClient

    try:
        GrafanaClient(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
