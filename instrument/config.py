"""Every setting of :class:`~instrument.Instrumentation`: keyword, environment variable, default.

Only :func:`instrument.configure` and the implicit default instrumentation read the
environment; explicit keywords always win. The README's configuration table is this list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ._urls import header_safe, mask_url, split_url
from .delivery import (
    PUSH_MODES,
    check_group_value,
    check_grouping_key,
    check_job,
    check_seconds,
)
from .metrics import BUILD_INFO_KEYS, check_build_info, check_namespace

__all__ = ["BUILD_INFO_VARIABLES", "SETTINGS", "Setting", "from_environment", "read_environment"]

# Each parser takes the variable's text and returns the keyword's value, or raises a
# ValueError saying what is expected. They check with the same functions Instrumentation
# uses, so a value they pass is one Instrumentation takes.


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {value!r}")


def _disabled(value: str) -> bool:
    return not _flag(value)


def _grouping_key(value: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected label=value pairs separated by commas, got {value!r}")
        pairs[key.strip()] = val.strip()
    return check_grouping_key(pairs)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip().lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value.strip().lower()

    return parse


def _instance(value: str) -> bool | str:
    try:
        return _flag(value)
    except ValueError:
        return check_group_value("instance", value)


def _seconds(keyword: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number of seconds, such as 2.5") from None
        return check_seconds(keyword, number)

    return parse


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError("expected a positive integer, such as 50")
    return number


def _pushgateway(value: str) -> str:
    split_url(value, what="pushgateway URL", example="http://127.0.0.1:9091", bare_host=True)
    return value


def _remote_write_url(value: str) -> str:
    split_url(value, what="remote write URL", example="http://127.0.0.1:9090/api/v1/write")
    return value


def _remote_write_headers(value: str) -> dict[str, str]:
    # Imported here: only remote write loads its module (and the encoders with it).
    from .delivery._remote_write import parse_headers

    return parse_headers(value)


def _token(value: str) -> str:
    return header_safe("the token", value)


def _price_table(value: str) -> str:
    # Imported here, not at the top: instrument.ai's package sits above this module (its
    # tracker reads the default instrumentation, which reads the settings); by the time a
    # variable is parsed, the package is loaded.
    from .ai._prices import load_prices

    try:
        load_prices(value)
    except TypeError as exc:  # a file that holds JSON of the wrong shape
        raise ValueError(str(exc)) from None
    return value


def _hidden(value: str) -> str:
    return "(value not shown)"


def _masked(value: str) -> str:
    return repr(mask_url(value))


@dataclass(frozen=True)
class Setting:
    keyword: str
    env: str | None
    default: str
    meaning: str
    parse: Callable[[str], Any] = str
    #: How an error shows the variable's value: a secret is never shown.
    show: Callable[[str], str] = repr


SETTINGS: tuple[Setting, ...] = (
    Setting("registry", None, "a new CollectorRegistry",
            "The registry holding every metric; pass prometheus_client.REGISTRY to share "
            "the global one. The default instrumentation (module-level decorators, "
            "configure()) keeps one of its own, shown on prometheus_client.REGISTRY."),
    Setting("push_registry", None, "the registry's own metrics",
            "What a push, a textfile write and remote write carry instead, e.g. "
            "prometheus_client.REGISTRY to include its process_* and python_gc_* families."),
    Setting("namespace", "INSTRUMENT_NAMESPACE", "codomyrmex", "Prefix of every metric name.",
            check_namespace),
    Setting("buckets", None, "see metrics.py",
            "Histogram buckets: a sequence for analysis durations, or a mapping of metric name "
            "(e.g. 'ai_call_duration_seconds') to buckets."),
    Setting("enabled", "INSTRUMENT_DISABLED", "True",
            "False (or INSTRUMENT_DISABLED=1) turns all recording and pushing off.", _disabled),
    Setting("tracing", "INSTRUMENT_TRACING", "True",
            "With opentelemetry-api and a tracer provider set, each decorated call runs in a "
            "span and its latency observations carry the trace as exemplar; False (or "
            "INSTRUMENT_TRACING=0) turns spans off.", _flag),
    Setting("pushgateway", "INSTRUMENT_PUSHGATEWAY_URL", "None",
            "Pushgateway base URL, e.g. http://127.0.0.1:9091 (user:pass@ in it becomes "
            "basic auth).", _pushgateway, _masked),
    Setting("job", "INSTRUMENT_JOB", "codomyrmex",
            "The Pushgateway job the metrics are pushed under.", check_job),
    Setting("grouping_key", "INSTRUMENT_GROUPING_KEY", "{}",
            "Extra grouping labels, e.g. {'team': 'x'}; env form team=x,region=y.", _grouping_key),
    Setting("instance", "INSTRUMENT_INSTANCE", "False",
            "Add an instance grouping label: True for host-pid, or a string of your own, so "
            "several processes do not overwrite each other's group. Remote-written series "
            "always carry one: host-pid unless a string is given.", _instance),
    Setting("delete_on_exit", "INSTRUMENT_DELETE_ON_EXIT", "False",
            "Delete this process's group from the Pushgateway at a clean exit.", _flag),
    Setting("push_mode", "INSTRUMENT_PUSH_MODE", "coalesce with a target, else off",
            "each: push after every call and wait; coalesce: a background flusher pushes at most "
            "once per push_interval; off: never push (pull mode).",
            _choice(*PUSH_MODES)),
    Setting("push_interval", "INSTRUMENT_PUSH_INTERVAL", "1.0",
            "Seconds between coalesced pushes.", _seconds("push_interval")),
    Setting("push_method", "INSTRUMENT_PUSH_METHOD", "put",
            "put replaces the whole group; post replaces only the pushed metric names.",
            _choice("put", "post")),
    Setting("push_timeout", "INSTRUMENT_PUSH_TIMEOUT", "5.0",
            "Seconds a push may take in all (connect included).", _seconds("push_timeout")),
    Setting("textfile", "INSTRUMENT_TEXTFILE", "None",
            "Also (or only) write the metrics atomically to this file for node_exporter's "
            "textfile collector."),
    Setting("basic_auth", None, "None",
            "(username, password) for the Pushgateway; env INSTRUMENT_PUSHGATEWAY_USERNAME and "
            "INSTRUMENT_PUSHGATEWAY_PASSWORD."),
    Setting("bearer_token", "INSTRUMENT_PUSHGATEWAY_TOKEN", "None",
            "Bearer token for the Pushgateway.", _token, _hidden),
    Setting("tls_verify", "INSTRUMENT_TLS_VERIFY", "True",
            "Verify the Pushgateway's (and the remote-write receiver's) TLS certificate.",
            _flag),
    Setting("ca_file", "INSTRUMENT_CA_FILE", "None",
            "CA bundle used to verify the Pushgateway (and the remote-write receiver)."),
    Setting("remote_write", "INSTRUMENT_REMOTE_WRITE_URL", "None",
            "Prometheus remote-write receiver, e.g. http://127.0.0.1:9090/api/v1/write "
            "(Mimir: /api/v1/push); user:pass@ in it becomes basic auth.",
            _remote_write_url, _masked),
    Setting("remote_write_headers", "INSTRUMENT_REMOTE_WRITE_HEADERS", "{}",
            "Headers sent with every write, e.g. {'X-Scope-OrgID': 'team-a'}; env form "
            "Name=value,Name2=value2. Values are secrets: never shown.",
            _remote_write_headers, _hidden),
    Setting("external_labels", None, "{}",
            "Labels added to every remote-written series, e.g. {'cluster': 'eu-1'}."),
    Setting("stale_on_exit", None, "True",
            "At close() and exit, end every remote-written series with a staleness marker "
            "after its final values, so instant queries stop returning a finished worker."),
    Setting("max_models", "INSTRUMENT_MAX_MODELS", "50",
            "Distinct model label values kept per provider; more are reported as 'other'.",
            _positive_int),
    Setting("attribution", None, "()",
            "Labels the AI money metrics gain for spend per tenant, user or feature, e.g. "
            "('tenant',); values come from track_ai_call(attribution=...) or call.attribute()."),
    Setting("max_attribution_values", "INSTRUMENT_MAX_ATTRIBUTION_VALUES", "100",
            "Distinct values kept per attribution label; more are reported as 'other'.",
            _positive_int),
    Setting("genai_semconv", "INSTRUMENT_GENAI_SEMCONV", "False",
            "Also record the OpenTelemetry GenAI client metrics (gen_ai_client_token_usage, "
            "gen_ai_client_operation_duration_seconds, ...), beside the codomyrmex_* ones.",
            _flag),
    Setting("prices", "INSTRUMENT_AI_PRICES", "None",
            "Per-token prices (LiteLLM's model price map format), a mapping or a JSON file path.",
            _price_table),
    Setting("build_info", None, "None",
            "The build's version, commit and branch as the build_info series (value 1), e.g. "
            "{'version': '1.4.0', 'commit': 'a1b2c3d'}; env INSTRUMENT_BUILD_VERSION, "
            "INSTRUMENT_BUILD_COMMIT and INSTRUMENT_BUILD_BRANCH."),
)  # fmt: skip


def read_environment(
    environ: Mapping[str, str] | None = None, *, only: Collection[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments for Instrumentation found in ``environ`` (default: os.environ;
    ``only`` limits it to those keywords), and one message per variable that holds a bad
    value and was left out. Messages name the variable and never show a secret."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    problems: list[str] = []
    for setting in SETTINGS:
        if setting.env is None or setting.env not in env:
            continue
        if only is not None and setting.keyword not in only:
            continue
        raw = env[setting.env]
        try:
            found[setting.keyword] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.env}={setting.show(raw)} is not valid: {exc}")
    if only is None or "basic_auth" in only:
        auth = _basic_auth(env, problems)
        if auth is not None:
            found["basic_auth"] = auth
    if only is None or "build_info" in only:
        build = _build_info(env, problems)
        if build is not None:
            found["build_info"] = build
    return found, problems


BUILD_INFO_VARIABLES = {key: f"INSTRUMENT_BUILD_{key.upper()}" for key in BUILD_INFO_KEYS}


def _build_info(env: Mapping[str, str], problems: list[str]) -> dict[str, str] | None:
    given = {key: env[name] for key, name in BUILD_INFO_VARIABLES.items() if name in env}
    if not given:
        return None
    try:
        return check_build_info(given)
    except ValueError as exc:
        names = ", ".join(BUILD_INFO_VARIABLES[key] for key in given)
        problems.append(f"{names}: {exc}")
        return None


def _basic_auth(env: Mapping[str, str], problems: list[str]) -> tuple[str, str] | None:
    names = ("INSTRUMENT_PUSHGATEWAY_USERNAME", "INSTRUMENT_PUSHGATEWAY_PASSWORD")
    user, password = (env.get(name) for name in names)
    if user is None:
        if password is not None:
            problems.append(f"{names[1]} is set but {names[0]} is not; set both, or neither")
        return None
    parts = []
    for name, value in zip(names, (user, password or ""), strict=True):
        try:
            parts.append(header_safe("the value", value, keep_spaces=True))
        except ValueError as exc:
            problems.append(f"{name} (value not shown) is not valid: {exc}")
            return None
    return parts[0], parts[1]


def from_environment(
    environ: Mapping[str, str] | None = None, *, only: Collection[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for Instrumentation read from ``environ`` (default: os.environ);
    ``only`` limits it to those keywords. A bad value raises one ValueError naming every
    bad variable."""
    found, problems = read_environment(environ, only=only)
    if problems:
        raise ValueError("; ".join(problems))
    return found
