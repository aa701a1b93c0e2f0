"""Real Pushgateway and Prometheus processes on free loopback ports, for integration tests."""

from __future__ import annotations

import json
import os
import re
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

from prometheus_client.parser import text_string_to_metric_families

INSTALL_HINT = (
    "install it with `apt-get update && apt-get install -y prometheus-pushgateway prometheus "
    "prometheus-alertmanager` (the README's test command does this)"
)


def require_binary(name: str) -> str:
    """The binary's path; skip the test when missing, but fail under CI so it never hides.

    pytest is imported only here, so the benchmarks can import this module without it
    (they check ``shutil.which`` themselves before starting a server).
    """
    path = shutil.which(name)
    if path is None:
        import pytest

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


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    return free_port()


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


def terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """Stop a server process: SIGTERM, and SIGKILL if it is still there after ``grace`` s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
                # Debian's default persists to /var/lib: keep each test gateway empty.
                "--persistence.file=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"{self.url}/-/ready", self.proc, "prometheus-pushgateway")
        except BaseException:
            self.stop()  # never leave a gateway behind that did not come up
            raise
        return self

    def stop(self) -> None:
        terminate(self.proc, 10)
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

    def __init__(
        self,
        pushgateway: Pushgateway,
        extra_targets: tuple[str, ...] = (),
        flags: tuple[str, ...] = (),
    ) -> None:
        self.binary = require_binary("prometheus")
        self.flags = flags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="instrument-prom-"))
        self.rule_files: list[Path] = []
        self.pushgateway = pushgateway
        self.extra_targets = extra_targets
        #: host:port of Alertmanagers to send alerts to.
        self.alertmanagers: list[str] = []
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
        if self.alertmanagers:
            joined = ", ".join(f"'{t}'" for t in self.alertmanagers)
            lines += [
                "alerting:",
                f"  alertmanagers: [{{static_configs: [{{targets: [{joined}]}}]}}]",
            ]
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
                *self.flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"{self.url}/-/ready", self.proc, "prometheus", timeout=60)
        return self

    def stop(self) -> None:
        terminate(self.proc, 15)
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

    def wait_for(self, expr: str, timeout: float = 20.0, **labels: str) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns at least one sample (one carrying ``labels``, when
        given: series of one scrape can appear in the result one evaluation apart)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            found = [s for s in result if labels.items() <= s["metric"].items()]
            if found or time.monotonic() > deadline:
                return result
            time.sleep(0.25)


class Alertmanager:
    """A real ``prometheus-alertmanager`` process (clustering off, its own storage) sending
    every alert to one webhook; its group timings are short, so a test sees a notification
    and its resolution within seconds."""

    def __init__(self, webhook_url: str) -> None:
        self.binary = require_binary("prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="instrument-am-"))
        self.webhook_url = webhook_url
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return (
            "\n".join(
                [
                    "global:",
                    "  resolve_timeout: 5s",
                    "route:",
                    "  receiver: webhook",
                    "  group_by: [alertname, objective, job]",
                    "  group_wait: 1s",
                    "  group_interval: 1s",
                    "  repeat_interval: 1h",
                    "receivers:",
                    "  - name: webhook",
                    "    webhook_configs:",
                    f"      - url: '{self.webhook_url}'",
                    "        send_resolved: true",
                ]
            )
            + "\n"
        )

    def start(self) -> Alertmanager:
        config = self.dir / "alertmanager.yml"
        config.write_text(self.config())
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"{self.url}/-/ready", self.proc, "prometheus-alertmanager", timeout=30)
        except BaseException:
            self.stop()
            raise
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
        shutil.rmtree(self.dir, ignore_errors=True)


class GatewayStandIn:
    """A Pushgateway stand-in on loopback whose behaviour a test switches at will.

    Modes: ``ok`` (records each body), ``slow`` (hangs ``hang`` seconds, then 200),
    ``error`` (500), ``reset`` (closes the connection), ``garbage`` (a non-HTTP answer),
    ``trickle`` (a valid answer sent one byte every half second: about 30 s), ``answer``
    (whatever :meth:`answer` set, echoing the request's Authorization header if asked),
    ``forward`` (relays each request to the gateway at ``upstream``, a healthy hop).
    """

    def __init__(self, mode: str = "ok", hang: float = 3.0) -> None:
        import threading

        self.mode = mode
        self.hang = hang
        self._answer = b""
        self._answer_lands = False
        self.upstream = ""
        self.bodies: list[bytes] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(
        self,
        status: int | str,
        reason: str = "",
        headers: dict[str, str] | None = None,
        body: str = "",
    ) -> None:
        """Answer every request with this status line, headers and body (mode ``answer``).

        ``{auth}`` anywhere in them stands for the Authorization header the request carried,
        as an echoing proxy would send it back; a ``status`` that is not a number makes the
        status line itself garbage. A 2xx answer records the body, as ``ok`` does.
        """
        lines = [f"HTTP/1.1 {status} {reason}".rstrip()]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        encoded = body.encode()
        lines += [f"Content-Length: {len(encoded)}", "Connection: close", "", ""]
        self._answer = "\r\n".join(lines).encode() + encoded
        self._answer_lands = isinstance(status, int) and 200 <= status < 300
        self.mode = "answer"

    def _serve(self) -> None:
        import threading

        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.requests.append((method, path, headers))
                mode = self.mode
                if mode == "slow":
                    time.sleep(self.hang)
                if mode == "reset":
                    conn.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    return
                if mode == "trickle":  # a valid answer, one byte every half second
                    for (
                        byte
                    ) in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n":
                        if self._closed:
                            return
                        time.sleep(0.5)
                        conn.sendall(bytes([byte]))
                    return
                if mode == "garbage":
                    conn.sendall(b"\x00\xffnot http at all\r\n\r\n")
                    return
                if mode == "forward":
                    conn.sendall(self._forward(method, path, headers, body))
                    return
                if mode == "answer":
                    if self._answer_lands:
                        self.bodies.append(body)
                    auth = headers.get("authorization", "").encode("latin-1")
                    # The length was counted with the placeholder: count again.
                    head, _, rest = self._answer.replace(b"{auth}", auth).partition(b"\r\n\r\n")
                    head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(rest), head)
                    conn.sendall(head + b"\r\n\r\n" + rest)
                    return
                status = b"500 Internal Server Error" if mode == "error" else b"200 OK"
                if mode in ("ok", "slow"):
                    self.bodies.append(body)
                conn.sendall(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                return

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        relayed = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        request = urllib.request.Request(
            self.upstream + path, data=body or None, method=method, headers=relayed
        )
        answer: bytes
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status, answer = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        head = f"HTTP/1.1 {status} Relayed\r\nContent-Length: {len(answer)}\r\n"
        return head.encode() + b"Connection: close\r\n\r\n" + answer

    def last_value(self, name: str, **labels: str) -> float | None:
        """A sample's value in the last state received in ``ok``/``slow`` mode (a DELETE's
        empty body is not a state)."""
        states = [body for body in self.bodies if body]
        if not states:
            return None
        for family in text_string_to_metric_families(states[-1].decode()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= dict(sample.labels).items():
                    return float(sample.value)
        return None

    def close(self) -> None:
        self._closed = True
        self._sock.close()
