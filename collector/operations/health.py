"""Health and status over HTTP (FastAPI, served by uvicorn in the service's loop).

GET /health and /status only read state through :class:`StatusSource`. The endpoints that
change state, POST /stations/{name}/unit (a unit serial from an MES or manual entry) and POST
/deviations (a deviation recorded on the line, contract.deviations), need the bearer token
from the config, checked before the (size-limited) body is read; with no token configured
they are off. ``GET /`` is the live page for technicians (collector/operations/live.py).
Nothing here can stop collection: it is a common.httpserver.BoundedServer (connections bounded and
idle ones closed, so that no client can take the file descriptors or the event loop's time the
polls need). It binds to 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import hmac
import socket
import time
from collections.abc import Mapping
from typing import Annotated, Any, Protocol

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from collector import __version__
from collector.context.serials import accepted
from collector.operations.live import LiveFeed, add_page_routes, encode_status
from common.httpserver import BoundedServer
from contract.deviations import Deviation, deviation_fields
from contract.fields import ContractError
from contract.text import MAX_SERIAL_CHARS, serial_problem

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusSource(Protocol):
    def health(self) -> tuple[str, list[str]]:
        """("ok" | "degraded", reasons)."""
        ...

    async def status(self) -> dict[str, Any]: ...

    def set_unit(
        self,
        station: str,
        serial: str | None,
        golden: bool = False,
        work_order: str | None = None,
        operator: str | None = None,
    ) -> None:
        """A unit serial for a station whose serial_source is http (None: the unit left);
        ``golden``: a golden sample; ``operator``: who works there (operator_source http).
        At another station, only ``golden`` for the serial
        present there; ValueError if it is not."""
        ...

    def station_unit(self, station: str) -> dict[str, Any]:
        """What /status shows for the station."""
        ...

    async def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        ...

    def serial_sources(self) -> Mapping[str, str]:
        """Station -> where its serial comes from ("http" or "device.tag"), as configured now
        (a reload can change it)."""
        ...

    async def record_deviation(self, deviation: Deviation) -> dict[str, Any]:
        """Commit a deviation to the outbox (delivered like a unit record); what the 201
        says: its ``seq``, ``outbox`` and ``ts``. RuntimeError when the buffer cannot keep
        it."""
        ...


# Module level: FastAPI resolves these (string) annotations in the module's namespace.
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class UnitIn(BaseModel):
    # Unknown fields are refused (422 naming them): a client that thinks it set something it
    # did not ("admin": true, a misspelt "work_oder") hears so.
    model_config = ConfigDict(extra="forbid")

    # Control and format characters are checked by collector.context.serials (and counted there).
    serial: Annotated[str, Field(max_length=MAX_SERIAL_CHARS)] | None = Field(
        description="The unit now at the station; null or empty: the unit left."
    )
    golden: bool = Field(
        default=False,
        description="The unit is a golden sample. At a station that reads its serial from a "
        "device, this marks the unit present there (serial must match).",
    )
    work_order: Annotated[str, Field(max_length=MAX_SERIAL_CHARS)] | None = Field(
        default=None, description="The work order of the unit (goes into its unit record)."
    )
    operator: Annotated[str, Field(max_length=MAX_SERIAL_CHARS)] | None = Field(
        default=None,
        description="Who works at the station (operator_source: http): the unit record's "
        "resources.operator, for this unit and the next ones until another is given.",
    )


# The unit endpoint's body is a small JSON object; anything bigger is refused before it is read
# (a 200 MB body once cost 400 MB of memory that stayed).
MAX_UNIT_BODY_BYTES = 4096


#: A deviation's body: a description and an action of a few paragraphs, a list of serials.
MAX_DEVIATION_BODY_BYTES = 64 * 1024


def _refused(detail: str) -> JSONResponse:
    """422 with the field named first, as the store's record API words it (``body.field:
    problem``); the live page shows it as it is."""
    return JSONResponse({"detail": detail}, status_code=422)


def _unit_message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return (
            f"unknown field {error['loc'][-1]!r}; the fields are {', '.join(UnitIn.model_fields)}"
        )
    return str(error["msg"])


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    # The input is not echoed back: it may not even be encodable (a lone surrogate).
    return JSONResponse({"detail": errors}, status_code=422)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes: by its Content-Length before
    anything is read, or while it streams in (chunked)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(
            413, f"the body is limited to {limit} bytes", headers={"Connection": "close"}
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(
                413, f"the body is limited to {limit} bytes", headers={"Connection": "close"}
            )
    return bytes(body)


def create_app(
    source: StatusSource, token: SecretStr | None = None, feed: LiveFeed | None = None
) -> FastAPI:
    app = FastAPI(title="collector", version=__version__, docs_url=None, redoc_url=None)
    expected = token.get_secret_value().encode() if token is not None else None

    def authorised(
        credentials: Credentials,
    ) -> None:
        if expected is None:
            raise HTTPException(
                403, "this endpoint is off: set health.token_env or health.token_file"
            )
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            # The token itself is never logged.
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    # The body is taken from the request by hand, not declared as a parameter: FastAPI reads a
    # declared body before it runs the dependencies, and the token must be checked first.
    @app.post(
        "/stations/{station}/unit",
        dependencies=[Depends(authorised)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": UnitIn.model_json_schema()}},
            }
        },
    )
    async def set_unit(station: str, request: Request) -> Any:
        """Set (or clear) the unit at a station whose serial_source is http."""
        body = await _bounded_body(request, MAX_UNIT_BODY_BYTES)
        try:
            unit = UnitIn.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            # orjson refuses what is not JSON text in UTF-8, lone surrogates included.
            return _unprocessable(
                [{"type": "json_invalid", "loc": ["body"], "msg": f"not valid JSON: {exc}"}]
            )
        except ValidationError as exc:
            return _unprocessable(
                [
                    {"type": e["type"], "loc": ["body", *e["loc"]], "msg": _unit_message(e)}
                    for e in exc.errors(include_url=False, include_input=False)
                ]
            )
        sources = source.serial_sources()
        if station not in sources:
            raise HTTPException(404, f"no station {station!r}; stations: {sorted(sources)}")
        if sources[station] != "http" and not (unit.golden and unit.serial):
            raise HTTPException(
                409, f"station {station!r} takes its serial from {sources[station]}, not http"
            )
        if not accepted(unit.serial, station):
            problem = serial_problem(unit.serial or "")
            return _unprocessable([{"type": "serial", "loc": ["body", "serial"], "msg": problem}])
        for name, text in (("work_order", unit.work_order), ("operator", unit.operator)):
            if text is not None and (problem := serial_problem(text)):
                return _unprocessable([{"type": "serial", "loc": ["body", name], "msg": problem}])
        try:
            source.set_unit(
                station, unit.serial or None, unit.golden, unit.work_order, unit.operator
            )
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return source.station_unit(station)

    @app.post(
        "/deviations",
        dependencies=[Depends(authorised)],
        status_code=201,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {}}}},
    )
    async def record_deviation(request: Request) -> Any:
        """Record a deviation (docs/pilot-record.md, "Deviations on the line PC"): committed
        to the outbox before the 201, then delivered to the store like a unit record."""
        body = await _bounded_body(request, MAX_DEVIATION_BODY_BYTES)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _refused(f"body: not valid JSON: {exc}")
        if type(data) is not dict:
            return _refused("body: must be a JSON object")
        if stamped := sorted({"seq", "ts"} & set(data)):
            return _refused(f"body.{stamped[0]}: unknown field (the collector sets it)")
        try:
            deviation = deviation_fields(data, time.time(), "body.")
        except ContractError as exc:
            return _refused(str(exc))
        stations = source.serial_sources()
        if deviation.station not in stations:
            return _refused(
                f"body.station: no station {deviation.station!r} on this line PC; stations: "
                f"{', '.join(sorted(stations))}"
            )
        try:
            return await source.record_deviation(deviation)
        except RuntimeError as exc:
            raise HTTPException(503, str(exc)) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """200 while the service loop runs (it serves this very request); status and reasons."""
        state, reasons = source.health()
        return {"status": state, "reasons": reasons}

    @app.get("/status")
    async def status() -> Response:
        return Response(encode_status(await source.status()), media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics (docs/metrics.md); read-only, like /status."""
        return Response(await source.metrics(), media_type=METRICS_CONTENT_TYPE)

    if feed is not None:
        add_page_routes(app, feed)
    return app


class HealthServer(BoundedServer):
    """The health server: the API above and the live pages' feed, on a :class:`BoundedServer`
    (bound up front, connections bounded, no signal handling of its own)."""

    def __init__(
        self,
        source: StatusSource,
        host: str,
        port: int,
        token: SecretStr | None = None,
    ) -> None:
        self.feed = LiveFeed(source.status)
        # Open streams are ended by shutdown(); the timeout bounds the stop if one is not.
        super().__init__(
            create_app(source, token, self.feed), host, port, "health", timeout_graceful_shutdown=2
        )

    def stats(self) -> dict[str, Any]:
        """For /status: connections, refusals, and the live pages."""
        return {**self.guard.stats(), "live_pages": self.feed.stats()}

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.feed.close()  # uvicorn waits for open connections: end the live pages' streams
        await super().shutdown(sockets)
