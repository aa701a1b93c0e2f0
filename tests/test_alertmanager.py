"""The objectives' alerts end to end: decorated calls that fail, pushed to a real
Pushgateway, a real Prometheus evaluating the generated rules, a real Alertmanager, and a
webhook receiver run here that gets the page and then its resolution."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation, Objective
from instrument.rules import rules_yaml

from .servers import Alertmanager, Prometheus, Pushgateway

pytestmark = pytest.mark.integration

RUNBOOKS = "https://runbooks.example.test/instrument"
NAMESPACE = "slo_am"
PAGE = "SloAmSLOBurnRatePage"


class Webhook:
    """An HTTP server on 127.0.0.1 keeping every notification Alertmanager posts."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = self.lock = threading.Lock()
        notifications = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, status: str, **labels: str) -> list[dict[str, Any]]:
        """The alerts of every notification so far with this status and these labels."""
        with self.lock:
            return [
                alert
                for note in self.notifications
                for alert in note["alerts"]
                if alert["status"] == status and labels.items() <= alert["labels"].items()
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def drive(work: Callable[[], None], until: Callable[[], object], deadline: float) -> bool:
    """Call ``work`` over and over until ``until()`` holds or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for _ in range(10):
            work()
        if until():
            return True
        time.sleep(0.1)
    return bool(until())


def test_a_burning_objective_pages_through_alertmanager_and_resolves(
    pushgateway_server: Pushgateway, webhook: Webhook, tmp_path: Path
) -> None:
    # A budget of 15 %: the page fires above 6x over 6h and 30m (90 % errors) and clears
    # as soon as successes bring the ratio below it, not after an hour of windows.
    objective = Objective("ingest-availability", success=0.85, min_events=5)
    job = f"am-{uuid.uuid4().hex[:10]}"
    inst = Instrumentation(
        registry=CollectorRegistry(),
        namespace=NAMESPACE,
        pushgateway=pushgateway_server.url,
        job=job,
        push_interval=0.2,
    )
    failing = True

    @inst.monitored_analysis("ingest", "batch", objective=objective)
    def ingest() -> str:
        if failing:
            raise RuntimeError("upstream down")
        return "ok"

    def call() -> None:
        with contextlib.suppress(RuntimeError):
            assert ingest() == "ok"

    rules = tmp_path / "slo.rules.yml"
    rules.write_text(
        rules_yaml(inst, slo_page_for="1s", slo_ticket_for="1s", runbook_base_url=RUNBOOKS)
    )
    alertmanager = Alertmanager(webhook.url).start()
    prometheus = Prometheus(pushgateway_server)
    prometheus.rule_files.append(rules)
    prometheus.alertmanagers.append(f"127.0.0.1:{alertmanager.port}")
    try:
        prometheus.start()
        page = {"alertname": PAGE, "job": job, "severity": "page"}
        assert drive(call, lambda: webhook.alerts("firing", **page), deadline=90), (
            "no page reached the webhook"
        )
        (alert, *_) = webhook.alerts("firing", **page)
        assert alert["labels"]["objective"] == "ingest-availability"
        assert alert["labels"]["slo_kind"] == "success"
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}/{PAGE}"
        assert alert["annotations"]["dashboard_url"] == "/d/codomyrmex-analytics"
        assert job in alert["annotations"]["summary"]

        failing = False
        assert drive(call, lambda: webhook.alerts("resolved", **page), deadline=90), (
            "the page was never resolved once the failures stopped"
        )
        (resolved, *_) = webhook.alerts("resolved", **page)
        assert resolved["labels"] == alert["labels"]
        # What the user's calls saw was never changed by any of it.
        assert ingest() == "ok"
    finally:
        prometheus.stop()
        alertmanager.stop()
        inst.close()
        inst.delete_from_gateway()
