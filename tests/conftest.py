"""Shared fixtures: a fresh Instrumentation per test, and real servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from instrument import Instrumentation

from .servers import Prometheus, Pushgateway


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def inst(registry: CollectorRegistry) -> Iterator[Instrumentation]:
    """An instrumentation on its own registry, delivering nowhere."""
    instrumentation = Instrumentation(registry=registry)
    yield instrumentation
    instrumentation.close()


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
