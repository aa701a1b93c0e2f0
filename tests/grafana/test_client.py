"""GrafanaClient against a local server that answers as Grafana's HTTP API documents
(``fake_grafana``, the stand-in of tests/fake_grafana.py). Retry waits are recorded instead
of slept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import instrument
from instrument import grafana
from instrument.cli import main
from instrument.dashboard import build_dashboard
from instrument.grafana import (
    DashboardResult,
    GrafanaAuthError,
    GrafanaBadRequestError,
    GrafanaClient,
    GrafanaConflictError,
    GrafanaError,
    GrafanaIntegration,
    GrafanaNotFoundError,
    GrafanaRetryLaterError,
    GrafanaServerError,
    GrafanaStatusError,
    GrafanaTransportError,
    GrafanaUnavailableError,
)

from ..fake_grafana import TOKEN, VIEWER_TOKEN, FakeGrafana, Seen
from ..servers import closed_port

NGINX_502 = """<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx/1.22.1</center>
</body>
</html>
"""


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits the client asked for, recorded instead of slept."""
    waited: list[float] = []

    async def record(delay: float) -> None:
        waited.append(delay)

    monkeypatch.setattr(grafana.client, "_sleep", record)
    return waited


def client(fake_grafana: FakeGrafana, **kwargs: Any) -> GrafanaClient:
    kwargs.setdefault("token", TOKEN)
    return GrafanaClient(kwargs.pop("url", fake_grafana.url), **kwargs)


def dashboard(
    title: str = "Codomyrmex Analytics", uid: str = "codomyrmex-analytics"
) -> dict[str, Any]:
    return {"uid": uid, "title": title, "panels": [], "schemaVersion": 41}


def echo_page(before: str) -> Callable[[Seen], str]:
    """A proxy's error page that shows the request's Authorization header after ``before``."""
    return lambda seen: f"{before}Authorization: {seen.headers.get('Authorization')}\n</pre>"


# -- health, requests and headers ----------------------------------------------------------


async def test_health_returns_grafanas_answer(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, token=None) as g:
        health = await g.health()
    assert health == {"commit": "0a1b2c3", "database": "ok", "version": "11.3.0"}
    assert "Authorization" not in fake_grafana.requests[0].headers


async def test_upsert_posts_what_grafana_reads(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, org_id=2) as g:
        result = await g.upsert_dashboard({**dashboard(), "id": 77}, message="first version")
    assert result == DashboardResult(
        uid="codomyrmex-analytics",
        url=f"{fake_grafana.url}/d/codomyrmex-analytics/codomyrmex-analytics",
        version=1,
    )
    (post,) = fake_grafana.seen("POST", "/api/dashboards/db")
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    assert post.headers["X-Grafana-Org-Id"] == "2"
    assert post.headers["Content-Type"].startswith("application/json")
    assert post.body["dashboard"]["title"] == "Codomyrmex Analytics"
    # Matched by uid: another server's numeric id is dropped.
    assert post.body["dashboard"]["id"] is None
    assert post.body["overwrite"] is True
    assert post.body["message"] == "first version"
    # A new dashboard goes to the root: no folderUid sent.
    assert "folderUid" not in post.body
    assert fake_grafana.dashboards["codomyrmex-analytics"]["message"] == "first version"


async def test_upsert_again_bumps_the_version(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        first = await g.upsert_dashboard(dashboard())
        second = await g.upsert_dashboard(dashboard())
    assert (first.version, second.version) == (1, 2)
    assert "message" not in fake_grafana.seen("POST", "/api/dashboards/db")[1].body


async def test_update_keeps_the_dashboard_in_its_folder(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        folder = await g.ensure_folder("Analytics", uid="analytics")
        await g.upsert_dashboard(dashboard(), folder_uid=folder["uid"])
        await g.upsert_dashboard(dashboard())  # no folder given: Grafana would move it to root
    last = fake_grafana.seen("POST", "/api/dashboards/db")[-1]
    assert last.body["folderUid"] == "analytics"
    assert fake_grafana.dashboards["codomyrmex-analytics"]["folderUid"] == "analytics"


async def test_empty_folder_uid_moves_to_the_root(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        await g.ensure_folder("Analytics", uid="analytics")
        await g.upsert_dashboard(dashboard(), folder_uid="analytics")
        await g.upsert_dashboard(dashboard(), folder_uid="")
    assert fake_grafana.seen("POST", "/api/dashboards/db")[-1].body["folderUid"] == ""
    assert fake_grafana.dashboards["codomyrmex-analytics"]["folderUid"] == ""


async def test_basic_auth_from_arguments_or_url(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, token=None, basic_auth=("admin", "admin-pass")) as g:
        await g.upsert_dashboard(dashboard())
    with_userinfo = fake_grafana.url.replace("http://", "http://admin:admin-pass@")
    async with GrafanaClient(with_userinfo) as g:
        result = await g.upsert_dashboard(dashboard())
        assert "admin-pass" not in repr(g)
    assert result.version == 2
    assert result.url.startswith(fake_grafana.url)  # the credentials are not part of the URL


async def test_get_search_and_delete(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        await g.upsert_dashboard({**dashboard(), "tags": ["codomyrmex", "llm"]})
        await g.upsert_dashboard(dashboard("Other board", "other"))
        got = await g.get_dashboard("codomyrmex-analytics")
        hits = await g.search(query="codomyrmex", tag=["codomyrmex", "llm"])
        await g.delete_dashboard("codomyrmex-analytics")
        with pytest.raises(GrafanaNotFoundError) as missing:
            await g.get_dashboard("codomyrmex-analytics")
    assert got["dashboard"]["title"] == "Codomyrmex Analytics"
    assert got["meta"]["version"] == 1
    assert [hit["uid"] for hit in hits] == ["codomyrmex-analytics"]
    (search,) = fake_grafana.seen("GET", "/api/search")
    assert search.query == [
        ("type", "dash-db"),
        ("query", "codomyrmex"),
        ("tag", "codomyrmex"),
        ("tag", "llm"),
    ]
    assert missing.value.http_status == 404
    assert "check the uid" in str(missing.value)
    assert list(fake_grafana.dashboards) == ["other"]


async def test_delete_of_a_missing_dashboard_is_not_found(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaNotFoundError, match="no such dashboard 'gone'"):
            await g.delete_dashboard("gone")


async def test_ensure_folder_creates_once(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        first = await g.ensure_folder("Codomyrmex")
        second = await g.ensure_folder("Codomyrmex")
        by_uid = await g.ensure_folder("Pinned", uid="pinned")
        by_uid_again = await g.ensure_folder("Pinned", uid="pinned")
    assert first == second
    assert by_uid == by_uid_again
    assert by_uid["uid"] == "pinned"
    posts = fake_grafana.seen("POST", "/api/folders")
    assert [p.body for p in posts] == [
        {"title": "Codomyrmex"},
        {"title": "Pinned", "uid": "pinned"},
    ]


async def test_ensure_folder_created_meanwhile(fake_grafana: FakeGrafana) -> None:
    """409 on create (someone else made it between our look and our create): fetch it."""

    original = fake_grafana.route

    def create_first(r: Seen) -> web.Response:
        if r.method == "POST" and r.path == "/api/folders":
            original(r)  # the other writer wins the race
            return web.json_response({"message": "folder already exists"}, status=409)
        return original(r)

    fake_grafana.route = create_first  # type: ignore[method-assign]
    async with client(fake_grafana) as g:
        folder = await g.ensure_folder("Raced", uid="raced")
    assert folder["title"] == "Raced"
    assert len(fake_grafana.seen("GET", "/api/folders/raced")) == 2


async def test_find_datasource(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        default = await g.find_datasource()
        by_name = await g.find_datasource(name="Prom A")
        by_uid = await g.find_datasource(uid="prom-a")
        loki = await g.find_datasource(type="loki")
        with pytest.raises(GrafanaNotFoundError, match="of type 'loki', not 'prometheus'"):
            await g.find_datasource(uid="loki-1")
        with pytest.raises(GrafanaNotFoundError, match="no tempo data source"):
            await g.find_datasource(type="tempo")
        with pytest.raises(GrafanaNotFoundError):
            await g.find_datasource(name="Nope")
    assert default["uid"] == "prom-b"  # the default one of its type
    assert by_name["uid"] == by_uid["uid"] == "prom-a"
    assert loki["uid"] == "loki-1"
    assert fake_grafana.seen("GET", "/api/datasources/name/Prom A")


# -- answers that are errors ---------------------------------------------------------------


async def test_version_mismatch_is_a_conflict_and_not_retried(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        await g.upsert_dashboard(dashboard())
        await g.upsert_dashboard(dashboard())
        with pytest.raises(GrafanaConflictError) as caught:
            await g.upsert_dashboard({**dashboard(), "version": 1}, overwrite=False)
    assert caught.value.status == "version-mismatch"
    assert caught.value.http_status == 412
    assert "overwrite=True" in str(caught.value)
    assert len(fake_grafana.seen("POST", "/api/dashboards/db")) == 3
    assert fake_grafana.seen("POST", "/api/dashboards/db")[-1].body["overwrite"] is False


async def test_name_exists_is_a_conflict(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        await g.upsert_dashboard(dashboard("Shared title", "one"))
        with pytest.raises(GrafanaConflictError) as caught:
            await g.upsert_dashboard(dashboard("Shared title", "two"), overwrite=False)
    assert caught.value.status == "name-exists"
    assert "another title or uid" in str(caught.value)


async def test_409_from_newer_grafana_is_a_conflict(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script(
        "POST",
        "/api/dashboards/db",
        409,
        {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"},
    )
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaConflictError) as caught:
            await g.upsert_dashboard(dashboard())
    assert (caught.value.http_status, caught.value.status) == (409, "version-mismatch")
    assert "The dashboard has been changed by someone else" in str(caught.value)


async def test_plugin_dashboard_conflict(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script(
        "POST",
        "/api/dashboards/db",
        412,
        {"message": "The dashboard belongs to plugin x", "status": "plugin-dashboard"},
    )
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaConflictError, match="a plugin owns that dashboard"):
            await g.upsert_dashboard(dashboard())


@pytest.mark.parametrize("status", [400, 422])
async def test_invalid_request_is_a_bad_request(fake_grafana: FakeGrafana, status: int) -> None:
    fake_grafana.script(
        "POST", "/api/dashboards/db", status, {"message": "bad request data", "status": "error"}
    )
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaBadRequestError) as caught:
            await g.upsert_dashboard(dashboard())
    assert caught.value.http_status == status
    assert "bad request data" in str(caught.value)
    assert len(fake_grafana.requests) == 2  # the folder lookup, then one POST: never retried


async def test_unknown_folder_is_a_bad_request(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaBadRequestError, match="folder not found"):
            await g.upsert_dashboard(dashboard(), folder_uid="nope")


async def test_wrong_token_is_an_auth_error_without_the_token(
    fake_grafana: FakeGrafana, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="instrument")
    wrong = "glsa_WrongToken_5566778899"
    async with GrafanaClient(fake_grafana.url, token=wrong) as g:
        with pytest.raises(GrafanaAuthError) as caught:
            await g.upsert_dashboard(dashboard())
        shown = repr(g)
    assert caught.value.http_status == 401
    assert "service account token" in str(caught.value)
    assert "(Authorization: ***)" in str(caught.value)  # the stand-in echoed the header
    assert wrong not in str(caught.value) + repr(caught.value) + shown + caplog.text
    assert len(fake_grafana.requests) == 1  # 401 is final: never retried


async def test_missing_token_says_so(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, token=None) as g:
        with pytest.raises(GrafanaAuthError, match="no credentials were sent"):
            await g.search()


async def test_token_echoed_by_a_proxy_is_scrubbed(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("GET", "/api/search", 401, {"message": f"token {TOKEN} is expired"})
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaAuthError) as caught:
            await g.search()
    assert TOKEN not in str(caught.value)
    assert "token *** is expired" in str(caught.value)


@pytest.mark.parametrize("from_url", [False, True], ids=["basic_auth", "in-url"])
async def test_basic_auth_echoed_by_a_proxy_is_scrubbed(
    fake_grafana: FakeGrafana, from_url: bool
) -> None:
    """The echoed header holds base64(user:password), not the password verbatim."""
    password = "Wr0ngPassw0rd"
    encoded = base64.b64encode(f"admin:{password}".encode()).decode()
    if from_url:
        g = GrafanaClient(fake_grafana.url.replace("http://", f"http://admin:{password}@"))
    else:
        g = client(fake_grafana, token=None, basic_auth=("admin", password))
    async with g:
        with pytest.raises(GrafanaAuthError) as caught:
            await g.search()
    (request,) = fake_grafana.requests
    assert request.headers["Authorization"] == f"Basic {encoded}"
    text = str(caught.value)
    assert "(401: invalid API key (Authorization: ***))" in text
    for secret in (password, encoded, encoded[:12], "Basic "):
        assert secret not in text


# "Authorization: Bearer " is 22 characters: each token starts 10 characters before the
# point where the quoted page is cut (200 characters of an error, 80 of a 200 answer).
@pytest.mark.parametrize(
    ("status", "before", "error"),
    [
        # a proxy's page dumping the request headers
        (502, "<html><body><pre>request headers:\n".ljust(168), GrafanaServerError),
        (401, "x" * 167 + " ", GrafanaAuthError),
        # a 200 that is not JSON
        (200, "y" * 47 + " ", GrafanaError),
    ],
)
async def test_a_long_page_is_scrubbed_before_it_is_cut(
    fake_grafana: FakeGrafana, status: int, before: str, error: type[GrafanaError]
) -> None:
    fake_grafana.script("GET", "/api/health", status, echo_page(before))
    async with client(fake_grafana, retries=0) as g:
        with pytest.raises(error) as caught:
            await g.health()
    text = str(caught.value)
    assert "Authorization: ***" in text
    assert TOKEN[:8] not in text and "Bearer" not in text


async def test_an_html_error_page_is_one_line(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("GET", "/api/health", 502, NGINX_502)
    fake_grafana.script("GET", "/api/health", 504, "<p>Gateway\r\n\tTime-out &amp; more</p>\n" * 40)
    async with client(fake_grafana, retries=0) as g:
        with pytest.raises(GrafanaServerError) as bad_gateway:
            await g.health()
        with pytest.raises(GrafanaServerError) as timed_out:
            await g.health()
    text = str(bad_gateway.value)
    assert "with 502: 502 Bad Gateway nginx/1.22.1 after 1 attempt:" in text
    assert "the proxy in front of Grafana at" in text
    assert "Grafana behind it is down, unreachable or too slow" in text
    long = str(timed_out.value)
    assert "with 504: Gateway Time-out & more Gateway Time-out & more " in long
    assert "... after 1 attempt:" in long
    for message in (text, long):
        assert message.isprintable() and "<" not in message and "  " not in message


async def test_viewer_token_is_forbidden(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, token=VIEWER_TOKEN) as g:
        with pytest.raises(GrafanaAuthError) as caught:
            await g.upsert_dashboard(dashboard())
    assert caught.value.http_status == 403
    assert "Editor" in str(caught.value)
    assert VIEWER_TOKEN not in str(caught.value)
    assert "(Authorization: ***)" in str(caught.value)


async def test_not_json_says_check_the_url(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("GET", "/api/health", "html")  # e.g. a login page behind a proxy
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaError, match="is not JSON") as caught:
            await g.health()
    assert "is this URL a Grafana server" in str(caught.value)


async def test_a_sub_path_that_is_not_grafana_is_not_found(fake_grafana: FakeGrafana) -> None:
    async with GrafanaClient(fake_grafana.url + "/not-grafana/", token=TOKEN) as g:
        with pytest.raises(GrafanaNotFoundError, match="sub-path"):
            await g.get_dashboard("x")
    assert fake_grafana.requests[0].path == "/not-grafana/api/dashboards/uid/x"


# -- retries -------------------------------------------------------------------------------


async def test_5xx_then_success_is_retried_with_growing_backoff(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script("GET", "/api/health", 502, {"message": "Bad Gateway"})
    fake_grafana.script("GET", "/api/health", 500, {"message": "Internal Server Error"})
    async with client(fake_grafana) as g:
        health = await g.health()
    assert health["database"] == "ok"
    assert len(fake_grafana.seen("GET", "/api/health")) == 3
    assert len(sleeps) == 2
    # base 0.5 s doubling, jittered down to half at most
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


async def test_5xx_on_upsert_then_success(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("POST", "/api/dashboards/db", 500, {"message": "database is locked"})
    async with client(fake_grafana) as g:
        result = await g.upsert_dashboard(dashboard())
    assert result.version == 1
    assert len(fake_grafana.seen("POST", "/api/dashboards/db")) == 2


async def test_5xx_that_persists_is_a_server_error(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script("GET", "/api/health", 503, {"commit": "x", "database": "failing"}, times=4)
    async with client(fake_grafana, retries=3) as g:
        with pytest.raises(GrafanaServerError) as caught:
            await g.health()
    assert caught.value.http_status == 503
    assert "after 4 attempts" in str(caught.value)
    assert len(sleeps) == 3


async def test_5xx_on_a_create_that_may_have_happened_is_not_retried(
    fake_grafana: FakeGrafana,
) -> None:
    fake_grafana.script("POST", "/api/dashboards/db", 500, {"message": "timeout writing"})
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaServerError, match="after 1 attempt;"):
            await g.upsert_dashboard(dashboard(), overwrite=False)
    assert len(fake_grafana.seen("POST", "/api/dashboards/db")) == 1


async def test_503_on_a_create_is_retried(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("POST", "/api/dashboards/db", 503, {"message": "Service Unavailable"})
    async with client(fake_grafana) as g:
        result = await g.upsert_dashboard(dashboard(), overwrite=False)
    assert result.version == 1


async def test_429_waits_as_retry_after_says(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script(
        "GET", "/api/search", 429, {"message": "Too many requests"}, {"Retry-After": "7"}
    )
    http_date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fake_grafana.script(
        "GET", "/api/search", 429, {"message": "Too many requests"}, {"Retry-After": http_date}
    )
    async with client(fake_grafana) as g:
        assert await g.search() == []
    assert sleeps[0] == 7.0
    assert 25 <= sleeps[1] <= 30
    assert len(fake_grafana.seen("GET", "/api/search")) == 3


async def test_429_on_a_create_is_retried(fake_grafana: FakeGrafana, sleeps: list[float]) -> None:
    fake_grafana.script(
        "POST", "/api/dashboards/db", 429, {"message": "slow down"}, {"Retry-After": "2"}
    )
    async with client(fake_grafana) as g:
        result = await g.upsert_dashboard(dashboard(), overwrite=False)
    assert result.version == 1
    assert sleeps == [2.0]


async def test_429_that_persists_is_unavailable(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script(
        "GET", "/api/search", 429, {"message": "Too many requests"}, {"Retry-After": "1"}, times=3
    )
    async with client(fake_grafana, retries=2) as g:
        with pytest.raises(GrafanaUnavailableError) as caught:
            await g.search()
    assert caught.value.http_status == 429
    assert "still rate limiting" in str(caught.value)


async def test_429_asking_for_a_long_wait_is_not_waited_out(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script("GET", "/api/search", 429, {"message": "quota"}, {"Retry-After": "3600"})
    async with client(fake_grafana) as g:
        with pytest.raises(GrafanaUnavailableError, match="asks to wait 3600 s"):
            await g.search()
    assert sleeps == []


async def test_hang_past_the_timeout_is_unavailable(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script("GET", "/api/health", "hang", times=2)
    async with client(fake_grafana, timeout=0.2, retries=1) as g:
        with pytest.raises(GrafanaUnavailableError) as caught:
            await g.health()
    assert caught.value.http_status is None
    assert "did not answer GET /api/health within 0.2 s" in str(caught.value)
    assert len(fake_grafana.seen("GET", "/api/health")) == 2
    assert len(sleeps) == 1


async def test_hang_on_a_create_is_not_repeated(fake_grafana: FakeGrafana) -> None:
    fake_grafana.script("POST", "/api/dashboards/db", "hang")
    async with client(fake_grafana, timeout=0.2) as g:
        with pytest.raises(GrafanaUnavailableError, match="raise timeout="):
            await g.upsert_dashboard(dashboard(), overwrite=False)
    assert len(fake_grafana.seen("POST", "/api/dashboards/db")) == 1


async def test_refused_connection_is_retried_then_unavailable(sleeps: list[float]) -> None:
    async with GrafanaClient(f"http://127.0.0.1:{closed_port()}", token=TOKEN, retries=2) as g:
        with pytest.raises(GrafanaUnavailableError) as caught:
            await g.upsert_dashboard(dashboard(), overwrite=False)
    assert "cannot connect to Grafana" in str(caught.value)
    assert "check the URL and that Grafana is running" in str(caught.value)
    assert len(sleeps) == 2  # nothing was sent, so even a create is retried
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 7 ", 7.0), ("0", 0.0), ("²", None), ("٣", None), ("1.5", None), ("", None)],
)
def test_retry_after_takes_ascii_digits_only(header: str, seconds: float | None) -> None:
    assert grafana.client._retry_after(header) == seconds


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: it makes the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_fake(certificate: tuple[Path, Path]) -> Iterator[FakeGrafana]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = FakeGrafana(tls=context).start()
    yield server
    server.stop()


async def test_an_untrusted_certificate_is_not_retried(
    tls_fake: FakeGrafana, sleeps: list[float]
) -> None:
    async with client(tls_fake) as g:
        with pytest.raises(GrafanaUnavailableError) as caught:
            await g.health()
    text = str(caught.value)
    assert text.startswith(f"the TLS certificate of Grafana at {tls_fake.url} is not trusted (")
    assert "pass ca_file=" in text and "tls_verify=False" in text
    assert "cannot connect" not in text
    assert sleeps == [] and tls_fake.requests == []


async def test_a_private_ca_or_no_verification(
    tls_fake: FakeGrafana, certificate: tuple[Path, Path]
) -> None:
    async with client(tls_fake, ca_file=str(certificate[0])) as g:
        assert (await g.health())["database"] == "ok"
    async with client(tls_fake, tls_verify=False) as g:
        assert (await g.health())["database"] == "ok"
    assert len(tls_fake.requests) == 2


async def test_https_to_a_plain_http_server_is_not_retried(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    async with client(fake_grafana, url=fake_grafana.url.replace("http://", "https://")) as g:
        with pytest.raises(GrafanaUnavailableError, match="the TLS handshake with Grafana"):
            await g.health()
    assert sleeps == []


def test_a_ca_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"ca_file '.*missing\.pem' cannot be read as PEM certificates"
    ):
        GrafanaClient("https://127.0.0.1:3000", ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot be read as PEM certificates"):
        GrafanaClient("https://127.0.0.1:3000", ca_file=str(tmp_path / "junk.pem"))


# -- the client object ---------------------------------------------------------------------


async def test_a_token_read_with_a_trailing_newline_works(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana, token=f"  {TOKEN}\n") as g:
        result = await g.upsert_dashboard(dashboard())
    assert result.version == 1
    assert (
        fake_grafana.seen("POST", "/api/dashboards/db")[0].headers["Authorization"]
        == f"Bearer {TOKEN}"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": "glsa_abc\ndef_SECRETPART"},
        {"token": "glsa_abc\r\nX-Injected: SECRETPART"},
        {"token": "glsa_\x00nul_SECRETPART"},
        {"token": "glsa_\x7fdel_SECRETPART"},
        {"token": None, "basic_auth": ("admin", "pass\nSECRETPART")},
        {"token": None, "url": "http://admin:pass%0ASECRETPART@127.0.0.1:3000"},
    ],
)
def test_a_credential_with_a_control_character_is_refused_unshown(kwargs: dict[str, Any]) -> None:
    url = kwargs.pop("url", "http://127.0.0.1:3000")
    with pytest.raises(ValueError, match="contains a control character") as caught:
        GrafanaClient(url, **kwargs)
    assert "SECRETPART" not in str(caught.value)


async def test_one_session_is_reused_and_a_given_one_left_open(fake_grafana: FakeGrafana) -> None:
    connections = 0

    async def on_create(*_: Any) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with client(fake_grafana, session=session) as g:
            for _ in range(5):
                await g.health()
            await g.upsert_dashboard(dashboard())
        assert not session.closed
    assert connections == 1
    assert len(fake_grafana.requests) == 7


async def test_own_session_is_closed_on_exit(fake_grafana: FakeGrafana) -> None:
    g = client(fake_grafana)
    async with g:
        await g.health()
        session = g._session
    assert session is not None and session.closed


def test_repr_never_shows_the_token() -> None:
    g = GrafanaClient("https://grafana.example:3000/sub/", token=TOKEN, org_id=3)
    assert repr(g) == "GrafanaClient('https://grafana.example:3000/sub', auth='token', org_id=3)"
    assert TOKEN not in repr(g) + str(vars(g).get("url"))


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "empty"),
        ("grafana:3000", "not an http(s) URL"),
        ("ftp://grafana", "not an http(s) URL"),
        ("http://", "not an http(s) URL"),
        ("http://grafana:port", "invalid port"),
    ],
)
def test_bad_url_is_rejected_up_front(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        GrafanaClient(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": ""},
        {"token": TOKEN, "basic_auth": ("a", "b")},
        {"timeout": 0},
        {"retries": -1},
        {"org_id": "2"},
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GrafanaClient("http://127.0.0.1:3000", **kwargs)


async def test_dashboard_uid_longer_than_grafana_allows(fake_grafana: FakeGrafana) -> None:
    async with client(fake_grafana) as g:
        with pytest.raises(ValueError, match="1 to 40 characters"):
            await g.upsert_dashboard(dashboard(uid="x" * 41))
    assert fake_grafana.requests == []


def test_errors_are_one_family() -> None:
    for cls in (
        GrafanaAuthError,
        GrafanaNotFoundError,
        GrafanaConflictError,
        GrafanaBadRequestError,
        GrafanaServerError,
        GrafanaUnavailableError,
    ):
        assert issubclass(cls, GrafanaError)
    assert GrafanaConflictError("x", http_status=412, status="name-exists").status == "name-exists"


# -- the original entry point and the CLI --------------------------------------------------


async def test_grafana_integration_creates_the_generated_dashboard(
    fake_grafana: FakeGrafana,
) -> None:
    integration = GrafanaIntegration(fake_grafana.url + "/", TOKEN)
    url = await integration.create_codomyrmex_dashboard()
    assert url == f"{fake_grafana.url}/d/codomyrmex-analytics/codomyrmex-analytics"
    stored = fake_grafana.dashboards["codomyrmex-analytics"]["dashboard"]
    expected = build_dashboard("codomyrmex")
    assert stored["panels"] == expected["panels"]
    assert all(panel["type"] != "graph" for panel in stored["panels"])
    assert TOKEN not in repr(integration)
    # Twice is an update, not a failure.
    assert await integration.create_codomyrmex_dashboard() == url
    assert fake_grafana.dashboards["codomyrmex-analytics"]["version"] == 2


async def test_grafana_integration_failure_is_a_grafana_error(fake_grafana: FakeGrafana) -> None:
    with pytest.raises(GrafanaAuthError):
        await GrafanaIntegration(fake_grafana.url, "wrong").create_codomyrmex_dashboard()


@pytest.fixture
def grafana_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("GRAFANA_URL", "GRAFANA_TOKEN", "GRAFANA_API_KEY", "INSTRUMENT_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cli_apply_upserts_the_dashboard(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url]) == 0
    out = capsys.readouterr().out
    assert out == (
        "dashboard 'codomyrmex-analytics' saved in Grafana, version 1: "
        f"{fake_grafana.url}/d/codomyrmex-analytics/codomyrmex-analytics\n"
    )
    stored = fake_grafana.dashboards["codomyrmex-analytics"]
    assert stored["dashboard"]["panels"] == build_dashboard("codomyrmex")["panels"]
    assert stored["message"] == "saved by instrument dashboard"


def test_cli_apply_reads_grafana_url_and_api_key(
    fake_grafana: FakeGrafana,
    grafana_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    grafana_env.setenv("GRAFANA_URL", fake_grafana.url)
    grafana_env.setenv("GRAFANA_API_KEY", TOKEN)
    grafana_env.setenv("INSTRUMENT_NAMESPACE", "myapp")
    output = tmp_path / "dashboard.json"
    code = main(["dashboard", "--apply", "--uid", "myapp", "--output", str(output)])
    assert code == 0
    assert "version 1" in capsys.readouterr().out
    written = json.loads(output.read_text())
    assert written == build_dashboard("myapp", uid="myapp")
    assert (
        fake_grafana.seen("POST", "/api/dashboards/db")[0].headers["Authorization"]
        == f"Bearer {TOKEN}"
    )
    assert "myapp_analyses_total" in json.dumps(fake_grafana.dashboards["myapp"]["dashboard"])


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (
            ["--grafana-url", "grafana:3000"],
            {},
            "the Grafana URL 'grafana:3000' is not an http(s) URL",
        ),
        ([], {}, "--apply needs Grafana's URL: pass --grafana-url URL or set GRAFANA_URL"),
        (
            ["--uid", "x" * 41],
            {"GRAFANA_URL": "http://127.0.0.1:1"},
            "is not a Grafana dashboard uid",
        ),
    ],
)
def test_cli_apply_usage_errors_are_one_line(
    grafana_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for key, value in env.items():
        grafana_env.setenv(key, value)
    assert main(["dashboard", "--apply", *argv]) == 2  # usage errors, as argparse's own
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("instrument: error: ")
    assert expected in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_apply_unreachable_grafana(
    grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    code = main(["dashboard", "--apply", "--grafana-url", f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("instrument: error: cannot connect to Grafana at http://127.0.0.1:")
    assert err.count("\n") == 1
    assert TOKEN not in err


def test_cli_apply_proxy_error_page_is_one_line(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    fake_grafana.script("GET", "/api/dashboards/uid/codomyrmex-analytics", 502, NGINX_502, times=4)
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("instrument: error: the proxy in front of Grafana at ")
    assert "with 502: 502 Bad Gateway nginx/1.22.1 after 4 attempts:" in err
    assert err.count("\n") == 1


def test_cli_apply_token_with_a_newline_inside(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_env.setenv("GRAFANA_TOKEN", "glsa_abc\ndef_SECRETPART")
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url]) == 1
    err = capsys.readouterr().err
    assert err == (
        "instrument: error: GRAFANA_TOKEN contains a control character; check how the secret "
        "is read\n"
    )
    assert fake_grafana.requests == []


def test_cli_apply_auth_refused(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["dashboard", "--apply", "--grafana-url", fake_grafana.url])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"instrument: error: Grafana at {fake_grafana.url} refused GET "
        "/api/dashboards/uid/codomyrmex-analytics (401: invalid API key): no credentials were "
        "sent; set GRAFANA_TOKEN (or GRAFANA_API_KEY) to a service account token\n"
    )

    grafana_env.setenv("GRAFANA_TOKEN", "glsa_stale_token_000")
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url]) == 1
    err = capsys.readouterr().err
    assert "check the service account token" in err
    assert "glsa_stale_token_000" not in err
    assert fake_grafana.dashboards == {}


# -- the errors in httpx's shape: a transport error, a status error carrying the status --------


def test_errors_are_transport_or_status_errors() -> None:
    for cls in (
        GrafanaAuthError,
        GrafanaNotFoundError,
        GrafanaConflictError,
        GrafanaBadRequestError,
        GrafanaServerError,
        GrafanaRetryLaterError,
    ):
        assert issubclass(cls, GrafanaStatusError) and not issubclass(cls, GrafanaTransportError)
    # "Try again later", as before: no answer, or an answer asking to come back later.
    assert issubclass(GrafanaTransportError, GrafanaUnavailableError)
    assert issubclass(GrafanaRetryLaterError, GrafanaUnavailableError)
    assert not issubclass(GrafanaTransportError, GrafanaStatusError)
    for name in ("GrafanaStatusError", "GrafanaTransportError", "GrafanaRetryLaterError"):
        assert name in instrument.__all__
        assert getattr(instrument, name) is getattr(grafana, name)


@contextlib.asynccontextmanager
async def hanging_up_server() -> AsyncIterator[str]:
    """A server that starts a 200 answer, echoing the request's Authorization header into
    its body as a careless proxy might, and hangs up before the body is complete."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        auth = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization")]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
            + b'{"echo": "'
            + b"".join(auth)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_answer_cut_midway_is_a_transport_error(sleeps: list[float]) -> None:
    async with hanging_up_server() as url, GrafanaClient(url, token=TOKEN, retries=2) as g:
        with pytest.raises(GrafanaTransportError) as caught:
            await g.health()
    error = caught.value
    assert error.http_status is None and not isinstance(error, GrafanaStatusError)
    assert str(error).startswith(
        f"the connection to Grafana at {url} failed during GET /api/health"
    )
    assert len(sleeps) == 2  # a read may be repeated
    assert TOKEN not in str(error)


@pytest.mark.parametrize("how", ["refused", "hang", "tls to plain http"])
async def test_no_answer_is_a_transport_error(
    fake_grafana: FakeGrafana, sleeps: list[float], how: str
) -> None:
    url = {
        "refused": f"http://127.0.0.1:{closed_port()}",
        "hang": fake_grafana.url,
        "tls to plain http": fake_grafana.url.replace("http://", "https://"),
    }[how]
    fake_grafana.script("GET", "/api/health", "hang", times=2)
    async with client(fake_grafana, url=url, timeout=0.2, retries=1) as g:
        with pytest.raises(GrafanaTransportError) as caught:
            await g.health()
    assert caught.value.http_status is None
    assert not isinstance(caught.value, GrafanaStatusError)


async def test_come_back_later_carries_the_wait_asked_for(
    fake_grafana: FakeGrafana, sleeps: list[float]
) -> None:
    fake_grafana.script(
        "GET", "/api/search", 429, {"message": "slow"}, {"Retry-After": "2"}, times=2
    )
    async with client(fake_grafana, retries=1) as g:
        with pytest.raises(GrafanaRetryLaterError) as caught:
            await g.search()
        assert (caught.value.http_status, caught.value.retry_after, sleeps) == (429, 2.0, [2.0])
        fake_grafana.script(
            "GET", "/api/search", 503, {"message": "maintenance"}, {"Retry-After": "7200"}
        )
        with pytest.raises(GrafanaRetryLaterError, match="asks to wait 7200 s") as caught:
            await g.search()
        assert (caught.value.http_status, caught.value.retry_after) == (503, 7200.0)
    assert sleeps == [2.0]


def expected_error(status: int, grafana_shaped: bool) -> type[GrafanaError]:
    """What an answer with ``status`` raises, by what the caller can do about it."""
    if 400 <= status < 500 and status not in (401, 403, 429) and not grafana_shaped:
        return GrafanaError  # not Grafana's API: the URL is another server's
    by_status: dict[int, type[GrafanaError]] = {
        400: GrafanaBadRequestError,
        401: GrafanaAuthError,
        403: GrafanaAuthError,
        404: GrafanaNotFoundError,
        409: GrafanaConflictError,
        412: GrafanaConflictError,
        422: GrafanaBadRequestError,
        429: GrafanaRetryLaterError,
    }
    return by_status.get(status, GrafanaServerError if status >= 500 else GrafanaStatusError)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    status=st.integers(300, 599).filter(lambda s: s != 304),
    grafana_shaped=st.booleans(),
    detail=st.text(max_size=20),
)
def test_every_refusing_answer_is_a_status_error_carrying_its_status(
    fake_grafana: FakeGrafana, status: int, grafana_shaped: bool, detail: str
) -> None:
    # The answer echoes the token, as some proxies do: no error text may show it.
    said = f"{detail} (Authorization: Bearer {TOKEN})"
    body: Any = {"message": said} if grafana_shaped else f"<p>{said}</p>"
    fake_grafana.script("GET", "/api/search", status, body)

    async def search() -> None:
        async with client(fake_grafana, retries=0) as g:
            await g.search()

    with pytest.raises(GrafanaError) as caught:
        asyncio.run(search())
    error = caught.value
    assert type(error) is expected_error(status, grafana_shaped)
    assert not isinstance(error, GrafanaTransportError)
    if isinstance(error, GrafanaStatusError):
        assert error.http_status == status
    assert TOKEN not in str(error) and fake_grafana.scripted == []


# -- wave 4: a success answer echoing the credentials is scrubbed ---------------------------------


def echoing_answer(seen: Any) -> dict[str, Any]:
    """A saved dashboard's answer whose url and slug quote the request's credentials."""
    header = seen.headers["Authorization"]
    return {
        "id": 1,
        "uid": "codomyrmex-analytics",
        "status": "success",
        "version": 1,
        "slug": f"s-{header}",
        "url": f"/d/codomyrmex-analytics/s?note={header}&again={TOKEN}",
    }


async def test_a_success_answer_echoing_the_token_is_scrubbed(
    fake_grafana: FakeGrafana, caplog: pytest.LogCaptureFixture
) -> None:
    fake_grafana.script("POST", "/api/dashboards/db", 200, echoing_answer)
    with caplog.at_level(logging.DEBUG, logger="instrument"):
        async with client(fake_grafana) as g:
            result = await g.upsert_dashboard(dashboard())
    assert result.uid == "codomyrmex-analytics" and result.version == 1
    assert result.url.startswith(f"{fake_grafana.url}/d/codomyrmex-analytics/s?note=")
    assert TOKEN not in result.url and "***" in result.url
    assert TOKEN not in caplog.text


def test_the_cli_never_prints_a_token_grafana_echoed_in_its_answer(
    fake_grafana: FakeGrafana, grafana_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_env.setenv("GRAFANA_TOKEN", TOKEN)
    fake_grafana.script("POST", "/api/dashboards/db", 200, echoing_answer)
    assert main(["dashboard", "--apply", "--grafana-url", fake_grafana.url]) == 0
    captured = capsys.readouterr()
    assert "saved in Grafana, version 1" in captured.out
    assert TOKEN not in captured.out + captured.err
