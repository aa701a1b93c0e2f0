"""A Grafana stand-in on loopback that answers as Grafana's HTTP API documents.

It runs in its own thread and event loop on 127.0.0.1, so both the async client tests and
the CLI (which runs its own ``asyncio.run``) can talk to it. It keeps state (dashboards with
versions and folders, folders, data sources), records every request as Grafana would read
it, and answers what a test scripts (statuses, pages, a hang).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

#: The Editor's service account token, and a Viewer's: the stand-in knows both.
TOKEN = "glsa_Secr3tServiceAccountToken_0a1b2c3d"
VIEWER_TOKEN = "glsa_ViewerOnlyToken_99887766"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    body: Any


@dataclass
class FakeGrafana:
    """A small Grafana: dashboards, folders, data sources, auth, and scripted failures."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"id": 1, "uid": "loki-1", "name": "Logs", "type": "loki", "isDefault": False},
            {"id": 2, "uid": "prom-a", "name": "Prom A", "type": "prometheus", "isDefault": False},
            {"id": 3, "uid": "prom-b", "name": "Prom B", "type": "prometheus", "isDefault": True},
        ]
    )
    scripted: list[tuple[str, str, int | str, Any, dict[str, str]]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    next_id: int = 1

    # -- scripting -------------------------------------------------------------------------

    def script(
        self,
        method: str,
        path: str,
        status: int | str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with this (``"hang"``: never answer).

        A ``body`` that is a string, or a function of the request returning one, is sent
        as an HTML page; anything else as JSON.
        """
        for _ in range(times):
            self.scripted.append((method, path, status, body, headers or {}))

    def seen(self, method: str, path: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- the server ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen = Seen(
            request.method,
            request.path,
            list(request.query.items()),
            CIMultiDict(request.headers),
            body,
        )
        self.requests.append(seen)
        for index, (method, path, status, answer, headers) in enumerate(self.scripted):
            if method == request.method and path == request.path:
                del self.scripted[index]
                if status == "hang":
                    await self.release.wait()
                    return web.json_response({})
                if status == "html":
                    return web.Response(text="<html>Sign in</html>", content_type="text/html")
                assert isinstance(status, int)
                if callable(answer):
                    answer = answer(seen)
                if isinstance(answer, str):
                    return web.Response(
                        text=answer, status=status, headers=headers, content_type="text/html"
                    )
                return web.json_response(answer, status=status, headers=headers)
        if request.path == "/api/health":
            return web.json_response({"commit": "0a1b2c3", "database": "ok", "version": "11.3.0"})
        role = self.role(seen.headers)
        # As some proxies in front of Grafana do, the refusals echo the credentials sent.
        auth = seen.headers.get("Authorization")
        echoed = f" (Authorization: {auth})" if auth else ""
        if role is None:
            return web.json_response({"message": f"invalid API key{echoed}"}, status=401)
        if request.method != "GET" and role != "Editor":
            return web.json_response(
                {"message": f"You'll need additional permissions to perform this action.{echoed}"},
                status=403,
            )
        return self.route(seen)

    def role(self, headers: CIMultiDict[str]) -> str | None:
        auth = headers.get("Authorization", "")
        if auth == f"Bearer {TOKEN}":
            return "Editor"
        if auth == f"Bearer {VIEWER_TOKEN}":
            return "Viewer"
        if auth == "Basic " + base64.b64encode(b"admin:admin-pass").decode():
            return "Editor"
        return None

    def route(self, r: Seen) -> web.Response:
        parts = r.path.strip("/").split("/")
        if r.method == "POST" and r.path == "/api/dashboards/db":
            return self.save_dashboard(r.body)
        if parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4:
            stored = self.dashboards.get(parts[3])
            if stored is None:
                return web.json_response({"message": "Dashboard not found"}, status=404)
            if r.method == "DELETE":
                del self.dashboards[parts[3]]
                title = stored["dashboard"]["title"]
                return web.json_response(
                    {"title": title, "message": f"Dashboard {title} deleted", "id": stored["id"]}
                )
            return web.json_response(
                {
                    "dashboard": stored["dashboard"],
                    "meta": {
                        "folderUid": stored["folderUid"],
                        "slug": stored["slug"],
                        "url": f"/d/{parts[3]}/{stored['slug']}",
                        "version": stored["version"],
                    },
                }
            )
        if r.path == "/api/search":
            query = dict(r.query).get("query", "").lower()
            tags = {value for key, value in r.query if key == "tag"}
            hits = [
                {
                    "uid": uid,
                    "title": d["dashboard"]["title"],
                    "type": "dash-db",
                    "url": f"/d/{uid}/{d['slug']}",
                    "tags": d["dashboard"].get("tags", []),
                    "folderUid": d["folderUid"],
                }
                for uid, d in self.dashboards.items()
                if query in d["dashboard"]["title"].lower()
                and tags <= set(d["dashboard"].get("tags", []))
            ]
            return web.json_response(hits)
        if r.path == "/api/folders":
            if r.method == "GET":
                return web.json_response(list(self.folders.values()))
            title, uid = r.body.get("title"), r.body.get("uid") or f"f{self.next_id}"
            if uid in self.folders or any(f["title"] == title for f in self.folders.values()):
                return web.json_response(
                    {"message": "a folder with the same name already exists"}, status=409
                )
            self.next_id += 1
            self.folders[uid] = {"id": self.next_id, "uid": uid, "title": title, "url": f"/f/{uid}"}
            return web.json_response(self.folders[uid])
        if parts[:2] == ["api", "folders"] and len(parts) == 3:
            folder = self.folders.get(parts[2])
            if folder is None:
                return web.json_response({"message": "folder not found"}, status=404)
            return web.json_response(folder)
        if r.path == "/api/datasources":
            return web.json_response(self.datasources)
        if parts[:2] == ["api", "datasources"] and len(parts) == 4 and parts[2] in ("uid", "name"):
            key = parts[2]
            found = [s for s in self.datasources if s[key] == parts[3]]
            if not found:
                return web.json_response({"message": "Data source not found"}, status=404)
            return web.json_response(found[0])
        return web.json_response({"message": "Not found"}, status=404)

    def save_dashboard(self, body: Any) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return web.json_response({"message": "bad request data"}, status=400)
        model = dict(body["dashboard"])
        title = model.get("title")
        if not title:
            return web.json_response({"message": "Dashboard title cannot be empty"}, status=400)
        uid = model.get("uid") or f"gen{self.next_id}"
        if len(uid) > 40:
            return web.json_response({"message": "uid too long, max 40 characters"}, status=400)
        folder = body.get("folderUid", "")
        if folder and folder not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        existing = self.dashboards.get(uid)
        if not body.get("overwrite"):
            if existing is not None and model.get("version") != existing["version"]:
                return web.json_response(
                    {"message": "The dashboard has been changed by someone else",
                     "status": "version-mismatch"},
                    status=412,
                )  # fmt: skip
            if any(
                other_uid != uid and d["dashboard"]["title"] == title and d["folderUid"] == folder
                for other_uid, d in self.dashboards.items()
            ):
                return web.json_response(
                    {"message": "A dashboard with the same name in the folder already exists",
                     "status": "name-exists"},
                    status=412,
                )  # fmt: skip
        version = existing["version"] + 1 if existing else 1
        ident = existing["id"] if existing else self.next_id
        self.next_id += 1
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        model.update({"id": ident, "uid": uid, "version": version})
        self.dashboards[uid] = {
            "dashboard": model,
            "version": version,
            "folderUid": folder,  # omitted folderUid: Grafana moves it to the root
            "slug": slug,
            "id": ident,
            "message": body.get("message"),
        }
        return web.json_response(
            {
                "id": ident,
                "uid": uid,
                "url": f"/d/{uid}/{slug}",
                "status": "success",
                "version": version,
                "slug": slug,
            }
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeGrafana:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    def __enter__(self) -> FakeGrafana:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        async def _stop() -> None:
            self.release.set()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
