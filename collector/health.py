"""Health and status over HTTP (FastAPI, served by uvicorn in the service's loop).

GET /health and /status only read state through :class:`StatusSource`. The one endpoint that
changes state, POST /stations/{name}/unit (a unit serial from an MES or manual entry), needs
the bearer token from the config; with no token configured it is off. Nothing here can stop
collection. It binds to 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
from collections.abc import Generator, Mapping
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, SecretStr

from collector import __version__
from collector.errors import StartupError

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A serial: no control characters, at most 128 characters ("" and null: the unit left).
SERIAL_PATTERN = r"^[^\x00-\x1f\x7f]{0,128}$"


class StatusSource(Protocol):
    def health(self) -> tuple[str, list[str]]:
        """("ok" | "degraded", reasons)."""
        ...

    async def status(self) -> dict[str, Any]: ...

    def set_unit(self, station: str, serial: str | None) -> None:
        """A unit serial for a station whose serial_source is http (None: the unit left)."""
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


# Module level: FastAPI resolves these (string) annotations in the module's namespace.
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class UnitIn(BaseModel):
    serial: Annotated[str, Field(pattern=SERIAL_PATTERN)] | None = Field(
        description="The unit now at the station; null or empty: the unit left."
    )


def create_app(source: StatusSource, token: SecretStr | None = None) -> FastAPI:
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

    @app.post("/stations/{station}/unit", dependencies=[Depends(authorised)])
    async def set_unit(station: str, unit: UnitIn) -> dict[str, Any]:
        """Set (or clear) the unit at a station whose serial_source is http."""
        sources = source.serial_sources()
        if station not in sources:
            raise HTTPException(404, f"no station {station!r}; stations: {sorted(sources)}")
        if sources[station] != "http":
            raise HTTPException(
                409, f"station {station!r} takes its serial from {sources[station]}, not http"
            )
        source.set_unit(station, unit.serial or None)
        return source.station_unit(station)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """200 while the service loop runs (it serves this very request); status and reasons."""
        state, reasons = source.health()
        return {"status": state, "reasons": reasons}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return await source.status()

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics (docs/metrics.md); read-only, like /status."""
        return Response(await source.metrics(), media_type=METRICS_CONTENT_TYPE)

    return app


class HealthServer(uvicorn.Server):
    """uvicorn on a socket bound up front, without uvicorn's own signal handling (the service
    owns SIGINT and SIGTERM). Binding first turns a busy port into a clear start-up error
    instead of uvicorn's ``sys.exit`` inside a task."""

    def __init__(
        self,
        source: StatusSource,
        host: str,
        port: int,
        token: SecretStr | None = None,
    ) -> None:
        super().__init__(
            uvicorn.Config(
                create_app(source, token),
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise StartupError(f"health: cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.socket.listen(128)
        self.bound_port = int(self.socket.getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def run_until_exit(self) -> None:
        try:
            await self.serve(sockets=[self.socket])
        finally:
            self.socket.close()
