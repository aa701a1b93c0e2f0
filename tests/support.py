"""What many test modules share: an Instrumentation pointed at a gateway, a fake clock, and
reading back what a test checks (samples of a registry, of the last state a gateway got).

Every reader goes through :func:`instrument.testing.sample_value`, the users' own helper, and
takes the default namespace ``codomyrmex`` unless told otherwise. Analysis readers default
to the (module "m", analysis_type "t") most tests decorate with.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument._promql import Expr, Series
from instrument.testing import sample_value

from .servers import GatewayStandIn, Pushgateway

NS = "codomyrmex"
#: The checkout's root: README.md, deploy/, instrument/ and tests/ are beneath it.
ROOT = Path(__file__).resolve().parents[1]


def gateway_inst(gateway: str | Pushgateway | GatewayStandIn, **options: Any) -> Instrumentation:
    """An Instrumentation on a fresh registry pushing to ``gateway``; the caller closes it."""
    url = gateway if isinstance(gateway, str) else gateway.url
    options.setdefault("registry", CollectorRegistry())
    return Instrumentation(pushgateway=url, **options)


def push_once(inst: Instrumentation, transport: str, *job: str) -> bool:
    """One push as a caller of ``transport`` makes it: ``inst.push()`` (``"sync"``), or
    ``push_metrics()`` awaited in an event loop of its own, whose aiohttp session is closed
    before the loop ends. ``job`` is the seed's ``PrometheusIntegration.push_metrics(job)``
    argument, so it goes with ``"async"`` only."""
    if transport == "sync":
        assert not job, "only PrometheusIntegration.push_metrics takes a job"
        return inst.push()

    async def push() -> bool:
        try:
            return await inst.push_metrics(*job)  # type: ignore[call-arg]
        finally:
            await inst.aclose()

    return asyncio.run(push())


def in_threads(work: Callable[[], object], count: int) -> None:
    """Run ``work`` in ``count`` threads at once, and wait for all of them."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class FakeClock:
    """Stands in for ``perf_counter``: reads ``now``, which moves only when the test moves
    it (``advance``, or setting ``now``), or by ``step`` after every reading."""

    def __init__(self, now: float = 0.0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample(registry: CollectorRegistry, suffix: str, **labels: str) -> float | None:
    """``codomyrmex_<suffix>{labels}`` read back from the registry."""
    return sample_value(registry, f"{NS}_{suffix}", labels)


def counted(registry: CollectorRegistry, suffix: str, **labels: str) -> float:
    """Like :func:`sample`, but 0 when the series does not exist (nothing was counted)."""
    return sample(registry, suffix, **labels) or 0.0


def local(inst: Instrumentation, suffix: str, **labels: str) -> float | None:
    """A sample of the instrumentation's own registry, read without collecting the other
    collectors on it (a collector that raises would raise here, and count the collect)."""
    full = f"{NS}_{suffix}"
    for metric in inst.registry.restricted_registry([full]).collect():
        for found in metric.samples:
            if found.name == full and found.labels == labels:
                return float(found.value)
    return None


class Boom(Exception):
    """A failure a test injects (into a hook, a collector, a transport)."""


def explode(*_: Any) -> Any:
    """Stands in for anything a test breaks: raises :class:`Boom`."""
    raise Boom("injected")


def promql_keys(expr: Expr) -> set[str]:
    """The keys a generated PromQL tree reads: metrics, or series recorded by rules."""
    found: set[str] = set()
    if isinstance(expr, Series):
        found.add(expr.key)
    for value in vars(expr).values():
        if isinstance(value, Expr):
            found |= promql_keys(value)
    return found


# -- monitored_analysis -------------------------------------------------------------------------


def analyses(
    registry: CollectorRegistry, status: str, module: str = "m", kind: str = "t"
) -> float | None:
    labels = {"module": module, "analysis_type": kind, "status": status}
    return sample(registry, "analyses_total", **labels)


def analysis_duration(
    registry: CollectorRegistry, part: str, module: str = "m", kind: str = "t"
) -> float | None:
    """The duration histogram's ``count`` or ``sum``."""
    labels = {"module": module, "analysis_type": kind}
    return sample(registry, f"analysis_duration_seconds_{part}", **labels)


def analysis_errors(
    registry: CollectorRegistry, error_type: str, module: str = "m", kind: str = "t"
) -> float | None:
    labels = {"module": module, "analysis_type": kind, "error_type": error_type}
    return sample(registry, "analysis_errors_total", **labels)


def active(registry: CollectorRegistry, job_type: str = "m") -> float | None:
    return sample(registry, "active_jobs", job_type=job_type)


# -- track_ai_call ------------------------------------------------------------------------------


def ai_duration(
    registry: CollectorRegistry, provider: str, model: str
) -> tuple[float | None, float | None]:
    """(count, sum) of the call duration histogram."""
    labels = {"provider": provider, "model": model}
    return (
        sample(registry, "ai_call_duration_seconds_count", **labels),
        sample(registry, "ai_call_duration_seconds_sum", **labels),
    )


def ttft(
    registry: CollectorRegistry, provider: str, model: str
) -> tuple[float | None, float | None]:
    """(count, sum) of the time-to-first-token histogram."""
    labels = {"provider": provider, "model": model}
    return (
        sample(registry, "ai_time_to_first_token_seconds_count", **labels),
        sample(registry, "ai_time_to_first_token_seconds_sum", **labels),
    )


def ai_errors(
    registry: CollectorRegistry, provider: str, model: str, error_type: str, http_status: str
) -> float | None:
    labels = {"error_type": error_type, "http_status": http_status}
    return sample(registry, "ai_api_errors_total", provider=provider, model=model, **labels)


def tokens_used(registry: CollectorRegistry, provider: str, model: str, kind: str) -> float | None:
    labels = {"provider": provider, "model": model, "token_type": kind}
    return sample(registry, "ai_tokens_used_total", **labels)


def token_detail(
    registry: CollectorRegistry, provider: str, model: str, detail: str
) -> float | None:
    labels = {"provider": provider, "model": model, "detail": detail}
    return sample(registry, "ai_token_details_total", **labels)


def calls(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    """Calls of one (provider, model) by status, statuses never seen left out."""
    found = {}
    for status in ("success", "error", "cancelled"):
        value = sample(
            registry, "ai_api_calls_total", provider=provider, model=model, status=status
        )
        if value:
            found[status] = value
    return found


def token_counts(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    """Every token counter of one (provider, model) that exists, by token_type or detail."""
    found: dict[str, float] = {}
    for kind in ("input", "output"):
        value = sample(
            registry, "ai_tokens_used_total", provider=provider, model=model, token_type=kind
        )
        if value is not None:
            found[kind] = value
    for detail in ("cache_read", "cache_creation", "reasoning"):
        value = sample(
            registry, "ai_token_details_total", provider=provider, model=model, detail=detail
        )
        if value is not None:
            found[detail] = value
    return found


# -- what a gateway received ----------------------------------------------------------------------


def pushed_analyses(
    gateway: Pushgateway | GatewayStandIn, status: str = "success", **extra: str
) -> float | None:
    """The analyses count of (m, t) the gateway holds: the real one's groups (``extra``
    picks one, e.g. ``job=``), or the last state a stand-in received."""
    labels = {"module": "m", "analysis_type": "t", "status": status, **extra}
    if isinstance(gateway, Pushgateway):
        return gateway.value(f"{NS}_analyses_total", **labels)
    return gateway.last_value(f"{NS}_analyses_total", **labels)


# -- the LLM SDKs, offline ------------------------------------------------------------------------

#: Each SDK the suite drives, by the name its package is imported under.
SDK_MODULES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google-genai": "google.genai",
    "mistralai": "mistralai.client",
    "cohere": "cohere",
    "litellm": "litellm",
}

#: Turned on before any SDK is imported: nothing may fetch price maps, send telemetry, or
#: reach any host but 127.0.0.1.
OFFLINE_ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_TELEMETRY": "False",
    "MISTRAL_SDK_TELEMETRY": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_sdk(sdk: str) -> ModuleType:
    """The SDK's module; skip when it is not installed, but fail under CI."""
    import pytest

    try:
        module = importlib.import_module(SDK_MODULES[sdk])
    except ImportError as exc:
        message = f"{sdk} is not installed ({exc}): pip install -e '.[sdk]' (scripts/test.sh does)"
        if under_ci():
            pytest.fail(message + " -- under CI a missing SDK is a failure")
        pytest.skip(message)
    if sdk == "litellm":
        module.suppress_debug_info = True  # its "Give Feedback" banner on every error
    return module


class NetworkGuard:
    """While started, refuses (and notes) any host but loopback: ``socket.getaddrinfo`` and
    ``socket.socket.connect``/``connect_ex``, which every client here goes through (http.client,
    httpx, aiohttp and asyncio's loops), are wrapped, and unwrapped again by :meth:`stop`, so
    nothing of it stays for the tests after the module that asked for it."""

    LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", b"127.0.0.1", b"localhost"})

    def __init__(self) -> None:
        #: Non-loopback network attempts seen while on.
        self.outside: list[str] = []
        #: How many loopback connections it saw: proof that it is watching.
        self.loopback_seen = 0
        self._saved: list[tuple[Any, str, Any]] = []

    @property
    def on(self) -> bool:
        return bool(self._saved)

    def start(self) -> None:
        if self._saved:
            return
        import socket

        def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            self._check("socket.getaddrinfo", host)
            return real_lookup(host, *args, **kwargs)

        def connecting(real: Callable[..., Any]) -> Callable[..., Any]:
            def connect(sock: socket.socket, address: Any) -> Any:
                if isinstance(address, tuple):  # not a Unix socket
                    self._check("socket.connect", address[0])
                return real(sock, address)

            return connect

        real_lookup = socket.getaddrinfo
        for owner, name, replacement in (
            (socket, "getaddrinfo", lookup),
            (socket.socket, "connect", connecting(socket.socket.connect)),
            (socket.socket, "connect_ex", connecting(socket.socket.connect_ex)),
        ):
            self._saved.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, replacement)

    def stop(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            if original is None:  # inherited (socket.socket's from _socket.socket)
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def _check(self, event: str, host: Any) -> None:
        if host in self.LOOPBACK:
            if event == "socket.connect":
                self.loopback_seen += 1
            return
        if host is not None:
            self.outside.append(f"{event} {host!r}")
            raise ConnectionRefusedError(f"the test suite allows 127.0.0.1 only, not {host!r}")


#: This process's guard (the ``offline`` fixture turns it on).
NETWORK_GUARD = NetworkGuard()


def go_offline() -> None:
    """For a child process the suite starts: the SDKs' offline switches and the guard on."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    NETWORK_GUARD.start()


#: A prelude for :func:`run_script`: ``run_forked(worker, count)`` runs ``worker(n)`` in
#: ``count`` forked processes, waits for them, and returns a registry of what their
#: multiprocess files hold.
FORKED_WORKERS = """
    import multiprocessing

    from prometheus_client import CollectorRegistry, multiprocess


    def run_forked(worker, count):
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=worker, args=(n,)) for n in range(count)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
"""


def run_script(
    path: Path, code: str, env: dict[str, str] | None = None, *, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """Write ``prelude`` and ``code`` (each dedented) to ``path`` and run it from the
    checkout's root with this interpreter. The multiprocess variables of the test run's own
    environment are left out unless ``env`` sets them: a script is in multiprocess mode only
    when it asks."""
    path.write_text(textwrap.dedent(prelude) + textwrap.dedent(code))
    environment = {**os.environ, **(env or {})}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        if env is None or name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=environment,
    )


# -- a real OpenTelemetry SDK for tests/test_tracing.py and tests/test_exemplars.py -------------


@contextmanager
def tracer_provider() -> Iterator[Any]:
    """A real SDK tracer provider set as the global one, with an in-memory exporter (what
    this yields): every span ended meanwhile is in ``exporter.get_finished_spans()``.

    The API lets a process set its provider once; this unsets it again afterwards, as
    opentelemetry's own test helpers do, so the tests after it run without one.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _unset_tracer_provider(trace)
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        _unset_tracer_provider(trace)
        provider.shutdown()


def _unset_tracer_provider(trace: ModuleType) -> None:
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
