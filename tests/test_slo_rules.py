"""The objectives' rules: the shape Sloth generates, promtool's checks and the unit tests
``instrument rules --tests`` writes, a real Prometheus evaluating them over a real
workload; and what every alert now carries (severity, runbook, dashboard), the finished-job
rule of PushSilent, and the AI spend budget."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instrument import Objective
from instrument.objectives import Coverage
from instrument.rules import build_rules, rules_tests_yaml, rules_yaml, to_yaml

from .conftest import E2E_NAMESPACE, E2EWorkload, e2e_objectives
from .servers import require_binary

ANALYSES = Coverage("analysis", (("module", "static_analysis"), ("analysis_type", "codebase")))
GPT = Coverage("ai", (("provider", "openai"), ("model", "gpt-4o")))
AVAILABLE = Objective("analysis-availability", success=0.995)
FAST = Objective("llm-latency", latency=(2.56, 0.99), window="28d")
ENTRIES = [(AVAILABLE, (ANALYSES, GPT)), (FAST, (GPT,))]
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
RUNBOOKS = "https://runbooks.example.test/instrument"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def group(rules: dict[str, Any], name: str) -> list[dict[str, Any]]:
    (found,) = [g["rules"] for g in rules["groups"] if g["name"] == name]
    return found


# -- the shape ------------------------------------------------------------------------------


def test_each_objective_records_sloths_series_then_alerts() -> None:
    rules = build_rules("codomyrmex", objectives=ENTRIES)
    for objective in (AVAILABLE, FAST):
        written = group(rules, f"codomyrmex.slo.{objective.name}")
        records = [r["record"] for r in written if "record" in r]
        assert records == [
            *(f"slo:sli_error:ratio_rate{w}" for w in (*WINDOWS, objective.window)),
            *(f"slo:sli_events:increase{w}" for w in ("1h", "6h", "1d", "3d")),
            "slo:objective:ratio",
            "slo:error_budget:ratio",
            "slo:time_period:days",
            "slo:current_burn_rate:ratio",
            "slo:period_burn_rate:ratio",
            "slo:period_error_budget_remaining:ratio",
        ]
        for r in written:
            if "record" in r:
                assert r["labels"] == {
                    "objective": objective.name,
                    "slo_kind": objective.kind,
                    "sloth_id": f"codomyrmex-{objective.name}",
                    "sloth_service": "codomyrmex",
                    "sloth_slo": objective.name,
                }
                if r["record"].startswith("slo:sli_"):  # every SLI keeps job
                    assert "sum by (job) (" in r["expr"], r["expr"]
        assert [(r["alert"], r["labels"]) for r in written if "alert" in r] == [
            (f"CodomyrmexSLOBurnRate{s.title()}",
             {"severity": s, "objective": objective.name, "slo_kind": objective.kind})
            for s in ("page", "ticket")
        ]  # fmt: skip


def test_the_burn_rates_and_windows_are_the_workbooks() -> None:
    written = group(build_rules("codomyrmex", objectives=ENTRIES), "codomyrmex.slo.llm-latency")
    page, ticket = (r["expr"] for r in written if "alert" in r)
    shape = (
        r"\(slo:sli_error:ratio_rate{l}\{{sloth_id=\"codomyrmex-llm-latency\"\}} > \({b} \* 0\.01\)"
        r" and slo:sli_error:ratio_rate{s}\{{[^}}]+\}} > \({b} \* 0\.01\)"
        r" and slo:sli_events:increase{l}\{{[^}}]+\}} >= 10\)"
    )
    pair = "{} or {}"
    assert re.fullmatch(
        pair.format(shape.format(l="1h", s="5m", b="14.4"), shape.format(l="6h", s="30m", b="6")),
        page,
    ), page
    assert re.fullmatch(
        pair.format(shape.format(l="1d", s="2h", b="3"), shape.format(l="3d", s="6h", b="1")),
        ticket,
    ), ticket


def test_a_latency_sli_counts_the_bucket_of_its_threshold_and_skips_cancelled_successes() -> None:
    written = build_rules("codomyrmex", objectives=ENTRIES)
    latency = group(written, "codomyrmex.slo.llm-latency")[0]["expr"]
    assert (
        'codomyrmex_ai_call_duration_seconds_bucket{provider="openai", model="gpt-4o", le="2.56"}'
        in latency
    )
    assert "codomyrmex_ai_call_duration_seconds_count" in latency
    success = group(written, "codomyrmex.slo.analysis-availability")[0]["expr"]
    # Cancelled calls are neither good nor bad: only success and error are counted.
    assert success.count('status=~"success|error"') == 4  # two coverages, in both uses
    assert 'status="error"' in success and "cancelled" not in success


def test_names_follow_the_namespace() -> None:
    acme = build_rules("acme", objectives=ENTRIES, dashboard_uid="acme-analytics")
    text = to_yaml(acme)
    assert "codomyrmex" not in text.lower()
    assert {r["alert"] for r in alerts(acme)} >= {"AcmeSLOBurnRatePage", "AcmeSLOBurnRateTicket"}
    assert "acme.slo.llm-latency" in [g["name"] for g in acme["groups"]]


def test_the_fors_are_keywords_and_checked() -> None:
    rules = build_rules("codomyrmex", objectives=ENTRIES, slo_page_for="30s", slo_ticket_for="2h")
    fors = {(r["alert"], r["for"]) for r in alerts(rules) if "slo_kind" in r["labels"]}
    assert fors == {("CodomyrmexSLOBurnRatePage", "30s"), ("CodomyrmexSLOBurnRateTicket", "2h")}
    with pytest.raises(ValueError, match="slo_page_for must be a Prometheus duration"):
        build_rules("codomyrmex", objectives=ENTRIES, slo_page_for="soon")


def test_a_threshold_the_sources_histogram_cannot_measure_is_refused() -> None:
    latency_on_analyses = [(Objective("x", latency=(2.56, 0.99)), (ANALYSES,))]
    with pytest.raises(ValueError, match=r"not a bucket boundary of analysis_duration_seconds"):
        build_rules("codomyrmex", objectives=latency_on_analyses)
    with pytest.raises(ValueError, match="two different objectives are named 'x'"):
        build_rules("codomyrmex", objectives=[
            (Objective("x", success=0.99), (GPT,)), (Objective("x", success=0.9), (GPT,))
        ])  # fmt: skip
    with pytest.raises(TypeError, match="Objective, coverage"):
        build_rules("codomyrmex", objectives=[(AVAILABLE, ("module",))])  # type: ignore[list-item]


def test_an_instrumentation_brings_its_own_objectives() -> None:
    from prometheus_client import CollectorRegistry

    from instrument import Instrumentation

    inst = Instrumentation(registry=CollectorRegistry(), push_mode="off")
    assert [g["name"] for g in build_rules(inst)["groups"]] == [
        "codomyrmex.analyses", "codomyrmex.ai", "codomyrmex.delivery"
    ]  # fmt: skip
    inst.track_ai_call("openai", "gpt-4o", objective=FAST)
    assert [g["name"] for g in build_rules(inst)["groups"]][-1] == "codomyrmex.slo.llm-latency"


# -- every alert: severity, summary, description, runbook, dashboard -------------------------


def test_every_alert_old_and_new_links_its_runbook_and_dashboard() -> None:
    rules = build_rules(
        "codomyrmex",
        objectives=ENTRIES,
        monthly_budget_usd=500,
        runbook_base_url=RUNBOOKS + "/",
        grafana_url="https://grafana.example.test/",
    )
    written = alerts(rules)
    assert (
        len(written) == 8 + 1 + 4
    )  # the area alerts (AIRateLimitHeadroomLow the 8th), spend, objectives
    for alert in written:
        assert alert["labels"]["severity"] in {"warning", "page", "ticket"}
        assert set(alert["annotations"]) == {
            "summary", "description", "runbook_url", "dashboard_url"
        }  # fmt: skip
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}/{alert['alert']}"
        assert alert["annotations"]["dashboard_url"] == (
            "https://grafana.example.test/d/codomyrmex-analytics"
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runbook_base_url": "https://bob:hunter2@wiki.example.test"}, "holds credentials"),
        ({"grafana_url": "https://bob:hunter2@grafana.example.test"}, "holds credentials"),
        ({"runbook_base_url": "ftp://wiki.example.test"}, "not an http"),
        ({"dashboard_uid": "no spaces"}, "not a Grafana dashboard uid"),
        ({"monthly_budget_usd": 0}, "monthly_budget_usd must be a positive"),
        ({"monthly_budget_usd": math.nan}, "monthly_budget_usd must be a positive"),
    ],
)
def test_bad_links_and_budgets_are_refused_without_their_secrets(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_rules("codomyrmex", **kwargs)
    assert "hunter2" not in str(info.value)


# -- promtool: the generated tests, and what they catch --------------------------------------

MODULE = """
from instrument import Objective, monitored_analysis, track_ai_call

available = Objective("analysis-availability", success=0.995)
fast_llm = Objective("llm-latency", latency=(2.56, 0.99), window="28d")
sparse = Objective("nightly-availability", success=0.9, min_events=3, window="7d")


@monitored_analysis("static_analysis", "codebase", objective=available)
def analyze(path):
    return path


@track_ai_call("openai", "gpt-4o", objective=[available, fast_llm])
def ask(prompt):
    return prompt
"""

SECOND = """
from instrument import Instrumentation, Objective

inst = Instrumentation(push_mode="off")
inst.monitored_analysis("nightly", "full_scan", objective=Objective(
    "nightly-availability", success=0.9, min_events=3, window="7d"))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myjobs.py").write_text(MODULE)
    (tmp_path / "nightly.py").write_text(SECOND)
    (tmp_path / "out").mkdir()
    return tmp_path


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "instrument", "rules", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
    )


def test_the_command_imports_the_modules_and_writes_tests_promtool_passes(project: Path) -> None:
    done = run_cli(
        project,
        "--import", "myjobs", "--import", "nightly",
        "--output", "out/rules.yml", "--tests", "rules.test.yml",
        "--runbook-base-url", RUNBOOKS, "--monthly-budget-usd", "500",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checked = promtool("check", "rules", "out/rules.yml", cwd=project)
    # 16 rules, the spend alert, 3 objectives of 20 rules each
    assert checked.returncode == 0 and "SUCCESS: 77 rules found" in checked.stdout, checked
    tested = promtool("test", "rules", "rules.test.yml", cwd=project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = re.findall(r"name: '?([^'\n]+)", (project / "rules.test.yml").read_text())
    for objective in ("analysis-availability", "llm-latency", "nightly-availability"):
        assert [n for n in names if n.startswith(objective)] == [
            f"{objective}: 15x the budget",
            f"{objective}: 4x the budget",
            f"{objective}: 10x the budget",
            f"{objective}: 2x the budget",
            f"{objective}: 0.5x the budget",
            f"{objective}: below {3 if objective.startswith('nightly') else 10} events",
        ]


@pytest.mark.parametrize(
    ("right", "wrong"),
    [
        (">= 10)", ">= 1)"),  # no minimum-traffic guard: one burst of failures would page
        ("(14.4 * 0.005)", "(1.44 * 0.005)"),  # a page at a tenth of the burn
        ("(6 * 0.005)", "(60 * 0.005)"),  # the slow page pair never fires
        ("(1 * 0.005)", "(10 * 0.005)"),  # the slow ticket pair never opens
        ("(3 * 0.005)", "(0.3 * 0.005)"),  # a ticket at a tenth of the burn
    ],
)
def test_the_generated_tests_catch_a_wrong_rule(project: Path, wrong: str, right: str) -> None:
    entries = [(AVAILABLE, (ANALYSES,))]
    rules = rules_yaml("codomyrmex", objectives=entries)
    assert right in rules
    (project / "rules.yml").write_text(rules.replace(right, wrong))
    (project / "t.yml").write_text(rules_tests_yaml("codomyrmex", "rules.yml", objectives=entries))
    tested = promtool("test", "rules", "t.yml", cwd=project)
    assert tested.returncode == 1, tested.stdout
    assert "FAILED" in tested.stdout + tested.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tests", "t.yml"), "--tests reads the rules from a file"),
        (("--tests", "t.yml", "-o", "r.yml"), "none is declared"),
        (("--import", "no_such_module", "-o", "r.yml"), "cannot import no_such_module"),
        (("--runbook-base-url", "https://u:pw@x.test", "-o", "r.yml"), "holds credentials"),
    ],
)
def test_command_errors_are_one_line(project: Path, args: tuple[str, ...], message: str) -> None:
    done = run_cli(project, *args)
    assert done.returncode in (1, 2)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pw@" not in done.stderr


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and "\x00" not in s)
    | st.sampled_from(["{{ $value }}", "{{ .Foo", 'a"b\\c {{', "x\ny{{", "}}", "{{{"]),
    success=st.floats(min_value=0.84, max_value=0.9999),
    window=st.sampled_from(["7d", "14d", "28d", "30d"]),
    min_events=st.integers(min_value=1, max_value=50),
)
def test_any_objective_passes_promtool(
    tmp_path: Path, name: str, success: float, window: str, min_events: int
) -> None:
    try:
        objective = Objective(name, success=success, window=window, min_events=min_events)
    except ValueError:
        return  # a name no label can hold (lone surrogates): refused when made
    entries = [(objective, (Coverage("ai", (("provider", 'we"ird\\'), ("model", name))),))]
    (tmp_path / "r.yml").write_text(rules_yaml("codomyrmex", objectives=entries))
    (tmp_path / "t.yml").write_text(rules_tests_yaml("codomyrmex", "r.yml", objectives=entries))
    checked = promtool("check", "rules", "r.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# -- promtool: PushSilent and the spend budget -----------------------------------------------


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"codomyrmex_{name}{{{inner}}}", "values": values}


def _run(tmp_path: Path, rules: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    (tmp_path / "r.yml").write_text(to_yaml(rules))
    (tmp_path / "t.yml").write_text(
        to_yaml({"rule_files": ["r.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    tested = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    return tested.stdout


def _fired(rules: dict[str, Any], name: str, labels: dict[str, str], value: str) -> dict[str, Any]:
    (alert,) = [a for a in alerts(rules) if a["alert"] == name]
    annotations = {
        key: re.sub(r"\{\{ \$value[^}]*\}\}", value,
                    re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), text))
        for key, text in alert["annotations"].items()
    }  # fmt: skip
    return {"exp_labels": {**labels, "severity": "warning"}, "exp_annotations": annotations}


def test_push_silent_skips_finished_and_deleted_groups(tmp_path: Path) -> None:
    rules = build_rules("codomyrmex")
    last = "last_push_success_timestamp_seconds"
    stopped = "0+60x5 300+0x115"  # the last success at 5m, then nothing
    inputs = [
        # stuck: a job still in flight in its last push
        _series(last, stopped, job="stuck"),
        _series("active_jobs", "1+0x120", job="stuck", job_type="nightly"),
        # finished: its last push says no job is in flight
        _series(last, stopped, job="finished"),
        _series("active_jobs", "1+0x4 0+0x115", job="finished", job_type="nightly"),
        _series("active_jobs", "0+0x120", job="finished", job_type="web"),
        # deleted: the group (every series of it) is gone after 6m
        _series(last, "0+60x5 300", job="deleted"),
        _series("active_jobs", "1 1 1 1 1 1 1", job="deleted", job_type="nightly"),
    ]
    test = {
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "CodomyrmexPushSilent",
                "exp_alerts": [_fired(rules, "CodomyrmexPushSilent", {"job": "stuck"}, "25m 0s")],
            }
        ],
    }
    _run(tmp_path, rules, [test])


def test_the_spend_budget_projects_the_last_day_over_30_days(tmp_path: Path) -> None:
    rules = build_rules("codomyrmex", monthly_budget_usd=500, spend_for="10m")
    (spend,) = [a for a in alerts(rules) if a["alert"] == "CodomyrmexAISpendOverBudget"]
    assert spend["expr"] == "sum(increase(codomyrmex_ai_cost_usd_total[1d])) * 30 > 500"
    assert "500 USD" in spend["annotations"]["description"]
    # 0.02 USD a minute is 28.80 a day, 864.00 over 30 days; 0.01 a minute stays under 500.
    over = _series("ai_cost_usd_total", "0+0.02x1500", provider="openai", model="gpt-4o")
    under = _series("ai_cost_usd_total", "0+0.01x1500", provider="openai", model="gpt-4o")
    fired = _fired(rules, "CodomyrmexAISpendOverBudget", {}, "864.00")
    assert "864.00 USD over 30 days" in fired["exp_annotations"]["description"]
    check = {"eval_time": "1450m", "alertname": "CodomyrmexAISpendOverBudget"}
    _run(tmp_path, rules, [
        {"interval": "1m", "input_series": [over], "alert_rule_test": [
            {**check, "exp_alerts": [fired]},
            {"eval_time": "5m", "alertname": check["alertname"], "exp_alerts": []},
        ]},
        {"interval": "1m", "input_series": [under], "alert_rule_test": [
            {**check, "exp_alerts": []}
        ]},
    ])  # fmt: skip


# -- a real Prometheus, the real workload ------------------------------------------------------


@pytest.mark.integration
def test_every_objective_rule_returns_data_from_prometheus(e2e_workload: E2EWorkload) -> None:
    prometheus = e2e_workload.prometheus
    rules = build_rules(E2E_NAMESPACE, objectives=e2e_objectives())
    job = f'job="{e2e_workload.job}"'
    for name in ("e2e-availability", "e2e-latency"):
        for rule in group(rules, f"{E2E_NAMESPACE}.slo.{name}"):
            if "record" not in rule:
                continue
            # The constant recordings have no job; the rest are per job.
            where = "" if rule["expr"].startswith("vector(") else f", {job}"
            selector = f'{rule["record"]}{{objective="{name}"{where}}}'
            result = prometheus.wait_for(selector)
            values = [float(s["value"][1]) for s in result]
            assert values and not any(math.isnan(v) for v in values), (selector, result)

    def value(expr: str) -> float:
        (sample,) = prometheus.wait_for(expr)
        return float(sample["value"][1])

    # One static analysis of three fails each round; every gpt-4o call is fast.
    assert value(f'slo:sli_error:ratio_rate5m{{objective="e2e-availability", {job}}}') == (
        pytest.approx(1 / 3)
    )
    assert value(f'slo:sli_error:ratio_rate5m{{objective="e2e-latency", {job}}}') == 0
    assert value(
        f'slo:period_error_budget_remaining:ratio{{objective="e2e-availability", {job}}}'
    ) == pytest.approx(1 - (1 / 3) / 0.01)
    assert 0 < value(f'slo:sli_events:increase1h{{objective="e2e-availability", {job}}}') < 10
    # Below the minimum traffic: not even pending.
    assert prometheus.query('ALERTS{alertname=~"E2eSLO.*"}') == []
