"""Real Pushgateway and Prometheus processes on free loopback ports, for integration tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

INSTALL_HINT = (
    "install it with `apt-get update && apt-get install -y prometheus-pushgateway prometheus` "
    "(the README's test command does this)"
)


def require_binary(name: str) -> str:
    """The binary's path; skip the test when missing, but fail under CI so it never hides."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " -- under CI a missing server binary is a failure")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, data: bytes | None = None, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before becoming ready")
        try:
            http("GET", url, timeout=1.0)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready at {url} after {timeout} s")


class Pushgateway:
    """A real ``prometheus-pushgateway`` process. ``start()``/``stop()`` keep the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_binary("prometheus-pushgateway")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Pushgateway:
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-admin-api",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"{self.url}/-/ready", self.proc, "prometheus-pushgateway")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def wipe(self) -> None:
        http("PUT", f"{self.url}/api/v1/admin/wipe")

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        text = http("GET", f"{self.url}/metrics").decode()
        out = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.append((sample.name, dict(sample.labels), sample.value))
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample named ``name`` whose labels include ``labels``."""
        found = [v for n, lab, v in self.samples() if n == name and labels.items() <= lab.items()]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples match {name}{labels}: be more specific")
        return found[0] if found else None

    def groups(self) -> list[dict[str, Any]]:
        """The groups the gateway holds, from its JSON API."""
        body = json.loads(http("GET", f"{self.url}/api/v1/metrics"))
        data: list[dict[str, Any]] = body["data"]
        return data


class Prometheus:
    """A real ``prometheus`` process scraping the given Pushgateway (and other targets)."""

    def __init__(self, pushgateway: Pushgateway, extra_targets: tuple[str, ...] = ()) -> None:
        self.binary = require_binary("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="instrument-prom-"))
        self.rule_files: list[Path] = []
        self.pushgateway = pushgateway
        self.extra_targets = extra_targets
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        targets = f"['127.0.0.1:{self.pushgateway.port}']"
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  evaluation_interval: 1s",
        ]
        if self.rule_files:
            lines.append("rule_files:")
            lines += [f"  - '{path}'" for path in self.rule_files]
        lines += [
            "scrape_configs:",
            "  - job_name: pushgateway",
            "    honor_labels: true",
            f"    static_configs: [{{targets: {targets}}}]",
        ]
        if self.extra_targets:
            joined = ", ".join(f"'{t}'" for t in self.extra_targets)
            lines += [
                "  - job_name: app",
                f"    static_configs: [{{targets: [{joined}]}}]",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Prometheus:
        config = self.dir / "prometheus.yml"
        config.write_text(self.config())
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"{self.url}/-/ready", self.proc, "prometheus", timeout=60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; raises AssertionError with Prometheus' error text if it fails."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(http("GET", url))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"query {expr!r} failed: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns at least one sample."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)
