"""Shared fixtures: a fresh Instrumentation per test, a fake clock, the stand-ins (a gateway
whose answers a test switches, a Grafana), and real servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

from instrument import Instrumentation
from instrument import analysis as analysis_module
from instrument.ai import _call as call_module
from instrument.ai import _streams as streams_module

from .fake_grafana import FakeGrafana
from .servers import GatewayStandIn, Prometheus, Pushgateway
from .support import NETWORK_GUARD, OFFLINE_ENVIRONMENT, FakeClock

# The suite runs on shared, noisy machines: a property is about values, never about how
# long one example took, so no example has a deadline (a test may still set its own).
settings.register_profile("instrument", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("instrument")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def inst(registry: CollectorRegistry) -> Iterator[Instrumentation]:
    """An instrumentation on its own registry, delivering nowhere."""
    instrumentation = Instrumentation(registry=registry)
    yield instrumentation
    instrumentation.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Both policies' ``perf_counter`` (an analysis, an AI call and its stream) swapped for a
    clock that moves only when the test says so: durations are exact, nothing sleeps."""
    fake = FakeClock()
    for module in (analysis_module, call_module, streams_module):
        monkeypatch.setattr(module, "perf_counter", fake)
    return fake


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INSTRUMENT_NAMESPACE from the environment the suite runs in."""
    monkeypatch.delenv("INSTRUMENT_NAMESPACE", raising=False)


@pytest.fixture
def stand_in() -> Iterator[GatewayStandIn]:
    """A Pushgateway stand-in on loopback, answering 200 until the test switches its mode."""
    server = GatewayStandIn()
    yield server
    server.close()


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    """The Grafana stand-in, with its dashboards, folders and data sources, on loopback."""
    with FakeGrafana() as server:
        yield server


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """The SDKs' offline switches, set before the first SDK import; the network guard on.

    For the module that asks for it only: the modules after it run as they would alone."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_ENVIRONMENT.items():
            patch.setenv(name, value)
        NETWORK_GUARD.start()
        try:
            yield
        finally:
            NETWORK_GUARD.stop()


@pytest.fixture(scope="session")
def pushgateway_server() -> Iterator[Pushgateway]:
    server = Pushgateway().start()
    yield server
    server.stop()


@pytest.fixture
def pushgateway(pushgateway_server: Pushgateway) -> Pushgateway:
    """The session's real Pushgateway, emptied before the test."""
    pushgateway_server.wipe()
    return pushgateway_server


@pytest.fixture
def job_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def prometheus_server(pushgateway_server: Pushgateway) -> Iterator[Prometheus]:
    server = Prometheus(pushgateway_server).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def remote_write_prometheus() -> Iterator[Prometheus]:
    """A real Prometheus with its remote-write receiver on (``/api/v1/write``). It scrapes
    no gateway (the one it is given is never started), so every series it holds was
    written to it."""
    server = Prometheus(Pushgateway(), flags=("--web.enable-remote-write-receiver",)).start()
    yield server
    server.stop()


# -- the dashboard and rules end to end: real calls -> Pushgateway -> Prometheus ----------------

#: The namespace of the end-to-end workload; the e2e Prometheus loads the rules generated for it.
E2E_NAMESPACE = "e2e"


def e2e_objectives() -> list[Any]:
    """The objectives the e2e rules carry, over series the workload records: analyses of
    static_analysis/codebase succeed, gpt-4o answers within 2.56 s. Their minimum traffic
    (10 events) is above the workload's, so they record but never alert."""
    from instrument import Objective
    from instrument.objectives import Coverage

    analyses = Coverage("analysis", (("module", "static_analysis"), ("analysis_type", "codebase")))
    gpt = Coverage("ai", (("provider", "openai"), ("model", "gpt-4o")))
    return [
        (Objective("e2e-availability", success=0.99), (analyses,)),
        (Objective("e2e-latency", latency=(2.56, 0.99), window="7d"), (gpt,)),
    ]


@pytest.fixture(scope="session")
def e2e_prometheus(
    pushgateway_server: Pushgateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus scraping the Pushgateway and evaluating ``instrument rules`` output."""
    from instrument.rules import rules_yaml

    rules = tmp_path_factory.mktemp("rules") / f"{E2E_NAMESPACE}.rules.yml"
    rules.write_text(rules_yaml(E2E_NAMESPACE, objectives=e2e_objectives()))
    server = Prometheus(pushgateway_server)
    server.rule_files.append(rules)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def e2e_workload(
    pushgateway_server: Pushgateway, e2e_prometheus: Prometheus
) -> Iterator[E2EWorkload]:
    """Real decorated calls pushed in two rounds, so every counter moves between scrapes."""
    workload = E2EWorkload(pushgateway_server, e2e_prometheus)
    try:
        workload.run()
        yield workload
    finally:
        workload.close()


#: What the workload's responses say is left of their rate limits: gpt-4o's successes, and
#: the claude 429s (with their retry-after).
GPT_HEADROOM = {"x-ratelimit-remaining-requests": "4999", "x-ratelimit-remaining-tokens": "29000"}
CLAUDE_LIMITED = {"anthropic-ratelimit-requests-remaining": "0", "retry-after": "7"}


class E2EWorkload:
    """Analyses (sync and async, successes and errors, quality scores) and LLM calls (plain,
    streamed, rate limited, priced and not) under their own job, with one job left running.

    Per round: static_analysis/codebase 2 successes and 1 SyntaxError, security_scan/
    dependencies 1 success and 1 ValueError; openai/gpt-4o 2 calls (one streamed, priced),
    anthropic/claude-sonnet 1 success (unpriced) and 1 rate-limited (429) error.
    """

    ROUNDS = 2
    ANALYSES_PER_ROUND = 5

    def __init__(self, gateway: Pushgateway, prometheus: Prometheus) -> None:
        import contextlib

        self.prometheus = prometheus
        self.namespace = E2E_NAMESPACE
        #: The last quality score of each (project, module).
        self.quality = {("shop", "static_analysis"): 82.0, ("warehouse", "static_analysis"): 75.5}
        self.job = f"e2e-{uuid.uuid4().hex[:10]}"
        self.inst = Instrumentation(
            registry=CollectorRegistry(),
            namespace=E2E_NAMESPACE,
            pushgateway=gateway.url,
            job=self.job,
            push_mode="off",
            prices={"gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}},
            build_info={"version": "1.0.0", "commit": "e2e0001", "branch": "main"},
        )
        self._open = contextlib.ExitStack()
        # Debian's gateway reloads /var/lib/prometheus/pushgateway.data on start: drop
        # groups left there by earlier runs, so the dashboard sums only this workload.
        gateway.wipe()

    def run(self) -> None:
        import asyncio

        for round_number in range(1, self.ROUNDS + 1):
            self._round(round_number)
            asyncio.run(self._async_round())
            if round_number == self.ROUNDS:
                # A job still in flight at the end: active_jobs{job_type="nightly"} stays 1.
                self._open.enter_context(self.inst.monitored_analysis("nightly", "full_scan"))
            assert self.inst.push(), "push to the real Pushgateway failed"
            expected = self.ANALYSES_PER_ROUND * round_number
            self.wait(f'sum({E2E_NAMESPACE}_analyses_total{{job="{self.job}"}}) >= {expected}')
        # The gauge is set after each successful push, so the gateway holds the previous one's.
        assert self.inst.push()
        self.wait(f'{E2E_NAMESPACE}_last_push_success_timestamp_seconds{{job="{self.job}"}} > 0')
        # The objectives' recordings are evaluated after the scrape: wait until both read
        # the last round (a rate over one round's samples is 0, its ratio NaN).
        for record in ("slo:current_burn_rate:ratio", "slo:period_error_budget_remaining:ratio"):
            self.wait(f'count({record}{{job="{self.job}"}} > -Inf) >= 2')

    def wait(self, expr: str) -> None:
        assert self.prometheus.wait_for(expr), f"Prometheus never saw {expr}"

    def _round(self, round_number: int) -> None:
        import contextlib

        inst = self.inst

        @inst.monitored_analysis(
            "static_analysis", "codebase", project="shop", quality=lambda r: r["score"]
        )
        def analyze(path: str) -> dict[str, float]:
            if path == "broken":
                raise SyntaxError("cannot parse")
            return {"score": 80.0 + round_number}

        @inst.track_ai_call("openai", "gpt-4o")
        def ask(prompt: str) -> object:
            # A raw response's shape: its headers say what is left of the rate limit.
            return SimpleNamespace(
                headers=GPT_HEADROOM,
                choices=[
                    {"message": {"tool_calls": [{"id": "call_1"}]}, "finish_reason": "tool_calls"}
                ],
                model="gpt-4o",
                usage={
                    "prompt_tokens": 1200,
                    "completion_tokens": 300,
                    "total_tokens": 1500,
                    "prompt_tokens_details": {"cached_tokens": 200},
                    "completion_tokens_details": {"reasoning_tokens": 50},
                },
            )

        @inst.track_ai_call("openai", "gpt-4o")
        def ask_streaming(prompt: str) -> Iterator[dict[str, object]]:
            yield {"choices": [{"delta": {"content": "Hel"}}]}
            yield {"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]}
            yield {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 2}}

        analyze("src/")
        with contextlib.suppress(SyntaxError):
            analyze("broken")
        with inst.monitored_analysis("static_analysis", "codebase") as job:
            job.record_quality(75.5, project="warehouse")
        ask("summarize")
        assert len(list(ask_streaming("hi"))) == 3

    async def _async_round(self) -> None:
        import contextlib

        inst = self.inst

        @inst.monitored_analysis("security_scan", "dependencies")
        async def scan(name: str) -> int:
            if name == "bad":
                raise ValueError("no lockfile")
            return 3

        class RateLimitError(Exception):
            status_code = 429
            response = SimpleNamespace(headers=CLAUDE_LIMITED)

        @inst.track_ai_call("anthropic", "claude-sonnet")
        async def claude(prompt: str) -> dict[str, object]:
            if prompt == "too fast":
                raise RateLimitError("rate limited")
            return {
                "type": "message",
                "model": "claude-sonnet",
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 500, "output_tokens": 120, "cache_read_input_tokens": 80},
            }

        await scan("requests")
        with contextlib.suppress(ValueError):
            await scan("bad")
        await claude("review this")
        with contextlib.suppress(RateLimitError):
            await claude("too fast")

    def close(self) -> None:
        self._open.close()
        self.inst.close()


# -- which tests a plain ``pytest`` runs ------------------------------------------------------

#: Fixtures that start a real server: a test using one (directly or through another fixture)
#: is an integration test, whether or not its module says so.
_SERVER_FIXTURES = frozenset(
    {"pushgateway_server", "prometheus_server", "e2e_prometheus", "remote_write_prometheus"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
