"""The generated dashboard: every query against a real Prometheus fed by real calls, and its
structure (panel types, units, descriptions, variables, one source of metric names)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from instrument import Instrumentation, dashboard
from instrument._slo import recorded_series
from instrument.cli import main
from instrument.dashboard import SCHEMA_VERSION, build_dashboard, dashboard_json, panel_queries
from instrument.metrics import METRICS, metric_names
from instrument.rules import to_yaml

from .conftest import E2E_NAMESPACE, E2EWorkload
from .servers import require_binary
from .support import ROOT, promql_keys

DASHBOARD = build_dashboard(E2E_NAMESPACE)
QUERIES = panel_queries(DASHBOARD)
UNITS = {"s", "ops", "percentunit", "short", "currencyUSD"}
PANEL_TYPES = {"timeseries", "stat", "piechart", "gauge"}
ALL = {"module": ".*", "analysis_type": ".*", "provider": ".*", "model": ".*"}


def substitute(expr: str, **variables: str) -> str:
    """What Grafana sends to Prometheus: its variables filled in ("All" is ".*")."""
    values = {"__rate_interval": "1m", "__range": "5m", **ALL, **variables}
    filled = re.sub(
        r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr
    )  # KeyError: an unknown variable
    assert "$" not in filled
    return filled


def panels(dashboard: dict[str, Any] = DASHBOARD) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in panels() if p["title"] == title]
    return found


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def by_labels(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
        for sample in result
    }


def run(workload: E2EWorkload, title: str, ref: int = 0, **variables: str) -> list[dict[str, Any]]:
    return workload.prometheus.query(substitute(panel(title)["targets"][ref]["expr"], **variables))


# -- every query, for real -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("title", "expr"), QUERIES, ids=[f"{i:02d}-{title}" for i, (title, _) in enumerate(QUERIES)]
)
def test_every_query_returns_data_from_prometheus(
    e2e_workload: E2EWorkload, title: str, expr: str
) -> None:
    result = e2e_workload.prometheus.query(substitute(expr))
    numbers = [v for v in values(result) if not math.isnan(v)]
    assert numbers, f"{title}: {substitute(expr)} returned {result}"


@pytest.mark.integration
@pytest.mark.parametrize(
    "variable", [v for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
)
def test_variables_list_the_recorded_label_values(
    e2e_workload: E2EWorkload, variable: dict[str, Any]
) -> None:
    expected = {
        "module": {"static_analysis", "security_scan", "nightly"},
        "analysis_type": {"codebase", "dependencies", "full_scan"},
        "provider": {"openai", "anthropic"},
        "model": {"gpt-4o", "claude-sonnet"},
    }[variable["name"]]
    selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
    assert label == variable["name"]
    result = e2e_workload.prometheus.query(substitute(f"count by ({label}) ({selector})"))
    assert expected <= {sample["metric"][label] for sample in result}


@pytest.mark.integration
def test_error_ratios_match_the_workload(e2e_workload: E2EWorkload) -> None:
    analyses = by_labels(
        run(e2e_workload, "Analysis error ratio by module"), "module", "analysis_type"
    )
    # static_analysis: 2 successes and 1 SyntaxError per round; security_scan: 1 and 1.
    assert analyses[("static_analysis", "codebase")] == pytest.approx(1 / 3)
    assert analyses[("security_scan", "dependencies")] == pytest.approx(0.5)
    ai = by_labels(run(e2e_workload, "AI error ratio by model"), "provider", "model")
    assert ai[("anthropic", "claude-sonnet")] == pytest.approx(0.5)
    assert ai[("openai", "gpt-4o")] == 0  # 0, not "No data"
    (errors,) = run(e2e_workload, "AI errors by type and HTTP status")
    assert errors["metric"] == {
        "provider": "anthropic",
        "error_type": "RateLimitError",
        "http_status": "429",
    }


@pytest.mark.integration
def test_gauges_show_their_values(e2e_workload: E2EWorkload) -> None:
    quality = by_labels(run(e2e_workload, "Code quality score"), "project", "module")
    assert quality == e2e_workload.quality
    active = by_labels(run(e2e_workload, "Active jobs by job type"), "job_type")
    assert active[("nightly",)] == 1  # still running
    assert active[("static_analysis",)] == 0
    assert values(run(e2e_workload, "Active jobs")) >= [1.0]


@pytest.mark.integration
def test_ai_panels_split_by_what_was_called(e2e_workload: E2EWorkload) -> None:
    tokens = by_labels(run(e2e_workload, "AI tokens per second"), "token_type")
    assert set(tokens) == {("input",), ("output",)}
    assert tokens[("input",)] > tokens[("output",)] > 0
    details = by_labels(run(e2e_workload, "AI token details per second"), "detail")
    assert {("cache_read",), ("reasoning",)} <= set(details)
    ttft = by_labels(run(e2e_workload, "Time to first token p95"), "provider", "model")
    assert list(ttft) == [("openai", "gpt-4o")]  # only the streamed calls
    share = by_labels(run(e2e_workload, "AI calls by provider"), "provider")
    assert set(share) == {("openai",), ("anthropic",)}
    cost = by_labels(run(e2e_workload, "AI cost by model"), "provider", "model")
    assert list(cost) == [("openai", "gpt-4o")] and cost[("openai", "gpt-4o")] > 0
    assert (
        values(run(e2e_workload, "Unpriced AI calls"))
        and values(run(e2e_workload, "Unpriced AI calls"))[0] > 0
    )  # the anthropic successes have no price


@pytest.mark.integration
def test_usage_coverage_of_the_workload(e2e_workload: E2EWorkload) -> None:
    # Every call that ran reported its usage; the rate-limited errors are left out.
    coverage = by_labels(run(e2e_workload, "AI usage coverage by model"), "provider", "model")
    assert coverage == {("openai", "gpt-4o"): 1.0, ("anthropic", "claude-sonnet"): 1.0}


def test_usage_coverage_as_prometheus_evaluates_it(tmp_path: Path) -> None:
    """Coverage is calls with usage over the calls that ran: 12 successes and 4 cancelled
    calls a minute, 4 of them without usage, and 8 errors that do not count, give 0.75; a
    model whose every call had usage shows 1, not "No data"."""
    expr = substitute(panel("AI usage coverage by model")["targets"][0]["expr"])
    calls = f"{E2E_NAMESPACE}_ai_api_calls_total"
    missing = f"{E2E_NAMESPACE}_ai_usage_missing_total"

    def series(metric: str, per_minute: int, **labels: str) -> dict[str, str]:
        text = ", ".join(f'{k}="{v}"' for k, v in {"job": "app", **labels}.items())
        return {"series": f"{metric}{{{text}}}", "values": f"0+{per_minute}x10"}

    a = {"provider": "openai", "model": "gpt-4o"}
    b = {"provider": "anthropic", "model": "claude"}
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series(calls, 12, status="success", **a),
                    series(calls, 4, status="cancelled", **a),
                    series(calls, 8, status="error", **a),
                    series(missing, 4, **a),
                    series(calls, 5, status="success", **b),
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{model="gpt-4o", provider="openai"}', "value": 0.75},
                            {"labels": '{model="claude", provider="anthropic"}', "value": 1},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "coverage.test.yml"
    path.write_text(to_yaml(tests))
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_durations_are_quantiles_of_fast_calls(e2e_workload: E2EWorkload) -> None:
    quantiles = [
        values(run(e2e_workload, "Analysis duration p50 / p95 / p99", ref)) for ref in range(3)
    ]
    for (value,) in quantiles:
        assert 0 < value <= 0.1  # every call took well under the first bucket, 0.1 s
    assert quantiles[0] <= quantiles[1] <= quantiles[2]
    mean = by_labels(run(e2e_workload, "Mean analysis duration"), "module", "analysis_type")
    assert 0 < mean[("static_analysis", "codebase")] < 0.1


@pytest.mark.integration
def test_a_picked_module_filters_the_queries(e2e_workload: E2EWorkload) -> None:
    picked = run(e2e_workload, "Analyses per second", module="security_scan")
    assert {sample["metric"]["module"] for sample in picked} == {"security_scan"}
    several = run(e2e_workload, "Analyses per second", module="security_scan|static_analysis")
    assert {s["metric"]["module"] for s in several} == {"security_scan", "static_analysis"}


@pytest.mark.integration
def test_delivery_panels(e2e_workload: E2EWorkload) -> None:
    pushes, failures = (run(e2e_workload, "Pushgateway pushes per second", ref) for ref in (0, 1))
    assert values(pushes)[0] > 0
    assert values(failures) == [0]
    (since,) = values(run(e2e_workload, "Since last successful push"))
    assert 0 <= since < 3600


# -- structure -----------------------------------------------------------------------------


def test_current_panel_types_only() -> None:
    kinds = {p["type"] for p in panels()}
    assert kinds <= PANEL_TYPES
    assert {"timeseries", "stat", "piechart", "gauge"} <= kinds
    assert '"type": "graph"' not in json.dumps(DASHBOARD)
    assert DASHBOARD["schemaVersion"] == SCHEMA_VERSION == 41


@pytest.mark.parametrize("p", panels(), ids=lambda p: p["title"])
def test_each_panel_has_unit_description_and_data_source(p: dict[str, Any]) -> None:
    assert p["fieldConfig"]["defaults"]["unit"] in UNITS
    assert p["description"] and "\n" not in p["description"] and p["description"].endswith(".")
    assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    refs = [t["refId"] for t in p["targets"]]
    assert refs and len(set(refs)) == len(refs)
    for target in p["targets"]:
        assert target["datasource"] == p["datasource"]
        assert target["instant"] is (p["type"] != "timeseries")


def test_titles_are_unique() -> None:
    titles = [p["title"] for p in panels()]
    assert len(titles) == len(set(titles))


def test_layout_fits_and_does_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_variables() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("module", "analysis_type", "provider", "model"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["query"]["query"] == v["definition"]
    # Multi-value variables are only ever matched with =~.
    used = " ".join(expr for _, expr in QUERIES) + " ".join(
        v.get("definition", "") for v in variables.values()
    )
    assert re.findall(r'(\w+)(=~?)"\$(\w+)"', used)
    for label, op, var in re.findall(r'(\w+)(=~?)"\$(\w+)"', used):
        assert (label, op) == (var, "=~")


def test_preselected_data_source() -> None:
    chosen = build_dashboard(E2E_NAMESPACE, datasource_uid="prom-b")
    (source,) = [v for v in chosen["templating"]["list"] if v["name"] == "datasource"]
    assert source["current"]["value"] == "prom-b"
    assert chosen["panels"] == DASHBOARD["panels"]  # panels follow the variable


def test_quantiles_are_over_rates_of_summed_buckets() -> None:
    quantiles = [expr for _, expr in QUERIES if "histogram_quantile" in expr]
    assert len(quantiles) == 5
    pattern = re.compile(
        r"histogram_quantile\(0\.\d+, sum by \(le(, \w+)*\) "
        r"\(rate\(\w+_bucket\{[^}]*\}\[\$__rate_interval\]\)\)\)"
    )
    for expr in quantiles:
        assert pattern.fullmatch(expr), expr


def test_no_rate_on_gauges_and_no_thresholds_in_panels() -> None:
    gauges = [spec.name(E2E_NAMESPACE) for spec in METRICS if spec.kind == "gauge"]
    counters = [spec.name(E2E_NAMESPACE) for spec in METRICS if spec.kind == "counter"]
    # The one comparison allowed is a filter, not a threshold: it drops the 0 that a
    # process which never pushed exports (see test_since_last_push_ignores_never_pushed).
    never_pushed = f"{E2E_NAMESPACE}_last_push_success_timestamp_seconds > 0"
    for title, raw in QUERIES:
        expr = raw.replace(never_pushed, "") if title == "Since last successful push" else raw
        for gauge in gauges:
            assert f"rate({gauge}" not in expr and f"increase({gauge}" not in expr, title
        for counter in counters:
            # a counter is never shown raw: always rate() or increase()
            for match in re.finditer(re.escape(counter), expr):
                assert expr[: match.start()].endswith(("rate(", "increase(")), title
        assert not re.search(r"\s(>|<|>=|<=|==|!=)\s", expr), f"{title}: {expr}"


def test_since_last_push_ignores_never_pushed() -> None:
    assert panel("Since last successful push")["targets"][0]["expr"] == (
        f"time() - max({E2E_NAMESPACE}_last_push_success_timestamp_seconds > 0)"
    )
    assert panel("Since last successful push")["fieldConfig"]["defaults"]["noValue"] == "never"


def test_since_last_push_as_prometheus_evaluates_it(tmp_path: Path) -> None:
    """An app in pull mode exports 0 (no push ever): "never", not the 1970 epoch. With a
    process that pushed at 2m, 10m later the panel shows 8m."""
    expr = panel("Since last successful push")["targets"][0]["expr"]
    metric = f"{E2E_NAMESPACE}_last_push_success_timestamp_seconds"
    pulled = {"series": f'{metric}{{job="app"}}', "values": "0x20"}
    pushed = {"series": f'{metric}{{job="batch"}}', "values": "0 0 120x18"}

    def case(series: list[dict[str, str]], samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": samples}],
        }

    tests = {
        "rule_files": [],
        "tests": [
            case([pulled], []),
            case([pulled, pushed], [{"labels": "{}", "value": 480}]),
        ],
    }
    path = tmp_path / "since_push.test.yml"
    path.write_text(to_yaml(tests))
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ratios_show_zero_when_nothing_failed() -> None:
    # The objectives' budget reads a recording, which is never empty where traffic was.
    ratios = [
        p
        for p in panels()
        if p["fieldConfig"]["defaults"]["unit"] == "percentunit"
        and p["title"] != "Error budget remaining"
    ]
    assert len(ratios) == 5  # three error ratios, the usage coverage, the truncation rate
    for p in ratios:
        expr = p["targets"][0]["expr"]
        assert " or vector(0))" in expr or " * 0) / " in expr, p["title"]


def test_every_metric_is_on_the_dashboard() -> None:
    text = " ".join(expr for _, expr in QUERIES)
    missing = [s.suffix for s in METRICS if s.name(E2E_NAMESPACE) not in text]
    assert missing == []


def test_a_renamed_namespace_renames_every_query() -> None:
    acme = build_dashboard("acme")
    acme_queries = [expr for _, expr in panel_queries(acme)]
    default = [expr for _, expr in panel_queries(build_dashboard("codomyrmex"))]
    assert all("codomyrmex" not in expr for expr in acme_queries)
    # The objectives' recordings are kept to the namespace by their sloth_service label.
    assert [
        expr.replace("acme_", "codomyrmex_").replace('"acme"', '"codomyrmex"')
        for expr in acme_queries
    ] == default
    definitions = [v.get("definition", "") for v in acme["templating"]["list"]]
    assert all("codomyrmex" not in d for d in definitions)
    assert any("acme_analyses_total" in d for d in definitions)


def test_built_from_an_instrumentation_its_metrics_or_a_namespace() -> None:
    inst = Instrumentation(registry=CollectorRegistry(), namespace="shop")
    try:
        assert build_dashboard(inst) == build_dashboard(inst.metrics) == build_dashboard("shop")
    finally:
        inst.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"uid": "x" * 41}, "1 to 40"),
        ({"uid": "has space"}, "not a Grafana dashboard uid"),
        ({"title": " "}, "title"),
        ({"datasource_uid": ""}, "datasource_uid"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_dashboard("codomyrmex", **kwargs)


def test_bad_source() -> None:
    with pytest.raises(ValueError, match="not a valid Prometheus metric prefix"):
        build_dashboard("9lives")
    with pytest.raises(TypeError, match="Instrumentation, a Metrics or a namespace"):
        build_dashboard(42)  # type: ignore[arg-type]


# -- the generated file and the CLI --------------------------------------------------------


def test_deploy_dashboard_is_current() -> None:
    """deploy/dashboard.json is what the code generates; regenerate it with
    `instrument dashboard --output deploy/dashboard.json`."""
    current = (ROOT / "deploy" / "dashboard.json").read_text()
    assert current == dashboard_json(build_dashboard("codomyrmex"))


@pytest.mark.usefixtures("no_env")
def test_cli_writes_the_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["dashboard"]) == 0
    assert json.loads(capsys.readouterr().out) == build_dashboard("codomyrmex")
    target = tmp_path / "board.json"
    assert main(["dashboard", "--namespace", "acme", "--title", "Acme", "-o", str(target)]) == 0
    # Only the line saying what was written where (issue 18); the text is in the file.
    assert capsys.readouterr().out.startswith("wrote the ")
    assert json.loads(target.read_text()) == build_dashboard("acme", title="Acme")


def test_cli_namespace_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INSTRUMENT_NAMESPACE", "fromenv")
    assert main(["dashboard"]) == 0
    assert "fromenv_analyses_total" in capsys.readouterr().out


@pytest.mark.usefixtures("no_env")
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["dashboard", "--output", str(tmp_path)]) == 1  # a directory
    err = capsys.readouterr().err
    assert err.startswith(f"instrument: error: cannot write {tmp_path}: ")
    assert err.count("\n") == 1
    assert main(["dashboard", "--namespace", "bad-name"]) == 2  # a usage error, as argparse's
    assert "not a valid Prometheus metric prefix" in capsys.readouterr().err


# -- the panels are a table, rendered by one function ----------------------------------------


def test_the_panels_are_one_table_rendered_in_order() -> None:
    rendered = iter(DASHBOARD["panels"])
    for row_title, entries in dashboard._ROWS:
        if row_title is not None:
            row = next(rendered)
            assert (row["type"], row["title"]) == ("row", row_title)
        for entry in entries:
            shown = next(rendered)
            assert (shown["type"], shown["title"], shown["description"]) == (
                entry.kind,
                entry.title,
                entry.description,
            )
            assert shown["fieldConfig"]["defaults"]["unit"] == entry.unit
            assert (shown["gridPos"]["w"], shown["gridPos"]["h"]) == (entry.width, entry.height)
            assert [t["legendFormat"] for t in shown["targets"]] == [
                q.legend for q in entry.queries
            ]
            # Every key a query names is a metric of METRICS, or a series the objectives'
            # rules record: a typo fails here, not in Grafana.
            known = {spec.attr for spec in METRICS} | set(recorded_series(E2E_NAMESPACE))
            for query in entry.queries:
                assert promql_keys(query.expr) <= known, entry.title
    assert next(rendered, None) is None


def _scribble(value: Any) -> None:
    """Change every dict and list inside ``value``, as a caller editing the model might."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scribble(item)
        value["scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled")


def test_a_model_edited_by_its_caller_leaves_the_next_one_as_it_was() -> None:
    first = dashboard_json(build_dashboard("first"))
    _scribble(build_dashboard("first", datasource_uid="x"))
    assert dashboard_json(build_dashboard("first")) == first


def _names_of(namespace: str) -> dict[str, str]:
    """Every series name a dashboard of ``namespace`` may query, histogram parts included."""
    names = metric_names(namespace)
    return {
        **{
            f"{key}{part}": f"{name}{part}"
            for key, name in names.items()
            for part in ("", "_bucket", "_sum", "_count")
        },
        **recorded_series(namespace),
    }


@given(namespace=st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True))
def test_any_namespace_renames_exactly_the_metric_names(namespace: str) -> None:
    # Whole names, not a prefix: "rate", "sum", "le" or "codomyrmex_x" as a namespace must
    # not touch the PromQL around them.
    theirs, ours = _names_of(namespace), _names_of("codomyrmex")
    pattern = re.compile(
        r"(?<![A-Za-z0-9_:])("
        + "|".join(re.escape(n) for n in sorted(theirs.values(), key=len, reverse=True))
        + r")(?![A-Za-z0-9_:])"
    )
    back = {name: ours[key] for key, name in theirs.items()}
    renamed = [
        (title, pattern.sub(lambda m: back[m.group(1)], expr))
        for title, expr in panel_queries(build_dashboard(namespace))
    ]
    assert renamed == panel_queries(build_dashboard("codomyrmex"))
