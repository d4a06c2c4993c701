"""An HTTP server that nothing on the network can use to stop the process's real work: uvicorn
on a socket bound up front (a busy port is a clear start-up error), with its connections
bounded and fresh idle ones closed, and the event loop's "out of file descriptors" reports
taken (counted, logged once) instead of a traceback per pending connection per loop turn.
The collector's health server (collector/operations/health.py) and the store's HTTP API
(store/api.py) are both one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from common.errors import StartupError

log = logging.getLogger(__name__)

# Connections a server keeps open at once (the live pages' streams included). Far
# below the process's file limit, so that idle connections can never take the file descriptors
# the devices and the buffer need; one more is closed as soon as it is accepted.
MAX_CONNECTIONS = 64
# A connection that has not sent a request this long after it opened is closed.
REQUEST_HEAD_TIMEOUT_S = 5.0
# An overload is over when no connection was refused for this long.
EPISODE_QUIET_S = 60.0


class _Connection(Protocol):
    def close_if_idle(self) -> bool:
        """Close the connection if it has not sent a request yet; whether it did."""
        ...


class ConnectionGuard:
    """Keeps a server's connections at :data:`MAX_CONNECTIONS`. At the bound, a new
    connection takes the place of the oldest one that has not sent a request (so idle clients
    cannot lock out a technician or a monitoring probe); when every connection is busy, the new
    one is closed. Each overload is logged once per episode (it ends after
    :data:`EPISODE_QUIET_S` without one: a flood's connections arrive in waves as the client's
    kernel retries them).

    Also takes the event loop's "socket.accept() out of system resource" reports: asyncio
    logs one with a traceback per pending connection per loop turn when the process is out of
    file descriptors, hundreds of thousands of lines that starve the loop (and the polls)."""

    def __init__(
        self, limit: int, what: str = "http", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.what = what  # the server's name in the log: "health" (collector), "http" (store)
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
            log.warning("%s: accepting connections again", self.what)
        if open_before < self.limit:
            self._end_episode()
            return True
        self._episode += 1
        self._last_overload = self._clock()
        if self._episode == 1:
            log.warning(
                "%s: %d connections open, the limit: each new one replaces the oldest that "
                "has sent no request, or is closed when all are busy (idle ones close after "
                "%.0f s); logged once until none for %.0f s",
                self.what,
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
                "%s: no overload for %.0f s; %d connection(s) were closed or refused before",
                self.what,
                EPISODE_QUIET_S,
                self._episode,
            )
            self._episode = 0

    def accept_failed(self, exc: BaseException | None) -> None:
        self.accept_failures_total += 1
        if not self._accept_failing:
            self._accept_failing = True
            log.error(
                "%s: cannot accept connections: %s (the process is out of file "
                "descriptors: raise LimitNOFILE); retrying every second",
                self.what,
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
    a task."""
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


class BoundedServer(uvicorn.Server):
    """uvicorn serving ``app`` on ``host:port`` with a :class:`ConnectionGuard`, without
    uvicorn's own signal handling (the service owns SIGINT and SIGTERM). ``what`` names the
    server in errors and the log."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        what: str,
        *,
        timeout_graceful_shutdown: int | None = None,
    ) -> None:
        self.guard = ConnectionGuard(MAX_CONNECTIONS, what)
        super().__init__(
            uvicorn.Config(
                app,
                # uvicorn calls it like a class; it is a factory (see _bounded_protocol).
                http=cast("type[asyncio.Protocol]", _bounded_protocol(self.guard)),
                log_level="warning",
                access_log=False,
                lifespan="off",
                backlog=128,
                timeout_graceful_shutdown=timeout_graceful_shutdown,
            )
        )
        self.socket = listening_socket(host, port, what)
        self.bound_port = int(self.socket.getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

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
