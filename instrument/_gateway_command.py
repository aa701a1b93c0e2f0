"""The ``instrument gateway`` command: ``prune`` deletes the Pushgateway's groups nobody
pushed for a while, which the gateway itself never forgets.

Its own module, beside ``cli.py``, which adds it to the command's subcommands.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from ._arguments import add_tls_options
from ._command import CommandError, UsageError, standard_output, tls_options

if TYPE_CHECKING:
    from .delivery import Group, PushTarget

__all__ = ["add_gateway", "format_duration", "parse_duration"]

# ASCII digits only: \d also takes other scripts' digits, which float() then reads.
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``1h``, ``2d`` (or ``1.5h``)."""
    match = _DURATION_RE.fullmatch(text.strip())
    seconds = float(match[1]) * _UNITS[match[2]] if match else 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a positive number with a unit, such as 90s, "
            "30m, 1h or 2d"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that fits, rounded down (``2h``, ``45s``): a group
    shown as pushed 2h ago was pushed at least that long ago."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return "0s"


def _gateway_url(text: str) -> str:
    from .delivery import PushTarget

    try:
        PushTarget(text, job="instrument-gateway", grouping_key={})
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _job(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the job is empty; give a job name, or leave --job out")
    return text


def _target(url: str | None, args: argparse.Namespace) -> PushTarget:
    """The gateway of --pushgateway (else INSTRUMENT_PUSHGATEWAY_URL), with the credentials
    and TLS settings the library reads from the environment (--ca-file and --insecure
    over them)."""
    from .config import from_environment
    from .delivery import PushTarget

    keys = {"pushgateway", "bearer_token", "basic_auth", "tls_verify", "ca_file"}
    try:
        settings = from_environment(only=keys if url is None else keys - {"pushgateway"})
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    given = url or settings.pop("pushgateway", None)
    if args.insecure or args.ca_file:
        settings.update(tls_options(args))
    if not given:
        raise UsageError(
            "gateway prune needs the gateway: pass --pushgateway URL or set "
            "INSTRUMENT_PUSHGATEWAY_URL"
        )
    try:
        return PushTarget(given, job="instrument-gateway", grouping_key={}, **settings)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _shown(group: Group, target: PushTarget) -> str:
    # What the gateway listed may hold what it was sent (an echoing proxy): scrubbed.
    shown = target.scrubber.scrub_data(group.labels)
    names = sorted(shown, key=lambda name: (name != "job", name))  # job first
    labels = ", ".join(f"{name}={json.dumps(shown[name])}" for name in names)
    return f"{{{labels}}}"


def _prune(args: argparse.Namespace) -> int:
    from .delivery import PushFailed, prune_groups

    target = _target(args.pushgateway, args)
    out = standard_output()
    now = time.time()
    verb = "would delete" if args.dry_run else "deleted"
    done: list[Group] = []

    def each(group: Group, reason: str | None) -> None:
        # Said as it happens: a prune interrupted, or stopped by its limit, still said
        # what it had deleted.
        if reason is None:
            done.append(group)
            ago = format_duration(now - group.pushed)
            out.write(f"{verb} {_shown(group, target)}, last pushed {ago} ago\n")
            out.flush()

    try:
        found = prune_groups(target, args.older_than, job=args.job, dry_run=args.dry_run,
                             timeout=args.timeout, within=args.max_time, each=each)  # fmt: skip
    except PushFailed as exc:
        raise CommandError(f"cannot list the gateway's groups: {exc}") from None
    except KeyboardInterrupt:
        out.write(f"interrupted: {len(done)} group(s) {verb} before it\n")
        out.flush()
        raise
    older = format_duration(args.older_than)
    out.write(f"{len(found.deleted)} group(s) older than {older} {verb}\n")
    out.flush()
    if found.failed:
        group, reason = found.failed[0]
        raise CommandError(
            f"{len(found.failed)} group(s) could not be deleted, e.g. "
            f"{_shown(group, target)}: {reason}"
        )
    return 0


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def add_gateway(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``gateway`` and its ``prune`` subcommand to the command's subcommands."""
    parser = commands.add_parser(
        "gateway",
        help="manage a Pushgateway: prune the groups nobody pushed for a while",
        description="Work on a Pushgateway's groups.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    prune = actions.add_parser(
        "prune",
        help="delete the groups last pushed longer ago than --older-than",
        description="Delete every group whose push_time_seconds is older than --older-than "
        "(only --job's, if given) and print each one as it is deleted. Credentials come from "
        "the URL (user:pass@) or INSTRUMENT_PUSHGATEWAY_TOKEN / _USERNAME / _PASSWORD, TLS "
        "from INSTRUMENT_TLS_VERIFY and INSTRUMENT_CA_FILE (or --ca-file, --insecure).",
    )
    prune.add_argument(
        "--pushgateway",
        type=_gateway_url,
        metavar="URL",
        help="the gateway (default: INSTRUMENT_PUSHGATEWAY_URL)",
    )
    prune.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="delete groups not pushed for this long: 90s, 30m, 1h, 2d",
    )
    prune.add_argument("--job", type=_job, metavar="NAME", help="only this job's groups")
    prune.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    prune.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="the longest each request to the gateway may take (default: 10)",
    )
    prune.add_argument(
        "--max-time",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="the longest the whole prune may take; groups left are reported (default: 300)",
    )
    add_tls_options(prune, "the gateway")
    # -v also after the action's name, as after any command's (cli.py adds it to those).
    prune.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="show the library's log"
    )
    prune.set_defaults(handler=_prune)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
