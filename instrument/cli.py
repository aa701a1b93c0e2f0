"""The ``instrument`` command: ``demo``, ``dashboard``, ``rules``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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


# Each entry adds one subcommand; its handler returns the exit status.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="instrument",
        description="Prometheus and Grafana instrumentation for analysis pipelines and LLM calls.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except CommandError as exc:
        print(f"instrument: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
