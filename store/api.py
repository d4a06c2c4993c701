"""The store's HTTP API (FastAPI, served by uvicorn in the service's loop): read-only.

``GET /health`` (200 or 503 with the reasons), ``GET /metrics`` (Prometheus), ``GET /gaps``,
``GET /units?serial=&operation=&verdict=&work_order=&golden=&since=&until=&limit=&attempt=
&disposition=&deviation=&out_of_spec=`` and ``GET /units/{serial}`` (JSON; a browser asking
for text/html gets the unit page of store/pages, which the pilot-run report links to), and
``GET /report[?format=json]`` (the pilot-run report of the protocol named by store.yaml's
``report.protocol``, re-read at each request; 404 without one).
Database reads run in FastAPI's thread pool, never on the loop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from common.errors import ConfigError
from common.httpserver import BoundedServer
from store.genealogy import UnitQuery, search_units, unit_genealogy
from store.metrics import render
from store.pages import install as install_pages
from store.pages.query import unit_query
from store.quarantine import quarantine_size
from store.record.api import install as install_record
from store.report import Format, load_protocol, render_report
from store.status import ServiceView, gap_report, old_gaps, parked_size


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
    parking = _parking(service, problems)
    warnings: list[str] = []
    kept = _quarantine(service, problems, warnings)
    body = {
        "status": "ok" if not problems else "degraded",
        "problems": problems,
        "warnings": warnings,
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
            "deviations_received": s.deviations_received,
            "deviations_inserted": s.deviations_inserted,
            "quarantined": dict(s.quarantined),
            "parked": s.parked,
            "unparked": s.unparked,
            "parked_dropped": s.parked_dropped,
            "acked": s.acked,
            "last_commit_age_s": None
            if s.last_commit is None
            else round(time.time() - s.last_commit, 1),
        },
        "parking": parking,
        "quarantine": kept,
        "old_gaps": old,
        "http": None if service.http_stats is None else service.http_stats(),
    }
    return not problems, body


def _parking(service: ServiceView, problems: list[str]) -> dict[str, Any]:
    """Parked messages now against their bounds (store.parking); drops are a problem."""
    ingest, s = service.config.ingest, service.stats
    try:
        count, size = parked_size(service.engine)
    except Exception as exc:  # /health reports, it does not fail
        problems.append(f"parking unreadable: {exc}")
        count = size = -1
    if s.parked_dropped:
        problems.append(
            f"parking: {s.parked_dropped} parked readings message(s) dropped since start, "
            "oldest first, at a bound of ingest.parked_max_* (their meta version never came; "
            "kept in quarantine, kind parked_dropped)"
        )
    return {
        "messages": count,
        "bytes": size,
        "max_messages": ingest.parked_max_messages,
        "max_bytes": ingest.parked_max_bytes,
        "max_age_s": ingest.parked_max_age_s,
        "dropped": s.parked_dropped,
    }


def _quarantine(service: ServiceView, problems: list[str], warnings: list[str]) -> dict[str, Any]:
    """The quarantine now against its bounds (store.quarantine). A prune is a warning, not a
    problem: the bound doing its work (the flood itself shows in ``quarantined``)."""
    ingest, s = service.config.ingest, service.stats
    try:
        rows, size = quarantine_size(service.engine)
    except Exception as exc:  # /health reports, it does not fail
        problems.append(f"quarantine unreadable: {exc}")
        rows = size = -1
    pruned = sum(s.quarantine_pruned.values())
    first, last = _utc(s.quarantine_pruned_first), _utc(s.quarantine_pruned_last)
    if pruned:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(s.quarantine_pruned.items()))
        warnings.append(
            f"quarantine: {pruned} quarantined message(s) pruned since {first} (the last at "
            f"{last}: {s.quarantine_pruned_why}), oldest first, at a bound of "
            f"ingest.quarantine_max_*; by kind: {kinds}"
        )
    return {
        "rows": rows,
        "bytes": size,
        "max_rows": ingest.quarantine_max_rows,
        "max_bytes": ingest.quarantine_max_total_bytes,
        "max_age_days": ingest.quarantine_max_age_days,
        "pruned": dict(s.quarantine_pruned),
        "pruned_bytes": s.quarantine_pruned_bytes,
        "first_pruned_at": first,
        "last_pruned_at": last,
    }


def _utc(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
            waiting: tuple[int, int] | None = parked_size(service.engine)
            kept: tuple[int, int] | None = quarantine_size(service.engine)
        except Exception:  # the counters are still worth a scrape
            gaps, waiting, kept = [], None, None
        return Response(render(service, gaps, waiting, kept), media_type=CONTENT_TYPE_LATEST)

    @app.get("/gaps")
    def get_gaps() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        alert = service.config.gaps.alert_after_s
        return [g.as_dict(now, alert) for g in gap_report(service.engine)]

    @app.get("/units")
    def get_units(query: Annotated[UnitQuery, Depends(unit_query)]) -> list[dict[str, Any]]:
        return search_units(service.engine, query)

    # :path: a serial may hold a "/" (the report links it percent-encoded).
    @app.get("/units/{serial:path}", response_model=None)
    def get_unit(serial: str) -> Response:
        found = unit_genealogy(service.engine, serial)
        if found is None:
            raise HTTPException(404, f"no unit {serial!r} in the store")
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

    install_record(app, service)  # the pilot record: /runs..., POST /units/... (its module)
    install_pages(app, service)  # after the record: the pages' shells are outside its guard
    return app


class StoreHttpServer(BoundedServer):
    """The store's API on a :class:`common.httpserver.BoundedServer`: bound up front (a
    busy port is a clear start-up error), at most MAX_CONNECTIONS connections with fresh idle
    ones closed (so that no client can take the file descriptors the database and the broker
    need), no signal handling of its own (the service owns SIGINT and SIGTERM)."""

    def __init__(self, service: ServiceView, host: str, port: int) -> None:
        super().__init__(create_app(service), host, port, "http")
