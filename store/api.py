"""The store's HTTP API (FastAPI, served by uvicorn in the service's loop): read-only.

``GET /health`` (200 or 503 with the reasons), ``GET /metrics`` (Prometheus), ``GET /gaps``,
``GET /units?serial=&operation=&verdict=&work_order=&golden=&since=&until=&limit=`` and
``GET /units/{serial}`` (JSON, or a small HTML page when the client asks for text/html: the
pilot-run report links to it), and ``GET /report[?format=json]`` (the pilot-run report of the
protocol named by store.yaml's ``report.protocol``, re-read at each request; 404 without one).
Database reads run in FastAPI's thread pool, never on the loop.
"""

from __future__ import annotations

import html
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from common.errors import ConfigError
from common.httpserver import BoundedServer
from store.genealogy import UnitQuery, search_units, unit_genealogy
from store.metrics import render
from store.report import Format, load_protocol, render_report
from store.status import ServiceView, gap_report, old_gaps, parked_count


def health(service: ServiceView) -> tuple[bool, dict[str, Any]]:
    s = service.stats
    now = datetime.now(UTC)
    problems = []
    if not s.db_ok:
        problems.append(f"database {s.db_reason}: {s.db_error}")
    if not s.mqtt_connected:
        problems.append(f"broker: {s.mqtt_state}")
    old: list[str] = []
    try:
        old = old_gaps(gap_report(service.engine), service.config.gaps.alert_after_s, now)
    except Exception as exc:  # /health reports, it does not fail
        problems.append(f"gap audit unreadable: {exc}")
    problems.extend(f"gap: {line}" for line in old)
    body = {
        "status": "ok" if not problems else "degraded",
        "problems": problems,
        "database": {
            "ok": s.db_ok,
            "reason": s.db_reason or None,
            "error": s.db_error or None,
            "down_for_s": None
            if s.db_error_since is None
            else round(time.time() - s.db_error_since, 1),
        },
        "mqtt": {"connected": s.mqtt_connected, "state": s.mqtt_state},
        "ingest": {
            "batches": s.batches,
            "readings_received": s.readings_received,
            "readings_inserted": s.readings_inserted,
            "units_received": s.units_received,
            "units_inserted": s.units_inserted,
            "quarantined": dict(s.quarantined),
            "parked": s.parked,
            "unparked": s.unparked,
            "acked": s.acked,
            "last_commit_age_s": None
            if s.last_commit is None
            else round(time.time() - s.last_commit, 1),
        },
        "old_gaps": old,
        "http": None if service.http_stats is None else service.http_stats(),
    }
    return not problems, body


def create_app(service: ServiceView) -> FastAPI:
    app = FastAPI(title="collector store", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def get_health() -> JSONResponse:
        ok, body = health(service)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    def get_metrics() -> Response:
        try:
            gaps = gap_report(service.engine)
            waiting: int | None = parked_count(service.engine)
        except Exception:  # the counters are still worth a scrape
            gaps, waiting = [], None
        return Response(render(service, gaps, waiting), media_type=CONTENT_TYPE_LATEST)

    @app.get("/gaps")
    def get_gaps() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        alert = service.config.gaps.alert_after_s
        return [g.as_dict(now, alert) for g in gap_report(service.engine)]

    @app.get("/units")
    def get_units(  # noqa: PLR0917 - FastAPI maps each parameter to a query field
        serial: str | None = None,
        operation: str | None = None,
        verdict: str | None = None,
        work_order: str | None = None,
        golden: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = Query(default=1000, ge=1, le=100_000),
    ) -> list[dict[str, Any]]:
        query = UnitQuery(
            serial, operation, verdict, work_order, golden, _aware(since), _aware(until), limit
        )
        return search_units(service.engine, query)

    # :path: a serial may hold a "/" (the report links it percent-encoded).
    @app.get("/units/{serial:path}", response_model=None)
    def get_unit(serial: str, request: Request) -> Response:
        found = unit_genealogy(service.engine, serial)
        if found is None:
            raise HTTPException(404, f"no unit {serial!r} in the store")
        if _wants_html(request.headers.get("accept", "")):
            return HTMLResponse(genealogy_page(found))
        # orjson directly: FastAPI's own encoder walks thousands of readings ten times slower.
        return Response(orjson.dumps(found), media_type="application/json")

    @app.get("/report", response_model=None)
    def get_report(format: Format = Format.HTML) -> Response:
        if service.config.report is None:
            raise HTTPException(
                404,
                "no pilot protocol configured: set report.protocol in the store's config "
                "(docs/store.md), or run `collector store report --protocol FILE`",
            )
        path = service.config.report.protocol
        try:
            protocol = load_protocol(path)  # re-read: an edited protocol counts at once
        except ConfigError as exc:
            return Response(str(exc) + "\n", status_code=500, media_type="text/plain")
        body = render_report(service.engine, protocol, format, protocol_name=path.name)
        if format is Format.JSON:
            return Response(body, media_type="application/json")
        return HTMLResponse(body)

    return app


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _wants_html(accept: str) -> bool:
    """A browser (text/html before any JSON) gets the page; tools get JSON."""
    html_at = accept.find("text/html")
    json_at = accept.find("application/json")
    return html_at >= 0 and (json_at < 0 or html_at < json_at)


def genealogy_page(found: dict[str, Any]) -> str:
    """A small self-contained page (no script) of a unit's genealogy."""
    e = html.escape
    serial = e(found["serial"])
    op_rows = []
    for op in found["operations"]:
        chars = "<br>".join(
            f"{e(c['name'])}: {c['last']} [{c['lsl']}, {c['usl']}]"
            + (" critical" if c["critical"] else "")
            + ("" if c["in_spec"] is None else " in spec" if c["in_spec"] else " OUT OF SPEC")
            for c in op["characteristics"]
        )
        cells = [op["operation"], op["station"], op["slot"], op["attempt"], op["verdict"],
                 op["failure_code"], op["cycle_time_s"], op["start_ts"], op["end_ts"],
                 op["collector"], op["work_order"]]  # fmt: skip
        op_rows.append(
            "<tr>" + "".join(f"<td>{e(_text(c))}</td>" for c in cells) + f"<td>{chars}</td></tr>"
        )
    reading_rows = [
        "<tr>" + "".join(
            f"<td>{e(_text(r[k]))}</td>"
            for k in ("ts", "collector", "device", "tag", "value", "unit", "quality", "error",
                      "station", "operation", "attempt", "phase", "seq")
        ) + "</tr>"
        for r in found["readings"]
    ]  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unit {serial}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 6px;font-size:90%;text-align:left}}
th{{background:#eee}}</style></head><body>
<h1>Unit {serial}</h1>
<h2>Operations ({len(found["operations"])})</h2>
<table id="operations"><tr><th>operation</th><th>station</th><th>slot</th><th>attempt</th>
<th>verdict</th><th>failure code</th><th>cycle time (s)</th><th>start</th><th>end</th>
<th>collector</th><th>work order</th><th>characteristics [LSL, USL]</th></tr>
{"".join(op_rows)}</table>
<h2>Readings ({len(found["readings"])})</h2>
<table id="readings"><tr><th>time (UTC)</th><th>collector</th><th>device</th><th>tag</th>
<th>value</th><th>unit</th><th>quality</th><th>error</th><th>station</th><th>operation</th>
<th>attempt</th><th>phase</th><th>seq</th></tr>
{"".join(reading_rows)}</table>
<p>JSON: the same URL with <code>Accept: application/json</code>.</p>
</body></html>
"""


def _text(value: object) -> str:
    return "" if value is None else str(value)


class StoreHttpServer(BoundedServer):
    """The store's API on a :class:`common.httpserver.BoundedServer`: bound up front (a
    busy port is a clear start-up error), at most MAX_CONNECTIONS connections with fresh idle
    ones closed (so that no client can take the file descriptors the database and the broker
    need), no signal handling of its own (the service owns SIGINT and SIGTERM)."""

    def __init__(self, service: ServiceView, host: str, port: int) -> None:
        super().__init__(create_app(service), host, port, "http")
