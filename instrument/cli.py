"""The ``instrument`` command: ``demo``, ``dashboard``, ``rules``, ``gateway prune``.

Every argument is checked before any work starts. A command line that cannot work is a
usage error: one line, exit status 2, as argparse's own. A failure while working (a server
that does not answer, a file that cannot be written) is one line with exit status 1.
Neither shows a credential, whatever the user typed or a server echoed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeAlias

if TYPE_CHECKING:
    from ._promql import Source

from ._arguments import (
    add_tls_options,
    directory,
    grafana_url,
    link_base,
    metric_namespace,
    nonblank,
    output_file,
    port,
    pushgateway_url,
    usd,
)
from ._command import (
    CommandError,
    GrafanaApply,
    Output,
    UsageError,
    detach_stdout,
    standard_output,
    tls_options,
)
from ._gateway_command import add_gateway
from ._urls import mask_url
from .metrics import DEFAULT_NAMESPACE, check_namespace

# CommandError, GrafanaApply and UsageError live in _command, shared with the demo.
__all__ = ["CommandError", "GrafanaApply", "UsageError", "main"]


Handler = Callable[[argparse.Namespace], int]

# argparse quotes what the user typed in a few of its messages; any of it may be a secret.
_URL_CREDENTIALS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)\S*@")
_AMBIGUOUS_VALUE_RE = re.compile(r"(ambiguous option: [^=\s]+)=.*?( could match )")
_IGNORED_VALUE_RE = re.compile(r"(ignored explicit argument ).*")


def _redact(message: str) -> str:
    """argparse's message with the values it quotes masked: URL credentials, ``--opt=value``."""
    message = _URL_CREDENTIALS_RE.sub(r"\1***@", message)
    message = _AMBIGUOUS_VALUE_RE.sub(r"\1=***\2", message)
    return _IGNORED_VALUE_RE.sub(r"\1'***'", message)


def _shown_arguments(arguments: Sequence[str]) -> str:
    """Unrecognized arguments as an error may show them: option names kept, the value of an
    unknown option (``--token X``, ``--token=X``) masked, credentials in URLs masked."""
    shown: list[str] = []
    value_follows = False
    for argument in arguments:
        if argument.startswith("-") and len(argument) > 1:
            name, equals, _ = argument.partition("=")
            shown.append(f"{name}=***" if equals else name)
            value_follows = not equals
        else:
            shown.append("***" if value_follows else mask_url(argument))
            value_follows = False
    return " ".join(shown)


class _Parser(argparse.ArgumentParser):
    """argparse, with each usage error raised as one line (no usage block to scroll past)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{_redact(message)} (see {self.prog} --help)")


# Subscripted only for the type checker: the class is not subscriptable at run time.
_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


# -- shared by the commands -------------------------------------------------------------------


def _namespace(args: argparse.Namespace) -> str:
    """--namespace, else INSTRUMENT_NAMESPACE, else the default, as configure() reads it."""
    from .config import from_environment

    if args.namespace:
        return str(args.namespace)  # checked by its argument type
    try:
        namespace = str(from_environment(only={"namespace"}).get("namespace", DEFAULT_NAMESPACE))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        check_namespace(namespace)  # the environment's value, not an argument: exit status 1
    except ValueError as exc:
        raise CommandError(f"INSTRUMENT_NAMESPACE={namespace!r} is not valid: {exc}") from None
    return namespace


def _write_output(path: str | None, text: str, what: str) -> None:
    """Write ``text`` to ``path``, or to stdout for None or "-"; failures are one line."""
    Output(path, text).prepare().commit()
    _wrote(path, text, what)


def _wrote(path: str | None, text: str, what: str) -> None:
    """Say what a file now holds and where it is: a silent command leaves a first-time
    user wondering whether anything happened, and where."""
    if path not in (None, "-"):
        size = len(text.encode())
        print(f"wrote {what} to {Path(path).resolve()} ({size} bytes)", file=standard_output())


def _import_modules(names: Sequence[str]) -> None:
    """Import the modules that declare objectives, from the current directory too."""
    import importlib

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CommandError(f"cannot import {name}: {type(exc).__name__}: {exc}") from None


# -- Grafana ----------------------------------------------------------------------------------


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
    from .dashboard import build_dashboard

    target = GrafanaApply(url)
    try:
        dashboard = build_dashboard(source, title=title, uid=uid, datasource_uid=datasource_uid)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    target.apply(dashboard, out, folder_uid=folder_uid, message=message)


# -- the commands -----------------------------------------------------------------------------


def _add_demo(commands: _Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the end-to-end tour on an embedded default (no server needed)",
        description="Analyse a directory of Python files with decorated functions, run "
        "with-blocks and simulated LLM calls, then print what was recorded. The port, the "
        "Pushgateway and Grafana are checked before the tour starts.",
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=directory,
        help="directory to analyse (default: this package)",
    )
    parser.add_argument(
        "--serve",
        type=port,
        metavar="PORT",
        help="keep /metrics up on PORT (0: a free one)",
    )
    parser.add_argument(
        "--pushgateway",
        type=pushgateway_url,
        metavar="URL",
        help="also push to this Pushgateway",
    )
    parser.add_argument(
        "--grafana-url",
        type=grafana_url,
        metavar="URL",
        help="apply the dashboard to this Grafana (token from GRAFANA_TOKEN)",
    )
    add_tls_options(parser, "the Pushgateway and Grafana")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        # Only here: the library itself never imports the demo or its LLM server.
        from .demo import run_demo

        return run_demo(args)

    parser.set_defaults(handler=run)


def _add_dashboard(commands: _Commands) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="write the Grafana dashboard JSON, or upsert it into Grafana",
        description="Generate the Grafana dashboard from the metric definitions. Without "
        "--apply it is written as JSON; with --apply it is saved in Grafana (URL from "
        "--grafana-url or GRAFANA_URL, service account token from GRAFANA_TOKEN or "
        "GRAFANA_API_KEY).",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=output_file,
        metavar="FILE",
        help="write the JSON here ('-': stdout)",
    )
    parser.add_argument(
        "--namespace",
        type=metric_namespace,
        help="metric prefix (default: INSTRUMENT_NAMESPACE, else codomyrmex)",
    )
    parser.add_argument(
        "--title",
        type=nonblank("dashboard title"),
        default="Codomyrmex Analytics",
        help="dashboard title",
    )
    parser.add_argument("--uid", default="codomyrmex-analytics", help="dashboard uid")
    parser.add_argument(
        "--datasource-uid",
        type=nonblank("data source uid"),
        metavar="UID",
        help="preselect this data source",
    )
    parser.add_argument("--apply", action="store_true", help="create or update it in Grafana")
    parser.add_argument(
        "--grafana-url",
        type=grafana_url,
        metavar="URL",
        help="Grafana base URL (GRAFANA_URL)",
    )
    add_tls_options(parser, "Grafana")
    parser.add_argument("--folder-uid", metavar="UID", help="save it in this folder")
    parser.add_argument(
        "--message", default="saved by instrument dashboard", help="version history note"
    )

    def what(dashboard: dict[str, Any]) -> str:
        panels = len(dashboard.get("panels", []))
        return f"the dashboard {dashboard['title']!r} (uid {dashboard['uid']}, {panels} panels)"

    def run(args: argparse.Namespace) -> int:
        from .dashboard import build_dashboard, dashboard_json

        namespace = _namespace(args)
        try:
            dashboard = build_dashboard(
                namespace, title=args.title, uid=args.uid, datasource_uid=args.datasource_uid
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        # Before anything is written: a half-done command helps nobody.
        target = GrafanaApply(args.grafana_url, **tls_options(args)) if args.apply else None
        if target is None:
            _write_output(args.output, dashboard_json(dashboard), what(dashboard))
            return 0
        # FILE is written beside itself first (one that cannot be written stops the command
        # before Grafana is asked), and put in place only once Grafana saved the dashboard:
        # a refused or unreachable Grafana leaves it as it was.
        output = None
        if args.output is not None:
            output = Output(args.output, dashboard_json(dashboard)).prepare()
        try:
            # With the JSON on stdout, the line saying where it was saved goes to stderr.
            out = sys.stderr if args.output == "-" else standard_output()
            target.apply(dashboard, out, folder_uid=args.folder_uid, message=args.message)
        except BaseException:
            if output is not None:
                output.discard()
            raise
        if output is not None:
            output.commit()
            _wrote(args.output, output.text, what(dashboard))
        return 0

    parser.set_defaults(handler=run)


def _add_rules(commands: _Commands) -> None:
    parser = commands.add_parser(
        "rules",
        help="write the Prometheus alerting and recording rules (YAML)",
        description="Generate the Prometheus rule file (alerts and recording rules) from the "
        "metric definitions; check it with `promtool check rules FILE`.",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=output_file,
        metavar="FILE",
        help="write the YAML here ('-': stdout)",
    )
    parser.add_argument(
        "--namespace",
        type=metric_namespace,
        help="metric prefix (default: INSTRUMENT_NAMESPACE, else codomyrmex)",
    )
    parser.add_argument(
        "--import",
        dest="modules",
        action="append",
        default=[],
        type=nonblank("module name"),
        metavar="MODULE",
        help="import this module (repeatable) and add the objectives its decorators declare",
    )
    parser.add_argument(
        "--tests",
        type=output_file,
        metavar="FILE",
        help="also write promtool unit tests here",
    )
    parser.add_argument(
        "--runbook-base-url",
        type=link_base,
        metavar="URL",
        help="runbook_url: URL/<alert>",
    )
    parser.add_argument("--monthly-budget-usd", type=usd, metavar="USD", help="AI spend alert")

    def run(args: argparse.Namespace) -> int:
        from .objectives import every_declared
        from .rules import rules_tests_yaml, rules_yaml

        if args.tests is not None and args.output in (None, "-"):
            raise UsageError("--tests reads the rules from a file: give --output FILE too")
        namespace = _namespace(args)
        _import_modules(args.modules)
        options = {
            "objectives": every_declared() if args.modules else [],  # only asked for with --import
            "runbook_base_url": args.runbook_base_url,
            "monthly_budget_usd": args.monthly_budget_usd,
        }
        if args.tests is not None and not options["objectives"]:
            raise UsageError("--tests tests the objectives' alerts, and none is declared: "
                             "--import the modules that declare them")  # fmt: skip
        try:
            text = rules_yaml(namespace, **options)
            if args.tests is not None:
                relative = os.path.relpath(args.output, os.path.dirname(args.tests) or ".")
                tests = rules_tests_yaml(namespace, relative, **options)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        alerts, records = text.count("- alert:"), text.count("- record:")
        what = f"the rules of namespace {namespace} ({alerts} alerts, {records} recording rules)"
        _write_output(args.output, text, what)
        if args.tests is not None:
            _write_output(args.tests, tests, "the rules' promtool unit tests")
        return 0

    parser.set_defaults(handler=run)


# Each entry adds one subcommand; its handler returns the exit status.
SUBCOMMANDS: list[Callable[[_Commands], None]] = [
    _add_demo,
    _add_dashboard,
    _add_rules,
    add_gateway,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
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
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            hint = ""
            if any(a == "--token" or a.startswith("--token=") for a in unknown):
                # A token on the command line is in every user's `ps` and the shell history.
                hint = "; give the token in GRAFANA_TOKEN"
            raise UsageError(
                f"unrecognized arguments: {_shown_arguments(unknown)}{hint} "
                f"(see {parser.prog} --help)"
            )
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        with _command_logging(args.verbose):
            return handler(args)
    except CommandError as exc:
        _print_error(str(exc))
        return exc.exit_status
    except BrokenPipeError:
        # The reader of something not written through standard_output() (argparse's help)
        # went away: nothing more to say, and no error in that.
        detach_stdout()
        return 0
    except KeyboardInterrupt:
        return 130


def _print_error(message: str) -> None:
    # One line whatever a value inside held; no stderr (2>&-) leaves nothing to tell.
    line = " ".join(message.splitlines())
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            print(f"instrument: error: {line}", file=sys.stderr)


class _CommandFormatter(logging.Formatter):
    """``instrument: WARNING: ...``: the library's messages carry the ``instrument:`` prefix
    themselves (for an application's log), which this line already starts with."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record).removeprefix("instrument: ")
        return f"instrument: {record.levelname}: {message}"


@contextlib.contextmanager
def _command_logging(verbose: int) -> Iterator[None]:
    """The library logs under ``instrument`` (retries, push outages). A command reports
    its failure as one line itself, so those records stay quiet unless --verbose asks;
    an application that configured logging keeps its own handlers."""
    logger = logging.getLogger("instrument")
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_CommandFormatter())
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
