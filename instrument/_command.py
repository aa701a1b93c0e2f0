"""What a command is made of, shared by the CLI (``cli.py``) and the demo (``demo/``), so
neither imports the other: its errors (one line and an exit status), its standard output
and output files, and saving a dashboard in Grafana with the command's own advice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from ._urls import header_safe

if TYPE_CHECKING:
    from .grafana import GrafanaClient

__all__ = [
    "CommandError",
    "GrafanaApply",
    "Output",
    "UsageError",
    "detach_stdout",
    "standard_output",
    "tls_options",
]

T = TypeVar("T")


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1, no traceback."""

    exit_status = 1


class UsageError(CommandError):
    """A command line that cannot work, found before any work: exit status 2, as argparse's."""

    exit_status = 2


def detach_stdout() -> None:
    # Whatever stdout still buffers would fail again at exit, as a second, unasked-for line.
    if sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Stdout:
    """sys.stdout, whose write failures (a full disk, a terminal gone) are one-line errors
    wherever a command writes it. A reader that left (``| head``) only stops the output:
    the rest goes nowhere, and what the command does besides printing (push, save the
    dashboard, serve) still happens."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            detach_stdout()
            return len(text)
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            detach_stdout()
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @staticmethod
    def _failed(exc: OSError) -> CommandError:
        detach_stdout()
        return CommandError(f"cannot write standard output: {exc.strerror or exc}")


def standard_output() -> TextIO:
    """sys.stdout for a command's output: :class:`CommandError` when it is closed (>&-) or a
    write fails; nothing when the reader left."""
    if sys.stdout is None:
        raise CommandError("cannot write standard output: it is closed")
    # Duck-typed: rich and print() only call write, flush and the stream's own attributes.
    return cast(TextIO, _Stdout(sys.stdout))


class Output:
    """Where a command's text goes: stdout for None or "-", else a file replaced at once.

    :meth:`prepare` writes the text beside the file first, so a file that cannot be written
    fails before any other work (a dashboard applied); :meth:`commit` puts it in place
    (a rename: never half a file), :meth:`discard` leaves the file as it was."""

    def __init__(self, path: str | None, text: str) -> None:
        self.path = None if path in (None, "-") else path
        self.text = text
        self._temporary: str | None = None

    def prepare(self) -> Output:
        if self.path is None:
            return self
        try:
            if os.path.isdir(self.path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            directory, name = os.path.split(os.path.abspath(self.path))
            # Named after the file: a name too long for the file fails here too.
            fd, self._temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)  # as open() would create it, not mkstemp's 0600
            with open(fd, "w", encoding="utf-8") as file:
                file.write(self.text)
        except OSError as exc:
            self.discard()
            raise self._failed(exc) from None
        return self

    def commit(self) -> None:
        if self.path is None:
            out = standard_output()
            out.write(self.text)
            out.flush()
            return
        assert self._temporary is not None, "prepare() first"
        try:
            os.replace(self._temporary, self.path)
        except OSError as exc:
            self.discard()
            raise self._failed(exc) from None
        self._temporary = None

    def discard(self) -> None:
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)
            self._temporary = None

    def _failed(self, exc: OSError) -> CommandError:
        return CommandError(f"cannot write {self.path}: {exc.strerror or exc}")


def tls_options(args: Any) -> dict[str, Any]:
    """``tls_verify`` and ``ca_file`` for a client or a Pushgateway target, from a command's
    ``--insecure`` and ``--ca-file`` (either may be absent from its parser)."""
    return {
        "tls_verify": not getattr(args, "insecure", False),
        "ca_file": getattr(args, "ca_file", None),
    }


_GRAFANA_TOKEN_VARIABLES = ("GRAFANA_TOKEN", "GRAFANA_API_KEY")


def _grafana_token(environ: Mapping[str, str]) -> str | None:
    """GRAFANA_TOKEN, else GRAFANA_API_KEY (an empty one counts as unset), checked as a
    header now and named in the error, as the command line user set it."""
    for name in _GRAFANA_TOKEN_VARIABLES:
        value = environ.get(name, "")
        if not value:
            continue
        try:
            token = header_safe(name, value)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not token:
            raise CommandError(
                f"{name} holds only whitespace: set it to a service account token, or unset it"
            )
        return token
    return None


class GrafanaApply:
    """Where a command saves the dashboard: Grafana's URL (``url``, else GRAFANA_URL) and its
    service account token (GRAFANA_TOKEN, else GRAFANA_API_KEY), checked when it is made.

    Raises :class:`UsageError` without a URL, :class:`CommandError` for a bad GRAFANA_URL or
    token; :meth:`check` and :meth:`apply` turn Grafana's errors into one-line ones whose
    advice names the command's options and variables, not the Python API's.
    ``tls_verify`` and ``ca_file`` come from ``--insecure`` and ``--ca-file``.
    """

    def __init__(
        self, url: str | None, *, tls_verify: bool = True, ca_file: str | None = None
    ) -> None:
        from .grafana import GrafanaClient

        given = url or os.environ.get("GRAFANA_URL")
        if not given:
            raise UsageError(
                "--apply needs Grafana's URL: pass --grafana-url URL or set GRAFANA_URL"
            )
        token = _grafana_token(os.environ)
        try:
            self.client = GrafanaClient(
                given, token=token, tls_verify=tls_verify, ca_file=ca_file, audience="cli"
            )
        except ValueError as exc:
            raise CommandError(str(exc) if url else f"GRAFANA_URL is not valid: {exc}") from None

    def check(self, uid: str) -> None:
        """Before any work: the URL answers as Grafana does, and takes the credentials for a
        read of the dashboard (missing is fine: it is created)."""
        from .grafana import GrafanaNotFoundError

        async def probe(client: GrafanaClient) -> None:
            await client.health()
            with contextlib.suppress(GrafanaNotFoundError):
                await client.get_dashboard(uid)

        self._run(probe)

    def apply(
        self,
        dashboard: dict[str, Any],
        out: TextIO,
        *,
        folder_uid: str | None = None,
        message: str = "saved by instrument dashboard",
    ) -> None:
        """Create or update ``dashboard``; writes one line with its URL to ``out``."""

        async def save(client: GrafanaClient) -> str:
            result = await client.upsert_dashboard(
                dashboard, folder_uid=folder_uid, message=message
            )
            return (
                f"dashboard {result.uid!r} saved in Grafana, version {result.version}: {result.url}"
            )

        out.write(self._run(save) + "\n")

    def _run(self, work: Callable[[GrafanaClient], Awaitable[T]]) -> T:
        import asyncio

        from .grafana import GrafanaError

        async def run() -> T:
            async with self.client:
                return await work(self.client)

        try:
            return asyncio.run(run())
        except GrafanaError as exc:  # its advice already in the command's words
            raise CommandError(str(exc)) from None
