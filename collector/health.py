"""Read-only health and status over HTTP (FastAPI, served by uvicorn in the service's loop).

The app only reads state through :class:`StatusSource`; nothing here can stop or change
collection. It binds to 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI

from collector import __version__
from collector.errors import StartupError


class StatusSource(Protocol):
    def health(self) -> tuple[str, list[str]]:
        """("ok" | "degraded", reasons)."""
        ...

    async def status(self) -> dict[str, Any]: ...


def create_app(source: StatusSource) -> FastAPI:
    app = FastAPI(title="collector", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """200 while the service loop runs (it serves this very request); status and reasons."""
        state, reasons = source.health()
        return {"status": state, "reasons": reasons}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return await source.status()

    return app


class HealthServer(uvicorn.Server):
    """uvicorn on a socket bound up front, without uvicorn's own signal handling (the service
    owns SIGINT and SIGTERM). Binding first turns a busy port into a clear start-up error
    instead of uvicorn's ``sys.exit`` inside a task."""

    def __init__(self, source: StatusSource, host: str, port: int) -> None:
        super().__init__(
            uvicorn.Config(
                create_app(source), log_level="warning", access_log=False, lifespan="off"
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
