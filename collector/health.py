"""Health and status over HTTP (FastAPI, served by uvicorn in the service's loop).

GET /health and /status only read state through :class:`StatusSource`. The one endpoint that
changes state, POST /stations/{name}/unit (a unit serial from an MES or manual entry), needs
the bearer token from the config, checked before the (size-limited) body is read; with no token
configured it is off. ``GET /`` is the live page for technicians (collector/live.py). Nothing
here can stop collection: connections are bounded and idle ones closed, so that no client can
take the file descriptors or the event loop's time the polls need. It binds to 127.0.0.1
unless the config says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable, Generator, Mapping
from typing import Annotated, Any, Protocol, cast

import orjson
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, SecretStr, ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from collector import __version__
from collector.errors import StartupError
from collector.live import LiveFeed, add_page_routes, encode_status
from collector.serials import MAX_SERIAL_CHARS, accepted, serial_problem

log = logging.getLogger(__name__)

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
    ) -> None:
        """A unit serial for a station whose serial_source is http (None: the unit left);
        ``golden``: a golden sample. At another station, only ``golden`` for the serial
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


# Module level: FastAPI resolves these (string) annotations in the module's namespace.
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class UnitIn(BaseModel):
    # Control and format characters are checked by collector.serials (and counted there).
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


# The unit endpoint's body is a small JSON object; anything bigger is refused before it is read
# (a 200 MB body once cost 400 MB of memory that stayed).
MAX_UNIT_BODY_BYTES = 4096
# Connections the health server keeps open at once (the live pages' streams included). Far
# below the process's file limit, so that idle connections can never take the file descriptors
# the devices and the buffer need; one more is closed as soon as it is accepted.
MAX_CONNECTIONS = 64
# A connection that has not sent a request this long after it opened is closed.
REQUEST_HEAD_TIMEOUT_S = 5.0
# An overload of the health port is over when no connection was refused for this long.
EPISODE_QUIET_S = 60.0


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
                    {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]}
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
        if unit.work_order is not None and (problem := serial_problem(unit.work_order)):
            return _unprocessable(
                [{"type": "serial", "loc": ["body", "work_order"], "msg": problem}]
            )
        try:
            source.set_unit(station, unit.serial or None, unit.golden, unit.work_order)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return source.station_unit(station)

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


class _Connection(Protocol):
    def close_if_idle(self) -> bool:
        """Close the connection if it has not sent a request yet; whether it did."""
        ...


class ConnectionGuard:
    """Keeps the health server's connections at :data:`MAX_CONNECTIONS`. At the bound, a new
    connection takes the place of the oldest one that has not sent a request (so idle clients
    cannot lock out a technician or a monitoring probe); when every connection is busy, the new
    one is closed. Each overload is logged once per episode (it ends after
    :data:`EPISODE_QUIET_S` without one: a flood's connections arrive in waves as the client's
    kernel retries them).

    Also takes the event loop's "socket.accept() out of system resource" reports: asyncio
    logs one with a traceback per pending connection per loop turn when the process is out of
    file descriptors, hundreds of thousands of lines that starve the loop (and the polls)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.open = 0
        self.refused_total = 0
        self.closed_idle_total = 0
        self.accept_failures_total = 0
        self._clock = clock
        # Connections that have not sent a request (yet), oldest first.
        self._fresh: dict[_Connection, None] = {}
        self._episode = 0
        self._last_overload = 0.0
        self._accept_failing = False

    def admit(self, open_before: int) -> bool:
        """Whether a new connection may be served, ``open_before`` being open already."""
        self.open = open_before
        if self._accept_failing:
            self._accept_failing = False
            log.warning("health: accepting connections again")
        if open_before < self.limit:
            self._end_episode()
            return True
        self._episode += 1
        self._last_overload = self._clock()
        if self._episode == 1:
            log.warning(
                "health: %d connections open, the limit: each new one replaces the oldest that "
                "has sent no request, or is closed when all are busy (idle ones close after "
                "%.0f s); logged once until none for %.0f s",
                self.limit,
                REQUEST_HEAD_TIMEOUT_S,
                EPISODE_QUIET_S,
            )
        while self._fresh:
            oldest = next(iter(self._fresh))
            del self._fresh[oldest]
            if oldest.close_if_idle():
                self.closed_idle_total += 1
                return True
        self.refused_total += 1
        return False

    def opened(self, connection: _Connection, open_now: int) -> None:
        self.open = open_now
        self._fresh[connection] = None

    def closed(self, connection: _Connection, open_now: int) -> None:
        self.open = open_now
        self._fresh.pop(connection, None)
        self._end_episode()

    def _end_episode(self) -> None:
        if self._episode and self._clock() - self._last_overload > EPISODE_QUIET_S:
            log.info(
                "health: no overload for %.0f s; %d connection(s) were closed or refused before",
                EPISODE_QUIET_S,
                self._episode,
            )
            self._episode = 0

    def accept_failed(self, exc: BaseException | None) -> None:
        self.accept_failures_total += 1
        if not self._accept_failing:
            self._accept_failing = True
            log.error(
                "health: cannot accept connections: %s (the process is out of file "
                "descriptors: raise LimitNOFILE); retrying every second",
                exc,
            )

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.open,
            "max_connections": self.limit,
            "closed_idle_total": self.closed_idle_total,
            "refused_total": self.refused_total,
            "accept_failures_total": self.accept_failures_total,
        }


class _Refused(asyncio.Protocol):
    """A connection past the bound: closed as soon as it is made, before uvicorn builds its
    (much larger) HTTP state for it; a flood of connections costs little of the loop's time."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


def _bounded_protocol(guard: ConnectionGuard) -> Callable[..., asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol with a connection bound and a deadline for the first
    request (uvicorn times out idle keep-alive connections, but not fresh ones). uvicorn takes
    any callable as its protocol "class"."""

    class BoundedH11Protocol(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            guard.opened(self, len(self.connections))
            self._head_deadline = self.loop.call_later(REQUEST_HEAD_TIMEOUT_S, self.close_if_idle)

        def close_if_idle(self) -> bool:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.abort()
                return True
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)
            guard.closed(self, len(self.connections))

    def protocol(*, server_state: ServerState, **kwargs: Any) -> asyncio.Protocol:
        # Decided before anything is built. (Connections accepted in the same loop turn, at
        # most the listen backlog, are counted once their connection_made has run: the bound
        # can be passed by that many at most, for a moment.)
        if not guard.admit(len(server_state.connections)):
            return _Refused()
        return BoundedH11Protocol(server_state=server_state, **kwargs)

    return protocol


def listening_socket(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound and listening before uvicorn starts, so that a busy port is a clear
    start-up error (``StartupError`` naming ``what``) instead of uvicorn's ``sys.exit`` inside
    a task. Also used by the store's HTTP server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


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
        self.guard = ConnectionGuard(MAX_CONNECTIONS)
        self.feed = LiveFeed(source.status)
        super().__init__(
            uvicorn.Config(
                create_app(source, token, self.feed),
                # uvicorn calls it like a class; it is a factory (see _bounded_protocol).
                http=cast("type[asyncio.Protocol]", _bounded_protocol(self.guard)),
                log_level="warning",
                access_log=False,
                lifespan="off",
                backlog=128,
                # Open streams are ended by shutdown(); this bounds the stop if one is not.
                timeout_graceful_shutdown=2,
            )
        )
        self.socket = listening_socket(host, port, "health")
        self.bound_port = int(self.socket.getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stats(self) -> dict[str, Any]:
        """For /status: connections, refusals, and the live pages."""
        return {**self.guard.stats(), "live_pages": self.feed.stats()}

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.feed.close()  # uvicorn waits for open connections: end the live pages' streams
        await super().shutdown(sockets)

    async def run_until_exit(self) -> None:
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def on_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
                self.guard.accept_failed(context.get("exception"))
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_exception)
        try:
            await self.serve(sockets=[self.socket])
        finally:
            loop.set_exception_handler(previous)
            self.socket.close()
