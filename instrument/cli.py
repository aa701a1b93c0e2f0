"""The ``instrument`` command: ``demo``, ``dashboard``, ``rules``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ._promql import Source

from .metrics import DEFAULT_NAMESPACE

__all__ = ["CommandError", "main"]


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1, no traceback."""


Handler = Callable[[argparse.Namespace], int]


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the end-to-end tour on an embedded default (no server needed)",
        description="Analyse a directory of Python files with decorated functions, run "
        "with-blocks and simulated LLM calls, then print what was recorded.",
    )
    parser.add_argument("path", nargs="?", help="directory to analyse (default: this package)")
    parser.add_argument("--serve", type=int, metavar="PORT", help="keep /metrics up on PORT")
    parser.add_argument("--pushgateway", metavar="URL", help="also push to this Pushgateway")
    parser.add_argument("--grafana-url", metavar="URL", help="apply the dashboard to this Grafana")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from .demo import run_demo

        return run_demo(args)

    parser.set_defaults(handler=run)


def _namespace(args: argparse.Namespace) -> str:
    """--namespace, else INSTRUMENT_NAMESPACE, else the default, as configure() reads it."""
    from .config import from_environment

    if args.namespace:
        return str(args.namespace)
    try:
        return str(from_environment(only={"namespace"}).get("namespace", DEFAULT_NAMESPACE))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _write_output(path: str | None, text: str) -> None:
    """Write ``text`` to ``path``, or to stdout for None or "-"; failures are one line."""
    try:
        if path in (None, "-"):
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nothing to flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError as exc:
        where = "standard output" if path in (None, "-") else path
        raise CommandError(f"cannot write {where}: {exc.strerror or exc}") from None


def _add_dashboard(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="write the Grafana dashboard JSON, or upsert it into Grafana",
        description="Generate the Grafana dashboard from the metric definitions. Without "
        "--apply it is written as JSON; with --apply it is saved in Grafana (URL from "
        "--grafana-url or GRAFANA_URL, service account token from GRAFANA_TOKEN or "
        "GRAFANA_API_KEY).",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write the JSON here ('-': stdout)")
    parser.add_argument(
        "--namespace", help="metric prefix (default: INSTRUMENT_NAMESPACE, else codomyrmex)"
    )
    parser.add_argument("--title", default="Codomyrmex Analytics", help="dashboard title")
    parser.add_argument("--uid", default="codomyrmex-analytics", help="dashboard uid")
    parser.add_argument("--datasource-uid", metavar="UID", help="preselect this data source")
    parser.add_argument("--apply", action="store_true", help="create or update it in Grafana")
    parser.add_argument("--grafana-url", metavar="URL", help="Grafana base URL (GRAFANA_URL)")
    parser.add_argument("--folder-uid", metavar="UID", help="save it in this folder")
    parser.add_argument(
        "--message", default="saved by instrument dashboard", help="version history note"
    )

    def run(args: argparse.Namespace) -> int:
        from .dashboard import build_dashboard, dashboard_json

        namespace = _namespace(args)
        try:
            dashboard = build_dashboard(
                namespace, title=args.title, uid=args.uid, datasource_uid=args.datasource_uid
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if args.apply and not (args.grafana_url or os.environ.get("GRAFANA_URL")):
            # Before anything is written: a half-done command helps nobody.
            raise CommandError(
                "--apply needs Grafana's URL: pass --grafana-url URL or set GRAFANA_URL"
            )
        if args.output is not None or not args.apply:
            _write_output(args.output, dashboard_json(dashboard))
        if args.apply:
            apply_dashboard_command(
                namespace,
                args.grafana_url,
                sys.stderr if args.output == "-" else sys.stdout,
                title=args.title,
                uid=args.uid,
                datasource_uid=args.datasource_uid,
                folder_uid=args.folder_uid,
                message=args.message,
            )
        return 0

    parser.set_defaults(handler=run)


def _add_rules(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "rules",
        help="write the Prometheus alerting and recording rules (YAML)",
        description="Generate the Prometheus rule file (alerts and recording rules) from the "
        "metric definitions; check it with `promtool check rules FILE`.",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write the YAML here ('-': stdout)")
    parser.add_argument(
        "--namespace", help="metric prefix (default: INSTRUMENT_NAMESPACE, else codomyrmex)"
    )

    def run(args: argparse.Namespace) -> int:
        from .rules import rules_yaml

        namespace = _namespace(args)
        try:
            text = rules_yaml(namespace)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        _write_output(args.output, text)
        return 0

    parser.set_defaults(handler=run)


def apply_dashboard_command(
    source: Source,
    url: str | None,
    out: TextIO,
    *,
    title: str = "Codomyrmex Analytics",
    uid: str = "codomyrmex-analytics",
    datasource_uid: str | None = None,
    folder_uid: str | None = None,
    message: str = "saved by instrument dashboard",
) -> None:
    """Save the dashboard of ``source`` (an Instrumentation, Metrics or namespace) in Grafana.

    ``url`` falls back to GRAFANA_URL, the token to GRAFANA_TOKEN, then GRAFANA_API_KEY.
    Writes one line with the dashboard's URL to ``out``; raises :class:`CommandError`.
    """
    import asyncio

    from .dashboard import build_dashboard
    from .grafana import GrafanaAuthError, GrafanaClient, GrafanaError

    url = url or os.environ.get("GRAFANA_URL")
    if not url:
        raise CommandError("--apply needs Grafana's URL: pass --grafana-url URL or set GRAFANA_URL")
    token = os.environ.get("GRAFANA_TOKEN") or os.environ.get("GRAFANA_API_KEY") or None
    try:
        dashboard = build_dashboard(source, title=title, uid=uid, datasource_uid=datasource_uid)
        client = GrafanaClient(url, token=token)
    except ValueError as exc:
        raise CommandError(str(exc)) from None

    async def apply() -> str:
        async with client:
            result = await client.upsert_dashboard(
                dashboard, folder_uid=folder_uid, message=message
            )
        return f"dashboard {result.uid!r} saved in Grafana, version {result.version}: {result.url}"

    try:
        out.write(asyncio.run(apply()) + "\n")
    except GrafanaAuthError as exc:
        unset = "" if token else " (GRAFANA_TOKEN is not set)"
        raise CommandError(f"{exc}{unset}") from None
    except GrafanaError as exc:
        raise CommandError(str(exc)) from None


# Each entry adds one subcommand; its handler returns the exit status.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo,
    _add_dashboard,
    _add_rules,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="instrument",
        description="Prometheus and Grafana instrumentation for analysis pipelines and LLM calls.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbose_help = "show the library's log (-vv: debug), e.g. each retry of a push or a request"
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    for command in commands.choices.values():  # -v also after the command's name
        command.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    with _command_logging(args.verbose):
        try:
            return handler(args)
        except CommandError as exc:
            print(f"instrument: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


@contextlib.contextmanager
def _command_logging(verbose: int) -> Iterator[None]:
    """The library logs under ``instrument`` (retries, push outages). A command reports
    its failure as one line itself, so those records stay quiet unless --verbose asks;
    an application that configured logging keeps its own handlers."""
    logger = logging.getLogger("instrument")
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("instrument: %(levelname)s: %(message)s"))
        level = logger.level
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    else:
        handler = logging.NullHandler()
        level = logger.level
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
