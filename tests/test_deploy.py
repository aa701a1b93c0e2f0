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
    assert set(compose["services"]) == {"pushgateway", "prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / source).exists(), f"{source} is mounted but missing"
