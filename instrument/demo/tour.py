"""``instrument demo``: a small real pipeline on an embedded default, then a summary.

It analyses a directory of Python files with decorated functions (sync, async and a
generator), runs ad-hoc with-blocks, calls a local OpenAI-compatible server through
``track_ai_call`` (streamed and not), and prints what the registry recorded.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from .._command import CommandError, GrafanaApply, standard_output, tls_options
from .._urls import mask_url
from ..dashboard import build_dashboard
from ..instrumentation import Instrumentation

__all__ = ["quantile_of_buckets", "run_demo", "summarize"]

#: What the tour analyses when no directory is given: the instrument package itself.
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The demo's analyses take microseconds to milliseconds: finer buckets than the
# production default (0.1 s and up) make its p50/p95 readable.
DEMO_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)
# The uid `instrument dashboard` saves under by default, so both update one dashboard.
DASHBOARD_UID = "codomyrmex-analytics"


@dataclass
class FileReport:
    path: Path
    functions: int
    documented: int
    longest_function: int
    score: float


def _score(tree: ast.Module) -> tuple[int, int, int, float]:
    functions = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    documented = sum(1 for f in functions if ast.get_docstring(f))
    lengths = [(f.end_lineno or f.lineno) - f.lineno + 1 for f in functions]
    longest = max(lengths, default=0)
    coverage = documented / len(functions) if functions else 1.0
    # Docstring coverage, less a penalty for very long functions: a toy score out of 100.
    score = 100 * coverage - max(0, longest - 60) * 0.5
    return len(functions), documented, longest, round(max(0.0, min(100.0, score)), 1)


def _branches(tree: ast.Module) -> int:
    kinds = (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.BoolOp, ast.IfExp, ast.Match)
    return sum(isinstance(node, kinds) for node in ast.walk(tree))


def _rich_console(out: TextIO, width: int | None = None) -> Any:
    """A rich Console writing to ``out``; ImportError without the cli extra."""
    from rich.console import Console

    return Console(file=out, width=width)


class _Progress:
    """A progress bar: rich's when the cli extra is installed, else a plain counter."""

    def __init__(self, total: int, enabled: bool, out: TextIO) -> None:
        self.total, self.done, self.out = total, 0, out
        self._rich: Any = None
        self._plain = enabled and out.isatty()
        if enabled:
            try:
                from rich.progress import Progress

                self._rich = Progress(transient=True, console=_rich_console(out))
                self._task = self._rich.add_task("analysing", total=total)
                self._rich.start()
                self._plain = False
            except ImportError:
                pass

    def advance(self, what: str) -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1, description=what[:40])
        elif self._plain:
            self.out.write(f"\r  analysing {self.done}/{self.total} files")
            self.out.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self._plain:
            self.out.write("\r" + " " * 60 + "\r")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CommandError(
            f"cannot read {path}: {exc.strerror or exc}; give a directory whose Python "
            "files are readable"
        ) from None


def _pipeline(inst: Instrumentation, root: Path, progress_enabled: bool, out: TextIO) -> None:
    @inst.monitored_analysis("discovery", "walk")
    def python_files(directory: Path) -> Iterator[Path]:
        # Regular files only: a directory, a dangling link or a FIFO may end in .py too (and
        # reading a FIFO waits for a writer forever).
        yield from sorted(
            p for p in directory.rglob("*.py") if "__pycache__" not in p.parts and p.is_file()
        )

    @inst.monitored_analysis(
        "static_analysis",
        "file",
        project=lambda a: a["path"].parent.name or "root",
        quality=lambda report: report.score,
    )
    def analyze_file(path: Path, source: str) -> FileReport:
        tree = ast.parse(source, filename=str(path))
        functions, documented, longest, score = _score(tree)
        return FileReport(path, functions, documented, longest, score)

    @inst.monitored_analysis("static_analysis", "complexity")
    async def complexity(path: Path, source: str) -> int:
        await asyncio.sleep(0)  # stands in for awaiting a worker or a service
        return _branches(ast.parse(source))

    files = list(python_files(root))
    sources = {path: _read(path) for path in files}
    # One deliberately broken file, so the error path shows up in the numbers.
    broken = root / "broken_example.py"
    sources[broken] = "def broken(:\n    pass\n"
    progress = _Progress(len(sources), progress_enabled, out)
    reports = []
    try:
        for path, source in sources.items():
            with contextlib.suppress(SyntaxError):
                reports.append(analyze_file(path, source))
            progress.advance(path.name)
    finally:
        progress.close()

    async def complexities() -> list[int | BaseException]:
        valid = [(p, s) for p, s in sources.items() if p != broken]
        return await asyncio.gather(*(complexity(p, s) for p, s in valid), return_exceptions=True)

    asyncio.run(complexities())

    with inst.monitored_analysis("indexer", "reindex", project=root.name or "root") as job:
        mean = sum(r.score for r in reports) / len(reports) if reports else 0.0
        job.record_quality(round(mean, 1))
    inst.record_quality_score(root.name or "root", "overall", round(mean, 1))


def _ai_calls(inst: Instrumentation) -> bool:
    """Simulated LLM calls against the local OpenAI-compatible server; False if unavailable."""
    try:
        from .llm_server import run_demo_calls
    except ImportError:
        return False
    run_demo_calls(inst)
    return True


# -- reading the registry back ----------------------------------------------------------------


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    ]


def quantile_of_buckets(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper_bound, count)`` pairs, estimated as
    Prometheus' histogram_quantile() does."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 0)
        lower, below = bound, count
    return lower


def _quantiles(
    registry: CollectorRegistry, metric: str, keys: tuple[str, ...]
) -> dict[tuple[str, ...], tuple[float, float]]:
    grouped: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for labels, value in _samples(registry, f"{metric}_bucket"):
        key = tuple(labels[k] for k in keys)
        grouped.setdefault(key, []).append((float(labels["le"]), value))
    return {
        key: (quantile_of_buckets(0.5, b), quantile_of_buckets(0.95, b))
        for key, b in grouped.items()
    }


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def _table(title: str, header: list[str], rows: list[list[str]], out: TextIO) -> None:
    """A table whose first column is a name and the others numbers; fits 80 columns."""
    if not rows:
        return
    try:
        from rich import box
        from rich.table import Table

        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column(header[0], no_wrap=True, overflow="fold")
        for column in header[1:]:
            table.add_column(column, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        # Not a terminal (a pipe, a log): rich would assume 80 columns; keep names whole.
        width = None if out.isatty() else 100
        _rich_console(out, width).print(table)
        return
    except ImportError:
        pass
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    out.write(f"\n{title}\n")
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)]
        out.write("  " + "  ".join(cells) + "\n")


#: What each quality gauge of the tour holds: a gauge keeps only the latest value set, so
#: the per-file one shows the last file's score, not a total.
_SCORE_MEANING = {
    "static_analysis": "the last file analysed",
    "indexer": "mean of the files, set by the reindex job",
    "overall": "mean of the files",
}


def summarize(inst: Instrumentation, out: TextIO) -> None:
    """Print what the registry holds, read back the way Prometheus would."""
    reg, metric = inst.registry, inst.metrics.names()
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in _samples(reg, metric["analyses"]):
        key = (labels["module"], labels["analysis_type"])
        counts.setdefault(key, {})[labels["status"]] = value
    quantiles = _quantiles(reg, metric["analysis_duration"], ("module", "analysis_type"))
    sums = {
        (lab["module"], lab["analysis_type"]): v
        for lab, v in _samples(reg, metric["analysis_duration"] + "_sum")
    }
    rows = []
    for key, by_status in sorted(counts.items()):
        total = sum(by_status.values())
        errors = by_status.get("error", 0)
        p50, p95 = quantiles.get(key, (math.nan, math.nan))
        ratio = f"{errors / total:.1%}" if total else "-"
        mean = sums.get(key, math.nan) / total if total else math.nan
        name = "/".join(key)
        rows.append([name, f"{total:.0f}", f"{errors:.0f}", ratio, _ms(mean), _ms(p50), _ms(p95)])
    _table(
        "Analyses (durations in ms)",
        ["module/analysis_type", "calls", "errors", "ratio", "mean", "p50", "p95"],
        rows,
        out,
    )
    active = [[lab["job_type"], f"{v:.0f}"] for lab, v in _samples(reg, metric["active_jobs"])]
    _table("Active jobs (0: all ended)", ["job_type", "active"], active, out)
    scores = sorted(
        [f"{lab['project']}/{lab['module']}", f"{v:.1f}", _SCORE_MEANING.get(lab["module"], "")]
        for lab, v in _samples(reg, metric["code_quality_score"])
    )
    if len(scores) > 12:
        scores = [*scores[:12], [f"... {len(scores) - 12} more", "", ""]]
    _table(
        "Quality scores (a gauge: the latest value set)",
        ["project/module", "score", "what it is"],
        scores,
        out,
    )

    calls: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in _samples(reg, metric["ai_api_calls"]):
        calls.setdefault((labels["provider"], labels["model"]), {})[labels["status"]] = value
    tokens: dict[tuple[str, str], dict[str, float]] = {}
    for labels, value in _samples(reg, metric["ai_tokens"]):
        tokens.setdefault((labels["provider"], labels["model"]), {})[labels["token_type"]] = value
    latency = _quantiles(reg, metric["ai_call_duration"], ("provider", "model"))
    ttft = _quantiles(reg, metric["ai_time_to_first_token"], ("provider", "model"))
    ai_rows = []
    for key, by_status in sorted(calls.items()):
        total = sum(by_status.values())
        used = tokens.get(key, {})
        ai_rows.append(
            [
                "/".join(key),
                f"{total:.0f}",
                f"{by_status.get('error', 0):.0f}",
                f"{used.get('input', 0):.0f}",
                f"{used.get('output', 0):.0f}",
                _ms(latency.get(key, (math.nan, math.nan))[1]),
                _ms(ttft.get(key, (math.nan, math.nan))[1]),
            ]
        )
    _table(
        "LLM calls (tokens; p95 duration and time to first token in ms)",
        ["provider/model", "calls", "errors", "in", "out", "p95", "TTFT p95"],
        ai_rows,
        out,
    )


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the tour as ``instrument demo`` parsed ``args``. What can fail without the tour
    is tried before it: the port is bound, the Pushgateway is pushed to and Grafana is
    asked, so a bad one fails in a second, not after the run."""
    out = out if out is not None else standard_output()
    root = Path(args.path) if args.path else PACKAGE_DIR
    grafana = GrafanaApply(args.grafana_url, **tls_options(args)) if args.grafana_url else None
    try:
        inst = Instrumentation(
            **tls_options(args),
            pushgateway=args.pushgateway,
            job="instrument-demo",
            push_mode="coalesce" if args.pushgateway else "off",
            buckets=DEMO_BUCKETS,
        )
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    server = None
    try:
        if args.serve is not None:
            server = _bind(inst, args.serve)
        if args.pushgateway and not inst.flush(timeout=5.0):
            raise CommandError(
                f"could not push to the Pushgateway at {mask_url(args.pushgateway)}: is it "
                "running and reachable? (tried before the demo ran; -v shows why)"
            )
        if grafana is not None:
            grafana.check(DASHBOARD_UID)
        _tour(inst, root, args, out)
        if args.pushgateway:
            if not inst.flush(timeout=5.0):
                raise CommandError(
                    f"could not push to the Pushgateway at {mask_url(args.pushgateway)}: is it "
                    "running and reachable? (the run's numbers are shown above)"
                )
            out.write(
                f"\nPushed to the Pushgateway at {mask_url(args.pushgateway)}: every metric above"
                " (job instrument-demo); see it there under /metrics.\n"
            )
        if grafana is not None:
            grafana.apply(build_dashboard(inst, uid=DASHBOARD_UID), out)
        out.write(next_steps(bool(args.pushgateway)))
        if server is not None:
            _serve(server, out)
    finally:
        if server is not None:
            server.shutdown()
        inst.close()
    return 0


#: Said before the tour: what a first-time reader would otherwise take for real.
STAGED = (
    "What is staged: the LLM calls go to a local OpenAI-compatible stand-in on 127.0.0.1\n"
    "(no real API is called, nothing is spent); broken_example.py is broken on purpose\n"
    "(the error path); the stand-in answers gpt-4o-overloaded with a staged 429.\n"
)


def next_steps(pushed: bool) -> str:
    """The tour's last words: what was delivered where, and three things to do next."""
    where = (
        "" if pushed else "\nNothing was pushed: the numbers above lived in this process only.\n"
    )
    return (
        f"{where}\nNext steps:\n"
        "  1. Decorate your own function:\n"
        '       @monitored_analysis("static_analysis", "codebase")  (from instrument)\n'
        "  2. Serve /metrics (prometheus_client's start_http_server(8000) shows it; here:\n"
        "     instrument demo --serve 9464) or push: configure(pushgateway=URL)\n"
        "  3. Import the dashboard: instrument dashboard --output dashboard.json, then\n"
        "     Grafana's Dashboards > New > Import (or instrument dashboard --apply)\n"
    )


def _tour(inst: Instrumentation, root: Path, args: argparse.Namespace, out: TextIO) -> None:
    out.write(STAGED)
    started = time.perf_counter()
    _pipeline(inst, root, not args.quiet, out)
    with_ai = _ai_calls(inst)
    elapsed = time.perf_counter() - started
    out.write(f"instrument demo: analysed {root} in {elapsed:.2f} s\n")
    summarize(inst, out)
    if not with_ai:
        out.write("\n(LLM calls skipped: instrument.demo.llm_server is not available)\n")


def _bind(inst: Instrumentation, port: int) -> Any:
    try:
        return inst.start_http_server(port)
    except OSError as exc:
        raise CommandError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


def _serve(server: Any, out: TextIO) -> None:
    """Keep the bound server up until Ctrl-C."""
    out.write(f"\nServing http://127.0.0.1:{server.server_port}/metrics -- press Ctrl-C to stop.\n")
    out.flush()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
