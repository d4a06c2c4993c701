"""The record's HTTP routes (an APIRouter that store.api includes), and the read guard.

Writes need a person's bearer token, checked by a dependency before the body is read: FastAPI
reads a declared body before the dependencies run, so the body is read by hand (read_body), at
most MAX_BODY_BYTES: a larger Content-Length is refused before anything is read, a chunked
body as soon as it passes the bound. A person acts only for their functions.
Each write is one transaction. Reads are open unless ``http.read_token`` is set; then the
guard (an ASGI middleware, so it covers every route but /health and /metrics) wants that token
or a person's. Database work runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from store.record import deviations, dispositions, runs, signoffs
from store.record.bodies import (
    MAX_BODY_BYTES,
    ApprovalIn,
    CloseIn,
    DeviationIn,
    DispositionIn,
    RemarkIn,
    SignoffIn,
    parse,
)
from store.record.errors import RecordError
from store.record.html import CSP as HTML_CSP
from store.record.html import run_report_html
from store.record.people import People, Person
from store.record.report import run_report
from store.status import ServiceView

_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

#: Reads the guard leaves open: probes and scrapers carry no token.
OPEN_PATHS = frozenset({"/health", "/metrics"})
#: The run's report as a page: self-contained, no script (store/record/html.py).
HTML_HEADERS = {
    "Content-Security-Policy": HTML_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def read_body(request: Request) -> bytes:
    """The body, or 413 past MAX_BODY_BYTES (by Content-Length before reading, or while it
    streams in)."""
    declared = request.headers.get("content-length")
    too_big = RecordError(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    return bytes(body)


def _writer(request: Request, credentials: Credentials) -> Person:
    """The person whose bearer token the request carries, or 401 (before the body is read).
    The token itself is never logged nor echoed."""
    people: People = request.app.state.record_people
    person = people.find(None if credentials is None else credentials.credentials)
    if person is None:
        raise HTTPException(
            401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return person


# Module level: FastAPI resolves these (string) annotations in the module's namespace.
Writer = Annotated[Person, Depends(_writer)]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _problem(exc: RecordError) -> JSONResponse:
    headers = {"Connection": "close"} if exc.status == 413 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


def record_router(service: ServiceView) -> APIRouter:
    router = APIRouter()
    engine = service.engine

    async def handle(
        request: Request | None,
        model: type[M] | None,
        work: Callable[[Any], T],
        status: int = 200,
    ) -> Response:
        try:
            body = None
            if request is not None and model is not None:
                body = parse(model, await read_body(request))
            return _json(await run_in_threadpool(work, body), status)
        except RecordError as exc:
            return _problem(exc)

    @router.post("/runs", openapi_extra={"requestBody": {"content": {"application/yaml": {}}}})
    async def post_run(request: Request, person: Writer) -> Response:
        """The protocol YAML as the body: 201 with the run id (new run or version), 200 when
        this exact text is stored already."""
        try:
            raw = await read_body(request)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError(422, "body: the protocol is not UTF-8 text") from None
            created, found = await run_in_threadpool(runs.open_run, engine, person, text)
        except RecordError as exc:
            return _problem(exc)
        return _json(found, 201 if created else 200)

    @router.get("/runs")
    async def get_runs() -> Response:
        return await handle(None, None, lambda _: _read(runs.list_runs))

    @router.get("/runs/{run_id}")
    async def get_run(run_id: int) -> Response:
        return await handle(None, None, lambda _: run_view(run_id))

    @router.get("/runs/{run_id}/report")
    async def get_report(run_id: int, format: str = "json", version: int | None = None) -> Response:
        if format == "html":
            try:
                page = await run_in_threadpool(run_report_html, engine, run_id, version)
            except RecordError as exc:
                return _problem(exc)
            return Response(page, media_type="text/html; charset=utf-8", headers=HTML_HEADERS)
        if format != "json":
            return _problem(RecordError(422, f"format {format!r}: a run's report is json or html"))
        return await handle(None, None, lambda _: run_report(engine, run_id, version))

    @router.get("/runs/{run_id}/signoffs/{signoff_id}/report")
    async def get_signed(run_id: int, signoff_id: int) -> Response:
        """The report exactly as it was signed."""

        def read(_: Any) -> Any:
            with engine.connect() as conn:
                return signoffs.signed_report(conn, run_id, signoff_id)

        try:
            text = await run_in_threadpool(read, None)
        except RecordError as exc:
            return _problem(exc)
        if text is None:
            return _problem(RecordError(404, f"run {run_id} has no signature {signoff_id}"))
        return Response(text, media_type="application/json")

    @router.post("/runs/{run_id}/approvals", status_code=201)
    async def post_approval(run_id: int, request: Request, person: Writer) -> Response:
        return await handle(
            request, ApprovalIn, lambda b: runs.approve(engine, person, run_id, b), 201
        )

    @router.post("/runs/{run_id}/deviations", status_code=201)
    async def post_deviation(run_id: int, request: Request, person: Writer) -> Response:
        return await handle(
            request, DeviationIn, lambda b: deviations.record(engine, person, run_id, b), 201
        )

    @router.post("/runs/{run_id}/deviations/{deviation_id}/close")
    async def close_deviation(
        run_id: int, deviation_id: int, request: Request, person: Writer
    ) -> Response:
        return await handle(
            request, CloseIn, lambda b: deviations.close(engine, person, run_id, deviation_id, b)
        )

    @router.post("/runs/{run_id}/signoffs", status_code=201)
    async def post_signoff(run_id: int, request: Request, person: Writer) -> Response:
        def work(body: SignoffIn) -> Any:
            return signoffs.sign(engine, person, run_id, body, run_report(engine, run_id))

        return await handle(request, SignoffIn, work, 201)

    # :path: a serial may hold a "/", as GET /units/{serial} allows.
    @router.post("/units/{serial:path}/dispositions", status_code=201)
    async def post_disposition(serial: str, request: Request, person: Writer) -> Response:
        return await handle(
            request, DispositionIn, lambda b: dispositions.dispose(engine, person, serial, b), 201
        )

    @router.post("/units/{serial:path}/remarks", status_code=201)
    async def post_remark(serial: str, request: Request, person: Writer) -> Response:
        return await handle(
            request, RemarkIn, lambda b: dispositions.remark(engine, person, serial, b), 201
        )

    def _read(query: Callable[[Any], T]) -> T:
        with engine.connect() as conn:
            return query(conn)

    def run_view(run_id: int) -> dict[str, Any]:
        with engine.connect() as conn:
            version = runs.find_version(conn, run_id)
            approval_rows = runs.approval_rows(conn, run_id)
            signatures = signoffs.of_run(conn, run_id)
            return {
                "id": run_id,
                "name": version.run_name,
                "latest_version": version.latest,
                "versions": runs.version_rows(conn, run_id),
                "approvals": approval_rows,
                "approval": runs.approval_summary(version, approval_rows, None),
                "deviations": deviations.summary(deviations.of_run(conn, run_id)),
                "signoffs": signatures,
                **_state(version, signatures),
            }

    return router


def _state(version: runs.Version, signatures: list[dict[str, Any]]) -> dict[str, Any]:
    state = signoffs.state(version, signatures, None)  # staleness: see the report
    return {"state": state["state"], "awaiting": state["awaiting"], "state_words": state["words"]}


class ReadGuard:
    """With a read token configured, a read (GET, HEAD) of anything but OPEN_PATHS needs it or
    a person's token (401 otherwise). Writes are checked by their routes."""

    def __init__(self, app: ASGIApp, people: People) -> None:
        self.app = app
        self.people = people

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.people.read_digest is not None
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] not in OPEN_PATHS
        ):
            token = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, given = value.decode("latin-1").partition(" ")
                    token = given.strip() if scheme.lower() == "bearer" else None
            if not self.people.may_read(token):
                response = JSONResponse(
                    {"detail": "reads need a bearer token (http.read_token or a person's)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: Any, service: ServiceView) -> None:
    """Add the record's routes and the read guard to the store's app."""
    people = People(service.config.people, service.config.http.read_token)
    app.state.record_people = people
    app.include_router(record_router(service))
    app.add_middleware(ReadGuard, people=people)
