"""The generated rules: promtool's own checks and unit tests, a real Prometheus evaluating
them over a real workload, and the YAML emitter."""

from __future__ import annotations

import inspect
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import rules as rules_module
from instrument.cli import main
from instrument.metrics import METRICS, Metrics, metric_names
from instrument.rules import build_rules, rules_yaml, to_yaml

from .conftest import E2E_NAMESPACE, E2EWorkload, e2e_objectives
from .servers import http, require_binary
from .support import ROOT, promql_keys

RULES = build_rules("codomyrmex")
E2E_RULES = [rule for group in build_rules(E2E_NAMESPACE)["groups"] for rule in group["rules"]]
THRESHOLD = re.compile(r"^(?P<value>.+) > (?P<threshold>[0-9.e+-]+)$")


def rule(name: str, rules: dict[str, Any] = RULES) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name
    ]
    assert len(found) == 1, name
    return found[0]


def without_threshold(expr: str) -> str:
    match = THRESHOLD.match(expr)
    assert match, f"{expr!r} does not end with its threshold comparison"
    return match["value"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


# -- promtool ------------------------------------------------------------------------------


def test_promtool_checks_the_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "codomyrmex.rules.yml"
    path.write_text(rules_yaml("codomyrmex"))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 16 rules found" in checked.stdout


def render(template: str, labels: dict[str, str], value: str) -> str:
    """Prometheus' rendering of our annotation templates, for the expected alerts."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), template)
    text = re.sub(r"\{\{ \$value( \| \w+)? \}\}", value, text)
    assert "{{" not in text
    return text


def expected(alert: str, labels: dict[str, str], value: str) -> dict[str, Any]:
    """One firing alert as promtool reports it: its labels and rendered annotations."""
    annotations = rule(alert)["annotations"]
    return {
        "exp_labels": {**labels, "severity": "warning"},
        "exp_annotations": {k: render(v, labels, value) for k, v in annotations.items()},
    }


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"codomyrmex_{name}{{{inner}}}", "values": values}


# What each alert sees: one label set that must fire, one that must stay quiet.
INPUT = [
    # 1 of 10 lint analyses fails; fmt never fails (error counter at 0) nor has one (style).
    series("analyses_total", "0+9x120", module="lint", analysis_type="file", status="success"),
    series("analyses_total", "0+1x120", module="lint", analysis_type="file", status="error"),
    series("analyses_total", "0+10x120", module="fmt", analysis_type="file", status="success"),
    series("analyses_total", "0+0x120", module="fmt", analysis_type="file", status="error"),
    series("analyses_total", "0+10x120", module="style", analysis_type="file", status="success"),
    # deep/repo takes 300-600 s (p95 585 s); quick/repo under 0.1 s.
    *(
        series("analysis_duration_seconds_bucket", v, module="deep", analysis_type="repo", le=le)
        for le, v in (
            ("0.1", "0+0x120"),
            ("300", "0+0x120"),
            ("600", "0+10x120"),
            ("+Inf", "0+10x120"),
        )
    ),
    *(
        series(
            "analysis_duration_seconds_bucket",
            "0+10x120",
            module="quick",
            analysis_type="repo",
            le=le,
        )
        for le in ("0.1", "300", "600", "+Inf")
    ),
    # nightly never finishes; web jobs come and go.
    series("active_jobs", "1+0x120", job="batch", job_type="nightly"),
    series("active_jobs", " ".join(["1", "0"] * 60), job="api", job_type="web"),
    # gpt-4o: 2 of 10 calls fail, both rate limited; claude never fails.
    series("ai_api_calls_total", "0+8x120", provider="openai", model="gpt-4o", status="success"),
    series("ai_api_calls_total", "0+2x120", provider="openai", model="gpt-4o", status="error"),
    series(
        "ai_api_errors_total",
        "0+2x120",
        provider="openai",
        model="gpt-4o",
        error_type="RateLimitError",
        http_status="429",
    ),
    series(
        "ai_api_calls_total", "0+10x120", provider="anthropic", model="claude", status="success"
    ),
    # gpt-4o burns 30000 tokens a minute (1.8M an hour); claude 1000.
    series(
        "ai_tokens_used_total", "0+20000x120", provider="openai", model="gpt-4o", token_type="input"
    ),
    series(
        "ai_tokens_used_total",
        "0+10000x120",
        provider="openai",
        model="gpt-4o",
        token_type="output",
    ),
    series(
        "ai_tokens_used_total",
        "0+1000x120",
        provider="anthropic",
        model="claude",
        token_type="input",
    ),
    # gpt-4o's requests left fall from 1000 to 50 (95 % of the most seen used); claude's
    # stay at 1000; claude-old's tokens were at 0 when its calls stopped: a stale gauge
    # says nothing (tests/test_rules.py::test_headroom_* hold the all-day-0 case).
    series(
        "ai_rate_limit_remaining",
        "1000-50x19 50+0x100",
        provider="openai",
        model="gpt-4o",
        limit="requests",
    ),
    series(
        "ai_rate_limit_remaining",
        "1000+0x120",
        provider="anthropic",
        model="claude",
        limit="requests",
    ),
    series(
        "ai_rate_limit_remaining",
        "1000-200x5 0+0x115",
        provider="anthropic",
        model="claude-old",
        limit="tokens",
    ),
    series(
        "ai_api_calls_total",
        "0+10x5 50+0x115",
        provider="anthropic",
        model="claude-old",
        status="success",
    ),
    # Unix time of the last successful push: "silent" stopped at 5m; "live" keeps pushing;
    # "fresh" only ever pushed its first push (which carries 0).
    series("last_push_success_timestamp_seconds", "0+60x5 300+0x115", job="silent"),
    series("last_push_success_timestamp_seconds", "0+60x120", job="live"),
    series("last_push_success_timestamp_seconds", "0+0x120", job="fresh"),
]

ALERT_TESTS = [
    # name, (time it is still quiet, time it fires, labels, rendered $value)
    ("CodomyrmexAnalysisErrorRatioHigh", "8m", "15m", {"module": "lint", "analysis_type": "file"}, "10%"),
    ("CodomyrmexAnalysisDurationHigh", "10m", "20m", {"module": "deep", "analysis_type": "repo"}, "9m 45s"),
    ("CodomyrmexJobActiveTooLong", "50m", "70m", {"job": "batch", "job_type": "nightly"}, "1"),
    ("CodomyrmexAIErrorSpike", "4m", "10m", {"provider": "openai", "model": "gpt-4o"}, "20%"),
    ("CodomyrmexAIRateLimited", "4m", "10m", {"provider": "openai", "model": "gpt-4o"}, "20%"),
    ("CodomyrmexAIRateLimitHeadroomLow", "15m", "30m", {"provider": "openai", "model": "gpt-4o", "limit": "requests"}, "95%"),
    ("CodomyrmexAITokenBurnHigh", "10m", "20m", {"provider": "openai", "model": "gpt-4o"}, "1.8M"),
    ("CodomyrmexPushSilent", "19m", "25m", {"job": "silent"}, "20m 0s"),
]  # fmt: skip


def unit_tests(cases: list[tuple[str, str, str, dict[str, str], str]]) -> dict[str, Any]:
    alert_rule_test: list[dict[str, Any]] = []
    for name, quiet_at, fires_at, labels, value in cases:
        alert_rule_test.append({"eval_time": quiet_at, "alertname": name, "exp_alerts": []})
        alert_rule_test.append(
            {
                "eval_time": fires_at,
                "alertname": name,
                "exp_alerts": [expected(name, labels, value)],
            }
        )
    return {
        "rule_files": ["codomyrmex.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": INPUT, "alert_rule_test": alert_rule_test}],
    }


def run_unit_tests(tmp_path: Path, tests: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "codomyrmex.rules.yml").write_text(rules_yaml("codomyrmex"))
    test_file = tmp_path / "codomyrmex.test.yml"
    test_file.write_text(to_yaml(tests))
    return promtool("test", "rules", str(test_file))


def test_every_alert_is_unit_tested() -> None:
    alerts = {r["alert"] for g in RULES["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {name for name, *_ in ALERT_TESTS}


def test_promtool_unit_tests_each_alert_fires_and_stays_quiet(tmp_path: Path) -> None:
    """At the firing time exactly one alert fires per rule: the quiet label sets (fmt,
    style, quick, web, claude, live, fresh) do not, and before its `for` nothing fires."""
    result = run_unit_tests(tmp_path, unit_tests(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    "wrong",
    [
        # expecting the quiet module to fire must fail...
        ("CodomyrmexAnalysisErrorRatioHigh", "8m", "15m", {"module": "fmt", "analysis_type": "file"}, "0%"),
        # ...and so must expecting the alert before its `for` has passed
        ("CodomyrmexJobActiveTooLong", "50m", "55m", {"job": "batch", "job_type": "nightly"}, "1"),
    ],
)  # fmt: skip
def test_promtool_unit_tests_catch_a_wrong_expectation(
    tmp_path: Path, wrong: tuple[str, str, str, dict[str, str], str]
) -> None:
    result = run_unit_tests(tmp_path, unit_tests([wrong]))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


# -- a real Prometheus evaluating the rules over a real workload ---------------------------


@pytest.mark.integration
@pytest.mark.parametrize("rule_", E2E_RULES, ids=[r.get("record") or r["alert"] for r in E2E_RULES])
def test_every_rule_returns_data_from_prometheus(
    e2e_workload: E2EWorkload, rule_: dict[str, Any]
) -> None:
    """Recording rules as written, alerts with their threshold comparison removed."""
    prometheus = e2e_workload.prometheus
    expr = rule_["expr"] if "record" in rule_ else without_threshold(rule_["expr"])
    if "record" in rule_:
        # Prometheus itself evaluates the rule and stores the series under its name.
        assert prometheus.wait_for(rule_["record"]), f"{rule_['record']} was never recorded"
    result = prometheus.wait_for(expr)
    values = [float(s["value"][1]) for s in result]
    assert [v for v in values if not math.isnan(v)], f"{expr} returned {result}"


@pytest.mark.integration
def test_prometheus_loads_every_rule_healthy(e2e_workload: E2EWorkload) -> None:
    prometheus = e2e_workload.prometheus
    assert prometheus.wait_for(f"provider_model:{E2E_NAMESPACE}_ai_api_calls:error_ratio_rate5m")
    body = json.loads(http("GET", f"{prometheus.url}/api/v1/rules"))
    loaded = {g["name"]: g["rules"] for g in body["data"]["groups"]}
    # The e2e Prometheus also loads the objectives' groups (tests/test_slo_rules.py).
    slo = build_rules(E2E_NAMESPACE, objectives=e2e_objectives())
    generated = {g["name"]: g["rules"] for g in slo["groups"]}
    assert set(loaded) == set(generated)
    for name, rules in generated.items():
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in loaded[name]] == [
            (r.get("record") or r["alert"], "ok", "") for r in rules
        ]


@pytest.mark.integration
def test_alerts_go_pending_for_what_the_workload_did(e2e_workload: E2EWorkload) -> None:
    """The workload fails 1 in 3 static analyses and half the claude calls (429s), and
    leaves a nightly job running: those alerts wait out their `for`; the rest stay quiet."""
    prometheus = e2e_workload.prometheus
    e2e = {
        name: f"E2e{name}" for name in ("AnalysisErrorRatioHigh", "AIErrorSpike", "AIRateLimited")
    }
    for alert in (*e2e.values(), "E2eJobActiveTooLong"):
        assert prometheus.wait_for(f'ALERTS{{alertname="{alert}", alertstate="pending"}}'), alert
    pending = prometheus.query('ALERTS{alertname=~"E2e.*"}')
    by_alert = {
        (
            s["metric"]["alertname"],
            s["metric"].get("module") or s["metric"].get("model") or s["metric"].get("job_type"),
        )
        for s in pending
    }
    assert ("E2eAIRateLimited", "claude-sonnet") in by_alert
    assert ("E2eAIRateLimited", "gpt-4o") not in by_alert
    assert ("E2eAnalysisErrorRatioHigh", "static_analysis") in by_alert
    assert ("E2eJobActiveTooLong", "nightly") in by_alert
    assert ("E2eJobActiveTooLong", "static_analysis") not in by_alert
    names = {name for name, _ in by_alert}
    assert "E2ePushSilent" not in names and "E2eAnalysisDurationHigh" not in names


@pytest.mark.integration
def test_rule_values_match_the_workload(e2e_workload: E2EWorkload) -> None:
    prometheus = e2e_workload.prometheus
    rules = build_rules(E2E_NAMESPACE)

    def value_of(alert: str, **labels: str) -> float:
        result = prometheus.wait_for(without_threshold(rule(alert, rules)["expr"]), **labels)
        (match,) = [s for s in result if labels.items() <= s["metric"].items()]
        return float(match["value"][1])

    # Every rule keeps job: an earlier workload's job may still be in the rate windows.
    job = e2e_workload.job
    assert value_of("E2eAnalysisErrorRatioHigh", module="security_scan", job=job) == (
        pytest.approx(0.5)
    )
    assert value_of("E2eAIRateLimited", model="claude-sonnet", job=job) == pytest.approx(0.5)
    assert value_of("E2eAIRateLimited", model="gpt-4o", job=job) == 0
    assert value_of("E2eJobActiveTooLong", job_type="nightly", job=job) == 1
    assert 0 <= value_of("E2ePushSilent", job=job) < 900
    assert 0 < value_of("E2eAnalysisDurationHigh", module="static_analysis", job=job) <= 0.1


# -- the rules as data ---------------------------------------------------------------------


def test_every_alert_ends_with_its_threshold_and_has_annotations() -> None:
    for group in RULES["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                assert THRESHOLD.match(r["expr"]), r["expr"]
                assert r["labels"]["severity"] == "warning"
                # runbook_url only with runbook_base_url= (tests/test_slo_rules.py)
                assert set(r["annotations"]) == {"summary", "description", "dashboard_url"}
                assert r["annotations"]["dashboard_url"] == "/d/codomyrmex-analytics"


def test_thresholds_are_keywords() -> None:
    tuned = build_rules(
        "codomyrmex", error_ratio=0.2, job_active_for="3h", tokens_per_hour=5e6, window="10m"
    )
    assert rule("CodomyrmexAnalysisErrorRatioHigh", tuned)["expr"].endswith(
        ":error_ratio_rate10m > 0.2"
    )
    assert rule("CodomyrmexJobActiveTooLong", tuned)["for"] == "3h"
    assert rule("CodomyrmexAITokenBurnHigh", tuned)["expr"].endswith("* 3600 > 5000000")
    assert "rate(codomyrmex_analyses_total[10m])" in json.dumps(tuned)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"window": "5 minutes"}, "Prometheus duration"),
        ({"ai_for": ""}, "Prometheus duration"),
        # what promtool refuses: units out of order or repeated, zero, beyond int64 ns
        ({"window": "5m1h"}, "units largest first"),
        ({"window": "1s1s"}, "Prometheus duration"),
        ({"window": "0s"}, "above zero"),
        ({"duration_for": "0h0m"}, "above zero"),
        ({"window": "293y"}, "Prometheus duration"),
        ({"window": "1.5h"}, "Prometheus duration"),
        ({"window": "\u0663m"}, "Prometheus duration"),  # an Arabic-Indic 3: not a Go digit
        ({"tokens_for": "5m\n"}, "Prometheus duration"),
        ({"error_ratio": 5}, "share between 0 and 1"),
        ({"ai_error_ratio": 0}, "positive"),
        ({"tokens_per_hour": -1}, "positive"),
        ({"tokens_per_hour": math.inf}, "positive, finite number, got inf"),
        ({"push_silent_seconds": math.nan}, "positive, finite number"),
        ({"error_ratio": math.nan}, "positive, finite number"),
        # the p95 from the default buckets is at most 600 s: such an alert never fires
        ({"duration_p95_seconds": 600}, "never fire: .* largest finite bound, 600 s"),
        ({"duration_p95_seconds": 900}, "duration_p95_seconds=900 can never fire"),
        ({"duration_p95_seconds": math.inf}, "positive, finite number"),
    ],
)
def test_bad_thresholds(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_rules("codomyrmex", **kwargs)


@pytest.mark.parametrize("duration", ["1h30m", "90s", "0h5m", "1y2w3d4h5m6s7ms", "106751d"])
def test_durations_as_prometheus_reads_them(duration: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml("codomyrmex", window=duration, duration_for=duration))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert rule("CodomyrmexAnalysisDurationHigh", yaml.safe_load(path.read_text()))["for"] == (
        duration
    )


def test_the_p95_threshold_follows_the_recorded_buckets() -> None:
    below = build_rules("codomyrmex", duration_p95_seconds=599)
    assert rule("CodomyrmexAnalysisDurationHigh", below)["expr"].endswith(" > 599")
    wider = Metrics.get(CollectorRegistry(), "codomyrmex", buckets=(1, 60, 1200, math.inf))
    tuned = build_rules(wider, duration_p95_seconds=900)
    assert rule("CodomyrmexAnalysisDurationHigh", tuned)["expr"].endswith(" > 900")
    with pytest.raises(ValueError, match="largest finite bound, 1200 s"):
        build_rules(wider, duration_p95_seconds=1200)


def test_descriptions_show_small_ratios_as_set() -> None:
    tuned = build_rules(
        "codomyrmex", error_ratio=0.004, ai_error_ratio=0.025, ai_rate_limited_ratio=0.125
    )

    def shown(rules: dict[str, Any], name: str) -> str:
        description: str = rule(name, rules)["annotations"]["description"]
        return description.split(" of ")[0]

    assert shown(tuned, "CodomyrmexAnalysisErrorRatioHigh") == "More than 0.4%"
    assert shown(tuned, "CodomyrmexAIErrorSpike") == "More than 2.5%"
    assert shown(tuned, "CodomyrmexAIRateLimited") == "More than 12.5%"
    assert shown(RULES, "CodomyrmexAnalysisErrorRatioHigh") == "More than 5%"
    assert shown(RULES, "CodomyrmexAIErrorSpike") == "More than 10%"


def test_a_renamed_namespace_renames_every_rule() -> None:
    # The dashboard's uid is its own (codomyrmex-analytics by default, in any namespace).
    acme = json.dumps(build_rules("acme", dashboard_uid="acme-analytics"))
    assert "codomyrmex" not in acme.lower()
    assert acme.replace("acme", "codomyrmex").replace("Acme", "Codomyrmex") == json.dumps(RULES)


def test_deploy_rules_are_current() -> None:
    """deploy/rules/codomyrmex.rules.yml is what the code generates; regenerate it with
    `instrument rules --output deploy/rules/codomyrmex.rules.yml`."""
    current = (ROOT / "deploy" / "rules" / "codomyrmex.rules.yml").read_text()
    assert current == rules_yaml("codomyrmex")


# -- YAML ----------------------------------------------------------------------------------


def test_the_rule_file_reads_back_as_the_rules() -> None:
    assert yaml.safe_load(rules_yaml("codomyrmex")) == RULES


TRICKY = [
    "", "yes", "No", "on", "OFF", "y", "null", "~", "true", "1e5", "0x1F", "0o17", "1_000",
    "12:30", "2024-01-01", ".inf", "-.5", "+1", "- a", "a: b", "a #b", "#x", "'q'", '"d"',
    "multi\nline", "tab\there", "\u2028", "\x85", "\ufeff", "emoji \U0001f600", " lead",
    "trail ", "{", "[x]", "*a", "&a", "!tag", "%", "@", "`", "?", "|", ">", "a:", ":a",
    "sum by (le) (rate(x_bucket[5m])) > 0.5", "{{ $labels.job }}", "\\", "a'b", "10m",
    # a final newline: a pattern ending in "$" still matches there, plain YAML drops it
    "line\n", "5m\n", "10m\n\n", "\u0663m",
]  # fmt: skip


@pytest.mark.parametrize("text", TRICKY)
def test_strings_come_back_as_written(text: str) -> None:
    data = {text: [text, {"k": text}], "n": [1, 2.5, 1e-05, 1e20, True, None, -3]}
    assert yaml.safe_load(to_yaml(data)) == data


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), YAML_VALUES, max_size=5) | st.lists(YAML_VALUES, max_size=5))
def test_any_data_round_trips(data: Any) -> None:
    assert yaml.safe_load(to_yaml(data)) == data


def test_to_yaml_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        to_yaml({"a": object()})
    with pytest.raises(TypeError):
        to_yaml({1: "a"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        to_yaml("a")  # type: ignore[arg-type]


# -- CLI -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_env")
def test_cli_writes_the_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["rules"]) == 0
    assert capsys.readouterr().out == rules_yaml("codomyrmex")
    target = tmp_path / "acme.rules.yml"
    assert main(["rules", "--namespace", "acme", "--output", str(target)]) == 0
    # Only the line saying what was written where (issue 18); the text is in the file.
    assert capsys.readouterr().out.startswith("wrote the ")
    assert target.read_text() == rules_yaml("acme")
    checked = promtool("check", "rules", str(target))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.usefixtures("no_env")
def test_cli_rules_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["rules", "--output", str(tmp_path / "missing" / "x.yml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("instrument: error: cannot write ")
    assert "No such file or directory" in err and err.count("\n") == 1
    assert main(["rules", "--namespace", "0bad"]) == 2  # a usage error, as argparse's
    assert "not a valid Prometheus metric prefix" in capsys.readouterr().err


# -- the rules are a table, rendered by one function ---------------------------------------


def test_the_rules_are_one_table_rendered_in_order() -> None:
    keywords = set(inspect.signature(build_rules).parameters) - {"inst_or_metrics"}
    metrics = {spec.attr for spec in METRICS}
    assert [g["name"] for g in RULES["groups"]] == [
        f"codomyrmex.{a}" for a, _ in rules_module._GROUPS
    ]
    for group, (_, table) in zip(RULES["groups"], rules_module._GROUPS, strict=True):
        recorded: set[str] = set()
        for written, entry in zip(group["rules"], table, strict=True):
            expr = entry.expr if isinstance(entry, rules_module._Record) else entry.value
            # A rule reads metrics, or what its own group recorded before it: a later or
            # another group's recording would be read an evaluation late, or not at all.
            assert promql_keys(expr) <= metrics | recorded, written
            if isinstance(entry, rules_module._Record):
                assert ":" in entry.key and entry.key not in recorded
                recorded.add(entry.key)
                # Every recording keeps job, which the level leaves out.
                assert entry.labels[0] == "job"
                assert written["record"].startswith("_".join(entry.labels[1:]) + ":")
            else:
                assert written["alert"] == f"Codomyrmex{entry.name}"
                for keyword in (entry.threshold, entry.for_):
                    assert keyword is None or not isinstance(keyword, str) or keyword in keywords
                # Every %(name)s of the texts was filled in.
                assert "%(" not in json.dumps(written["annotations"])


def _all_names(namespace: str) -> dict[str, str]:
    """Every metric name a rule may hold, as recording rules name counters (no _total) too."""
    names = metric_names(namespace)
    found = {f"{k}{p}": f"{n}{p}" for k, n in names.items() for p in ("", "_bucket")}
    found.update({f"{k}-": n.removesuffix("_total") for k, n in names.items()})
    return found


@given(
    namespace=st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,16}", fullmatch=True),
    share=st.floats(min_value=1e-6, max_value=0.999),
    amount=st.floats(min_value=1e-3, max_value=1e12),
)
def test_any_namespace_and_threshold_land_exactly_where_they_belong(
    namespace: str, share: float, amount: float
) -> None:
    tuned = {"error_ratio": share, "tokens_per_hour": amount, "duration_p95_seconds": 1}
    theirs, ours = _all_names(namespace), _all_names("codomyrmex")
    back = {name: ours[key] for key, name in theirs.items()}
    # A whole name only (it may sit between the colons of a recorded name): "rate", "sum"
    # or "le" as a namespace must leave the PromQL around it alone.
    pattern = re.compile(
        r"(?<![A-Za-z0-9_])("
        + "|".join(re.escape(n) for n in sorted(back, key=len, reverse=True))
        + r")(?![A-Za-z0-9_])"
    )
    built, default = build_rules(namespace, **tuned), build_rules("codomyrmex", **tuned)
    assert yaml.safe_load(rules_yaml(namespace, **tuned)) == built
    prefix = "".join(p[:1].upper() + p[1:] for p in namespace.split("_") if p)
    for mine, expected in zip(
        [r for g in built["groups"] for r in g["rules"]],
        [r for g in default["groups"] for r in g["rules"]],
        strict=True,
    ):
        renamed = json.loads(pattern.sub(lambda m: back[m.group(1)], json.dumps(mine)))
        if "alert" in renamed:
            assert renamed["alert"] == prefix + expected["alert"].removeprefix("Codomyrmex")
            renamed["alert"] = expected["alert"]
        assert renamed == expected


@pytest.mark.parametrize("namespace", ["_9", "_", "le", "a__b", "Rate", "sum_by"])
def test_promtool_checks_the_rules_of_odd_namespaces(namespace: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml(namespace))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 16 rules found" in checked.stdout


# -- the headroom alert's edges ------------------------------------------------------------


def headroom_fires(tmp_path: Path, remaining: str, calls: str, at: str) -> bool:
    """Whether AIRateLimitHeadroomLow fires at ``at`` for one gpt-4o requests limit whose
    gauge reads ``remaining`` while its calls counter reads ``calls`` (promtool series)."""
    labels = {"provider": "openai", "model": "gpt-4o", "limit": "requests"}
    tests = {
        "rule_files": ["codomyrmex.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("ai_rate_limit_remaining", remaining, **labels),
                    series(
                        "ai_api_calls_total",
                        calls,
                        provider="openai",
                        model="gpt-4o",
                        status="success",
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": "CodomyrmexAIRateLimitHeadroomLow",
                        "exp_alerts": [
                            expected("CodomyrmexAIRateLimitHeadroomLow", labels, "100%")
                        ],
                    }
                ],
            }
        ],
    }
    result = run_unit_tests(tmp_path, tests)
    output = result.stdout + result.stderr
    # Anything but a plain mismatch of the expected alert is a broken test file.
    assert result.returncode == 0 or "exp:" in output, output
    return result.returncode == 0


def test_headroom_fires_for_a_limit_at_zero_all_day(tmp_path: Path) -> None:
    """Every call at the limit since the window started: 0 left of at most 0 seen is all
    used (0 / 0 gave no value, so the alert never fired)."""
    assert headroom_fires(tmp_path, "0+0x60", "0+10x60", "30m")
    # ...and the same limit with calls that stopped long ago stays quiet.
    assert not headroom_fires(tmp_path, "0+0x60", "0+10x5 50+0x55", "30m")


def test_headroom_stays_quiet_once_calls_stop(tmp_path: Path) -> None:
    """The last call of a burst saw 0 left, then the traffic stopped: the gauge keeps 0
    (nobody sees the window reset), and the alert must resolve rather than fire all day."""
    assert headroom_fires(tmp_path, "100x10 0x20", "0+10x30", "25m")  # calls go on: fires
    assert not headroom_fires(tmp_path, "100x10 0x300", "0+10x20 200+0x290", "5h")
