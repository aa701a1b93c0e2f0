"""Environment variables as configure() and the implicit default read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from instrument.config import SETTINGS, from_environment

from ..support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_variable_is_parsed(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"  # read as it is parsed: it must exist
    prices.write_text('{"gpt-4o": {"input_cost_per_token": 2.5e-06}}')
    found = from_environment(
        {
            "INSTRUMENT_NAMESPACE": "acme",
            "INSTRUMENT_DISABLED": "yes",
            "INSTRUMENT_PUSHGATEWAY_URL": "http://127.0.0.1:9091",
            "INSTRUMENT_JOB": "nightly",
            "INSTRUMENT_GROUPING_KEY": "team=core, region = eu ,",
            "INSTRUMENT_INSTANCE": "true",
            "INSTRUMENT_DELETE_ON_EXIT": "1",
            "INSTRUMENT_PUSH_MODE": "each",
            "INSTRUMENT_PUSH_INTERVAL": "2.5",
            "INSTRUMENT_PUSH_METHOD": "post",
            "INSTRUMENT_PUSH_TIMEOUT": "3",
            "INSTRUMENT_TEXTFILE": "/tmp/x.prom",
            "INSTRUMENT_PUSHGATEWAY_USERNAME": "alice",
            "INSTRUMENT_PUSHGATEWAY_PASSWORD": "pw",
            "INSTRUMENT_TLS_VERIFY": "off",
            "INSTRUMENT_CA_FILE": "/etc/ca.pem",
            "INSTRUMENT_MAX_MODELS": "20",
            "INSTRUMENT_AI_PRICES": str(prices),
            "UNRELATED": "x",
        }
    )
    assert found == {
        "namespace": "acme",
        "enabled": False,
        "pushgateway": "http://127.0.0.1:9091",
        "job": "nightly",
        "grouping_key": {"team": "core", "region": "eu"},
        "instance": True,
        "delete_on_exit": True,
        "push_mode": "each",
        "push_interval": 2.5,
        "push_method": "post",
        "push_timeout": 3.0,
        "textfile": "/tmp/x.prom",
        "basic_auth": ("alice", "pw"),
        "tls_verify": False,
        "ca_file": "/etc/ca.pem",
        "max_models": 20,
        "prices": str(prices),
    }


def test_instance_takes_a_name_and_disabled_takes_zero() -> None:
    assert from_environment({"INSTRUMENT_INSTANCE": "worker-3"}) == {"instance": "worker-3"}
    assert from_environment({"INSTRUMENT_DISABLED": "0"}) == {"enabled": True}
    assert from_environment({}) == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INSTRUMENT_DISABLED", "maybe"),
        ("INSTRUMENT_GROUPING_KEY", "team"),
        ("INSTRUMENT_GROUPING_KEY", "=x"),
        ("INSTRUMENT_MAX_MODELS", "many"),
        ("INSTRUMENT_PUSH_TIMEOUT", "soon"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{name}={value!r} is not valid"):
        from_environment({name: value})


def test_the_readme_documents_every_setting() -> None:
    for setting in SETTINGS:
        assert f"`{setting.keyword}`" in README, setting.keyword
        if setting.env:
            assert f"`{setting.env}`" in README, setting.env
