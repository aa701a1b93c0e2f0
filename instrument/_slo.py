"""The rules of declared objectives: multi-window, multi-burn-rate alerts on an error
budget (Google SRE workbook, ch. 5), in the shape Sloth generates, and the promtool unit
tests that prove each objective's alerts.

Per objective, one rule group: the error ratio over each alert window and the objective's
window (``slo:sli_error:ratio_rate5m`` ...), the events in each long window (the
minimum-traffic guard), the objective, its budget and what remains of it, then the page
and ticket alerts that read them. Every recording keeps ``job`` and carries Sloth's labels
(``sloth_id``, ``sloth_service``, ``sloth_slo``) beside ours (``objective``, ``slo_kind``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._promql import duration_ms, increase, number, quoted, rate, ratio, series, sum_by
from .objectives import Coverage, Objective, le_value

__all__ = ["ALERT_WINDOWS", "BURNS", "objective_group", "objective_tests", "recorded_series"]

#: The windows the alerts read, shortest first.
ALERT_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: Per severity: (burn rate, long window, short window), either pair fires.
BURNS: dict[str, tuple[tuple[float, str, str], ...]] = {
    "page": ((14.4, "1h", "5m"), (6, "6h", "30m")),
    "ticket": ((3, "1d", "2h"), (1, "3d", "6h")),
}
_ALERTS = {"page": "SLOBurnRatePage", "ticket": "SLOBurnRateTicket"}
_BY = ("job",)
# The statuses that count: a cancelled call is neither good nor bad.
_COUNTED = 'status=~"success|error"'
_ERROR = 'status="error"'

Links = Callable[[str], dict[str, str]]
# Annotations name the job and the objective through the alert's labels: a name is text the
# user chose, and as template text a "{{" in it would be run by Prometheus.
_JOB = "{{ $labels.job }}"
_NAME = "{{ $labels.objective }}"


def _matchers(coverage: Coverage) -> tuple[str, ...]:
    """The label matchers that select one decorator's series."""
    return tuple(f"{name}={quoted(value)}" for name, value in coverage.labels)


def _union(parts: Sequence[str]) -> str:
    # `or` joins the covered series: each decorator's label set is its own, and a
    # decorator declared twice with the same labels is counted once.
    return " or ".join(parts)


def _per_window(
    names: Mapping[str, str], covered: Sequence[Coverage], pick: Callable[[Coverage], str]
) -> Callable[[str, Callable[[str, str], str]], str]:
    def over(window: str, fn: Callable[[str, str], str]) -> str:
        return sum_by(_union([fn(pick(c), window) for c in covered]), _BY)

    return over


def _total(names: Mapping[str, str], objective: Objective, coverage: Coverage) -> str:
    if objective.kind == "success":
        return series(names[coverage.counter], *_matchers(coverage), _COUNTED)
    return series(names[coverage.histogram] + "_count", *_matchers(coverage))


def error_ratio(
    names: Mapping[str, str], objective: Objective, covered: Sequence[Coverage], window: str
) -> str:
    """The share of bad events among those counted over ``window``, per job."""
    total = _per_window(names, covered, lambda c: _total(names, objective, c))(window, rate)
    if objective.kind == "success":
        bad = _per_window(
            names, covered, lambda c: series(names[c.counter], *_matchers(c), _ERROR)
        )(window, rate)
        return ratio(bad, total, _BY)
    le = f"le={quoted(le_value(objective.threshold or 0))}"
    good = _per_window(
        names, covered, lambda c: series(names[c.histogram] + "_bucket", *_matchers(c), le)
    )(window, rate)
    return f"({total} - {good}) / {total}"


def _labels(namespace: str, objective: Objective) -> dict[str, str]:
    return {
        "objective": objective.name,
        "slo_kind": objective.kind,
        "sloth_id": f"{namespace}-{objective.name}",
        "sloth_service": namespace,
        "sloth_slo": objective.name,
    }


def _mine(record: str, namespace: str, objective: Objective) -> str:
    return series(record, f"sloth_id={quoted(f'{namespace}-{objective.name}')}")


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


def _days(window: str) -> float:
    return duration_ms("window", window) / 86_400_000


def _condition(namespace: str, objective: Objective, burn: float, long: str, short: str) -> str:
    threshold = f"({number(burn)} * {number(objective.budget)})"
    return (
        f"({_mine(f'slo:sli_error:ratio_rate{long}', namespace, objective)} > {threshold} "
        f"and {_mine(f'slo:sli_error:ratio_rate{short}', namespace, objective)} > {threshold} "
        f"and {_mine(f'slo:sli_events:increase{long}', namespace, objective)} "
        f">= {objective.min_events})"
    )


def _literal(text: str) -> str:
    """``text`` as an alert label Prometheus expands to itself: labels are templates, so a
    name holding ``{{`` is written as a template printing a string constant."""
    return f"{{{{ {quoted(text)} }}}}" if "{{" in text else text


def _what(objective: Objective) -> str:
    if objective.kind == "success":
        return "succeed"
    return f"finish within {number(objective.threshold or 0)} s"


def _alert(
    prefix: str,
    namespace: str,
    objective: Objective,
    severity: str,
    for_: str,
    links: Links,
) -> dict[str, Any]:
    name = prefix + _ALERTS[severity]
    (fast, fast_long, fast_short), (slow, slow_long, slow_short) = BURNS[severity]
    expr = " or ".join(
        _condition(namespace, objective, burn, long, short) for burn, long, short in BURNS[severity]
    )
    days = _days(objective.window)
    summary = (
        f"{_JOB}: objective {_NAME} burns its error budget "
        f"{number(slow)}x or more as fast as it allows"
    )
    description = (
        f"{_percent(objective.target)} of the events of objective {_NAME} must "
        f"{_what(objective)} over {objective.window}. In {_JOB} the error "
        f"ratio over {fast_long} and {fast_short} is above {number(fast)}x the budget of "
        f"{_percent(objective.budget)}, or over {slow_long} and {slow_short} above "
        f"{number(slow)}x (with at least {objective.min_events} events): at {number(fast)}x "
        f"the {objective.window} budget lasts {days / fast:.3g} days. What is left: "
        f'slo:period_error_budget_remaining:ratio{{objective="{_NAME}"}}.'
    )
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {
            "severity": severity,
            "objective": _literal(objective.name),
            "slo_kind": objective.kind,
        },
        "annotations": {"summary": summary, "description": description, **links(name)},
    }


def objective_group(
    namespace: str,
    prefix: str,
    names: Mapping[str, str],
    objective: Objective,
    covered: Sequence[Coverage],
    *,
    page_for: str,
    ticket_for: str,
    links: Links,
) -> dict[str, Any]:
    """The rule group of one objective; ``links`` gives an alert's runbook and dashboard
    annotations by its name."""
    labels = _labels(namespace, objective)
    rules: list[dict[str, Any]] = []

    def record(name: str, expr: str) -> None:
        rules.append({"record": name, "expr": expr, "labels": labels})

    for window in (*ALERT_WINDOWS, objective.window):
        record(f"slo:sli_error:ratio_rate{window}", error_ratio(names, objective, covered, window))
    long_windows = sorted({long for burns in BURNS.values() for _, long, _ in burns}, key=_days)
    for window in long_windows:
        events = _per_window(names, covered, lambda c: _total(names, objective, c))
        record(f"slo:sli_events:increase{window}", events(window, increase))
    budget = number(objective.budget)
    record("slo:objective:ratio", f"vector({number(objective.target)})")
    record("slo:error_budget:ratio", f"vector({budget})")
    record("slo:time_period:days", f"vector({number(_days(objective.window))})")

    def mine(record: str) -> str:
        return _mine(record, namespace, objective)

    record("slo:current_burn_rate:ratio", f"{mine('slo:sli_error:ratio_rate5m')} / {budget}")
    record(
        "slo:period_burn_rate:ratio",
        f"{mine(f'slo:sli_error:ratio_rate{objective.window}')} / {budget}",
    )
    record("slo:period_error_budget_remaining:ratio", f"1 - {mine('slo:period_burn_rate:ratio')}")
    rules.append(_alert(prefix, namespace, objective, "page", page_for, links))
    rules.append(_alert(prefix, namespace, objective, "ticket", ticket_for, links))
    return {"name": f"{namespace}.slo.{objective.name}", "rules": rules}


def recorded_series(namespace: str) -> dict[str, str]:
    """What the dashboard reads of these rules, by its key there, kept to ``namespace``."""
    own = f"{{sloth_service={quoted(namespace)}}}"
    return {
        "slo:budget_remaining": "slo:period_error_budget_remaining:ratio" + own,
        "slo:budget": "slo:error_budget:ratio" + own,
        "slo:error_ratio_5m": "slo:sli_error:ratio_rate5m" + own,
        "slo:error_ratio_1h": "slo:sli_error:ratio_rate1h" + own,
        "slo:events_1h": "slo:sli_events:increase1h" + own,
    }


# -- promtool unit tests ----------------------------------------------------------------------

#: Counted events per minute in the generated tests.
_PER_MINUTE = 1000
_TEST_JOB = "slo-test"


def _minutes(duration: str) -> int:
    return math.ceil(duration_ms("for", duration) / 60_000)


def _input(
    names: Mapping[str, str], objective: Objective, coverage: Coverage, bad: float, good: float
) -> list[dict[str, str]]:
    """Series for one scenario: ``bad`` and ``good`` events per minute, or (with ``good``
    negative) a single jump of ``bad`` bad events after ten quiet minutes."""
    labels = (f"job={quoted(_TEST_JOB)}", *_matchers(coverage))

    def values(per_minute: float) -> str:
        if good < 0:
            return f"0x10 {number(per_minute)}x600"
        return f"0+{number(per_minute)}x600"

    good_rate = max(good, 0)
    if objective.kind == "success":
        counter = names[coverage.counter]
        return [
            {"series": series(counter, *labels, _ERROR), "values": values(bad)},
            {"series": series(counter, *labels, 'status="success"'), "values": values(good_rate)},
        ]
    histogram = names[coverage.histogram]
    le = f"le={quoted(le_value(objective.threshold or 0))}"
    return [
        {"series": series(histogram + "_count", *labels), "values": values(bad + good_rate)},
        {"series": series(histogram + "_bucket", *labels, le), "values": values(good_rate)},
    ]


def _expected(namespace: str, objective: Objective, alert: Mapping[str, Any]) -> dict[str, Any]:
    annotations = {
        key: text.replace(_JOB, _TEST_JOB).replace(_NAME, objective.name)
        for key, text in alert["annotations"].items()
    }
    labels = {"job": _TEST_JOB, **alert["labels"], **_labels(namespace, objective)}
    return {"exp_labels": labels, "exp_annotations": annotations}


def _cases(
    namespace: str,
    names: Mapping[str, str],
    objective: Objective,
    coverage: Coverage,
    page: Mapping[str, Any],
    ticket: Mapping[str, Any],
    at: tuple[int, int],
) -> list[dict[str, Any]]:
    """The four scenarios of one objective; ``at`` is when its page and ticket must fire."""
    page_at, ticket_at = at
    budget = objective.budget

    def case(name: str, bad: float, good: float, *checks: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": f"{objective.name}: {name}",
            "interval": "1m",
            "input_series": _input(names, objective, coverage, bad, good),
            "alert_rule_test": list(checks),
        }

    def check(minute: int, rule: Mapping[str, Any], fires: bool) -> dict[str, Any]:
        return {
            "eval_time": f"{minute}m",
            "alertname": rule["alert"],
            "exp_alerts": [_expected(namespace, objective, rule)] if fires else [],
        }

    def burn(times: float, *checks: dict[str, Any]) -> dict[str, Any]:
        # An error ratio cannot pass 100 %: a large budget burns at most that fast.
        bad = _PER_MINUTE * min(times * budget, 1.0)
        return case(f"{number(times)}x the budget", bad, _PER_MINUTE - bad, *checks)

    sparse = objective.min_events // 2 if objective.min_events > 1 else 0
    quiet = (check(ticket_at, page, False), check(ticket_at, ticket, False))
    return [
        burn(15, check(1, page, False), check(page_at, page, True)),
        burn(4, check(ticket_at, ticket, True), check(ticket_at, page, False)),
        # Each slower pair on its own: 10x pages only through 6h/30m, 2x opens a ticket
        # only through 3d/6h.
        burn(10, check(page_at, page, True)),
        burn(2, check(ticket_at, ticket, True), check(ticket_at, page, False)),
        burn(0.5, *quiet),
        case(f"below {objective.min_events} events", max(sparse, 0), -1, *quiet),
    ]


def objective_tests(
    rule_file: str,
    namespace: str,
    names: Mapping[str, str],
    groups: Sequence[Mapping[str, Any]],
    entries: Sequence[tuple[Objective, Sequence[Coverage]]],
    *,
    page_for: str,
    ticket_for: str,
) -> dict[str, Any]:
    """A promtool unit-test file (``promtool test rules``) for the objectives' alerts in
    ``groups``: per objective a 15x burn pages within its ``for``, a 4x burn opens a ticket
    but does not page, 10x and 2x burns fire through the slower pairs, a 0.5x burn stays
    quiet, and traffic below the minimum stays quiet."""
    alerts = {
        (rule["alert"], group["name"].partition(".slo.")[2]): rule
        for group in groups
        if ".slo." in group["name"]
        for rule in group["rules"]
        if "alert" in rule
    }
    page_at = _minutes(page_for) + 2
    at = (page_at, max(_minutes(ticket_for), page_at) + 2)
    tests: list[dict[str, Any]] = []
    for objective, covered in entries:
        page, ticket = (
            next(
                rule
                for (alert, name), rule in alerts.items()
                if name == objective.name and alert.endswith(_ALERTS[severity])
            )
            for severity in ("page", "ticket")
        )
        tests += _cases(namespace, names, objective, covered[0], page, ticket, at)
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}
