"""Serving the pages: an ASGI middleware answers the page shells and their files, a router
answers ``GET /units.csv`` and ``GET /readings.csv?serial=``.

The middleware sits outside the read guard (store/record/api.py) on purpose: shells and
scripts hold no data, and a browser navigating to ``/units/X`` cannot send a bearer token.
The data the scripts then fetch goes through the guard like any other read. The same paths
serve JSON to API clients: ``/runs``, ``/runs/{id}`` and ``/units/{serial}`` give the page
only to a client that puts text/html before application/json in Accept (a browser) and does
not ask ``?format=json``; everything else reaches the JSON routes untouched.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from store.genealogy import READING_FIELDS, UnitQuery, search_units, unit_genealogy
from store.pages.csvout import rows_csv, units_csv
from store.pages.query import unit_query
from store.status import ServiceView

#: Every page and file: no inline script or style, nothing from elsewhere, never framed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: URL prefix of the pages' own files.
ASSETS = "/pages/"
_RUN = re.compile(r"/runs/[0-9]+")


def _load() -> dict[str, tuple[bytes, str]]:
    """Every file of static/ by name, read once (a few kilobytes)."""
    folder = resources.files("store.pages") / "static"
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in MEDIA:
            files[item.name] = (item.read_bytes(), MEDIA[suffix])
    return files


def wants_html(accept: str) -> bool:
    """A browser (text/html before any JSON) gets the page; tools get JSON."""
    html_at = accept.find("text/html")
    json_at = accept.find("application/json")
    return html_at >= 0 and (json_at < 0 or html_at < json_at)


def page_for(method: str, path: str, query: str, accept: str) -> str | None:
    """The static file answering this request, or None to let the app answer."""
    if method not in ("GET", "HEAD"):
        return None
    if path == "/search":
        return "search.html"
    if path.startswith(ASSETS):
        return path.removeprefix(ASSETS)
    if "json" in parse_qs(query).get("format", []) or not wants_html(accept):
        return None
    if path in ("/runs", "/runs/"):
        return "runs.html"
    if _RUN.fullmatch(path):
        return "run.html"
    if path.startswith("/units/") and len(path) > len("/units/"):
        return "unit.html"
    return None


class PagesMiddleware:
    def __init__(self, app: ASGIApp, files: dict[str, tuple[bytes, str]]) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            name = page_for(
                scope["method"],
                scope["path"],
                scope["query_string"].decode("latin-1"),
                headers.get(b"accept", b"").decode("latin-1"),
            )
            if name is not None:
                found = self.files.get(name)
                if found is None:
                    response = Response(
                        f"no page file {name!r}\n", status_code=404, media_type="text/plain"
                    )
                else:
                    body, media = found
                    response = Response(body, media_type=media, headers=HEADERS)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def pages_router(service: ServiceView) -> APIRouter:
    router = APIRouter()

    @router.get("/units.csv")
    async def get_units_csv(query: Annotated[UnitQuery, Depends(unit_query)]) -> Response:
        """The search's unit records as CSV (the same fields and filters as GET /units)."""

        def work() -> str:
            return units_csv(search_units(service.engine, query))

        text = await run_in_threadpool(work)
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="units.csv"'},
        )

    @router.get("/readings.csv")
    async def get_readings_csv(serial: str) -> Response:
        """A unit's readings as CSV (the unit page links it)."""

        def work() -> str | None:
            found = unit_genealogy(service.engine, serial)
            return None if found is None else rows_csv(READING_FIELDS, found["readings"])

        text = await run_in_threadpool(work)
        if text is None:
            raise HTTPException(404, f"no unit {serial!r} in the store")
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="readings.csv"'},
        )

    return router


def install(app: FastAPI, service: ServiceView) -> None:
    """Add /units.csv and the pages. Call after the record's install: the middleware added
    last is the outermost, so the shells are served before the read guard looks."""
    app.include_router(pages_router(service))
    app.add_middleware(PagesMiddleware, files=_load())
