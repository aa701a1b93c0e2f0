"""The example configurations in deploy/ are valid as Prometheus' own tools read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from .servers import require_binary
from .support import ROOT

DEPLOY = ROOT / "deploy"

pytestmark = pytest.mark.integration


def test_prometheus_config_passes_promtool_with_the_rules(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = sorted((DEPLOY / "rules").glob("*.yml"))
    assert rules, "deploy/rules holds the generated alert rules"
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/rules", str(DEPLOY / "rules")))
    result = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for rule_file in rules:  # promtool read each rule file through the glob
        assert str(rule_file) in result.stdout + result.stderr
    parsed = yaml.safe_load(config)
    gateway = next(s for s in parsed["scrape_configs"] if s["job_name"] == "pushgateway")
    assert gateway["honor_labels"] is True


def test_compose_file_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {
        "pushgateway",
        "prometheus",
        "grafana",
        "alertmanager",
        "analysis-service",
    }
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / source).exists(), f"{source} is mounted but missing"


def test_every_scrape_target_and_alertmanager_is_a_compose_service_on_its_port() -> None:
    """So every target is up once the stack runs: each host:port Prometheus is told about
    is a service of the compose file that exposes that port."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    targets += [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert "alertmanager:9093" in targets and "analysis-service:9464" in targets
    for target in targets:
        host, port = target.split(":")
        assert host in compose, f"{target}: no such compose service"
        exposed = {p.split(":")[-1] for p in compose[host].get("ports", [])}
        assert port in exposed, f"{target}: the {host} service does not expose {port}"
    assert set(compose["prometheus"]["depends_on"]) >= {"alertmanager", "analysis-service"}


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_provisioned_dashboard_lets_instrument_dashboard_apply_save_over_it() -> None:
    import json

    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "instrument.yml").read_text()
    )["providers"][0]
    # The file has --apply's default uid: without allowUiUpdates Grafana refuses the save
    # ("Cannot save provisioned dashboard").
    assert json.loads((DEPLOY / "dashboard.json").read_text())["uid"] == "codomyrmex-analytics"
    assert provider["allowUiUpdates"] is True
    compose_text = (DEPLOY / "docker-compose.yml").read_text()
    assert "admin / admin" in compose_text and "Service accounts" in compose_text


def test_the_sample_service_records_on_the_global_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import random
    import types

    from prometheus_client import REGISTRY

    from instrument.defaults import replace_default

    spec = importlib.util.spec_from_file_location(
        "sample_service", DEPLOY / "sample-service" / "service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = replace_default(None)
    try:
        monkeypatch.setattr(module, "random", random.Random(7))
        # Its stand-in work, without the wait.
        monkeypatch.setattr(module, "time", types.SimpleNamespace(sleep=lambda seconds: None))
        outcomes = []
        for _ in range(30):
            try:
                module.analyze(3)
                outcomes.append("success")
            except ValueError:
                outcomes.append("error")
        labels = {"module": "static_analysis", "analysis_type": "codebase"}
        for status in ("success", "error"):
            value = REGISTRY.get_sample_value(
                "codomyrmex_analyses_total", {**labels, "status": status}
            )
            assert value == outcomes.count(status)
    finally:
        current = replace_default(saved)
        if current is not None:
            current.close()
