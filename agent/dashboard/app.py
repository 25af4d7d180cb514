"""The web application: URLs to views, each page with a JSON twin under ``/api``.

Why Starlette: a small ASGI toolkit (uvicorn serves it) with plain synchronous endpoints,
which it runs in a thread pool - the store's calls are blocking, and the embedded backend
keeps one SQLite connection per thread. Every route is a GET; ``security.Guard`` wraps the
whole application (read-only methods, the token, security headers).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from agent.dashboard import assets, table, views, views_more
from agent.dashboard.digest import Digests
from agent.dashboard.page import Page
from agent.dashboard.render import render, to_json
from agent.dashboard.security import Guard
from agent.dashboard.source import StoreSource
from agent.store import StoreUnavailable

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPLAY = REPO / "benchmarks" / "results" / "replay.json"


class Dashboard:
    """The state every request shares: the store, the digests, the settings."""

    def __init__(self, source: StoreSource, refresh: float = 5.0, replay: Path | None = None):
        self.source = source
        self.refresh = refresh
        self.replay = replay
        self.digests = Digests()

    def prewarm(self) -> threading.Thread:
        """Build every campaign's digest in the background: one scan per campaign (seconds
        at 100,000 candidates), done before the first page needs it."""

        def run() -> None:
            store = self.source.get()
            if store is None:
                return
            try:
                for campaign in store.list_campaigns():
                    prop = self._prop(store, campaign["_id"])
                    self.digests.get(store, campaign["_id"], prop).fresh()
            except Exception:  # noqa: BLE001 - a page will build it (and show the error)
                pass
            finally:
                store.close_thread()

        thread = threading.Thread(target=run, name="dashboard-prewarm", daemon=True)
        thread.start()
        return thread

    # -- plumbing ----------------------------------------------------------------------------
    def _page(self, request: Request, build: Any, api: bool) -> Response:
        store = self.source.get()
        if store is None:
            page = Page("crystalloop dashboard", nav=[("campaigns", "/")], status=200)
            page.text(
                f"no store yet at {self.source.where()} - start a campaign "
                "(crystalloop run FILE.yaml); this page connects once it exists"
            )
        else:
            try:
                page = build(store)
            except StoreUnavailable as exc:
                page = Page("store unavailable", nav=[("campaigns", "/")], status=503)
                page.text(str(exc))
        if api:
            return Response(to_json(page.payload()), page.status, media_type="application/json")
        return HTMLResponse(render(page, self.refresh), page.status)

    def route(self, build: Any, api: bool = False) -> Any:
        def endpoint(request: Request) -> Response:
            return self._page(request, lambda store: build(store, request), api)

        return endpoint

    def _prop(self, store: Any, name: str) -> str:
        from agent.dashboard.summary import objective_of

        return objective_of(store.get_campaign(name) or {})["property"]

    # -- downloads ---------------------------------------------------------------------------
    def csv(self, request: Request) -> Response:
        name = request.path_params["name"]
        store = self.source.get()
        if store is None or store.get_campaign(name) is None:
            return JSONResponse({"error": f"no campaign {name!r}"}, 404)
        q = table.Query.parse(request.query_params)
        text = table.to_csv(store, self.digests, name, q, self._prop(store, name))
        filename = table.safe_name(f"{name}-candidates") + ".csv"
        headers = {"content-disposition": f'attachment; filename="{filename}"'}
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)

    def cif_zip(self, request: Request) -> Response:
        name = request.path_params["name"]
        store = self.source.get()
        if store is None or store.get_campaign(name) is None:
            return JSONResponse({"error": f"no campaign {name!r}"}, 404)
        q = table.Query.parse(request.query_params)
        data = table.to_cif_zip(store, self.digests, name, q, self._prop(store, name))
        filename = table.safe_name(f"{name}-page{q.page}") + ".zip"
        headers = {"content-disposition": f'attachment; filename="{filename}"'}
        return Response(data, media_type="application/zip", headers=headers)

    def cif(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        which = request.path_params["which"]
        store = self.source.get()
        doc = store.get_candidate(cid) if store is not None else None
        if doc is None:
            return JSONResponse({"error": f"no candidate {cid!r}"}, 404)
        structure = doc["structure"]
        if which == "relaxed":
            structure = (store.calculations_for([cid]).get(cid) or {}).get("structure")
            if not isinstance(structure, dict):
                return JSONResponse({"error": "no DFT-relaxed structure"}, 404)
        filename = table.safe_name(f"{doc.get('formula') or 'X'}_{cid[:12]}_{which}") + ".cif"
        headers = {"content-disposition": f'attachment; filename="{filename}"'}
        return Response(table.cif_of(structure), media_type="chemical/x-cif", headers=headers)

    # -- pages -------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        d = self.digests

        def campaigns(store: Any, r: Request) -> Page:
            return views.campaigns_page(store)

        def campaign(store: Any, r: Request) -> Page:
            return views.campaign_page(
                store, d, r.path_params["name"], r.query_params.get("system")
            )

        def candidates(store: Any, r: Request) -> Page:
            q = table.Query.parse(r.query_params)
            return views.candidates_page(store, d, r.path_params["name"], q)

        def candidate(store: Any, r: Request) -> Page:
            return views_more.candidate_page(store, r.path_params["cid"])

        def queue(store: Any, r: Request) -> Page:
            return views_more.queue_page(store, r.path_params["name"])

        def models(store: Any, r: Request) -> Page:
            return views_more.models_page(store, r.path_params["name"])

        def policies(store: Any, r: Request) -> Page:
            name = r.path_params.get("name")
            return views_more.policies_page(store, d, self.replay, name)

        pages = [
            ("/campaign/{name:path}/candidates", candidates),
            ("/campaign/{name:path}/queue", queue),
            ("/campaign/{name:path}/models", models),
            ("/campaign/{name:path}/policies", policies),
            ("/campaign/{name:path}", campaign),
            ("/candidate/{cid}", candidate),
            ("/policies", policies),
            ("/", campaigns),
        ]
        routes = [
            Route("/static/plotly.min.js", self.plotly),
            Route("/static/dashboard.js", self.script),
            Route("/static/dashboard.css", self.style),
            Route("/campaign/{name:path}/candidates.csv", self.csv),
            Route("/campaign/{name:path}/candidates.zip", self.cif_zip),
            Route("/candidate/{cid}/{which:str}.cif", self.cif),
        ]
        for path, build in pages:
            api_path = "/api" + (path if path != "/" else "/campaigns")
            routes.append(Route(api_path, self.route(build, api=True)))
            routes.append(Route(path, self.route(build)))
        return routes

    # -- assets ------------------------------------------------------------------------------
    def plotly(self, request: Request) -> Response:
        return FileResponse(
            assets.plotly_js(),
            media_type="text/javascript",
            headers={"cache-control": "max-age=86400"},
        )

    def script(self, request: Request) -> Response:
        return Response(assets.JS, media_type="text/javascript")

    def style(self, request: Request) -> Response:
        return Response(assets.CSS, media_type="text/css")


def create_app(
    source: StoreSource | None = None,
    *,
    token: str | None = None,
    refresh: float = 5.0,
    replay: Path | None = DEFAULT_REPLAY,
    prewarm: bool = True,
) -> Any:
    """The ASGI application (``token`` None: no token required - loopback only)."""
    dashboard = Dashboard(source or StoreSource(), refresh=refresh, replay=replay)
    if prewarm:
        dashboard.prewarm()
    app = Starlette(routes=dashboard.routes())
    app.state.dashboard = dashboard
    guarded = Guard(app, token)
    guarded.dashboard = dashboard  # type: ignore[attr-defined]
    return guarded
