"""Read-only health and status over HTTP (FastAPI, served by uvicorn in the service's loop).

The app only reads state through :class:`StatusSource`; nothing here can stop or change
collection. It binds to 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI

from collector import __version__


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
    """uvicorn without its own signal handling: the service owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @property
    def bound_port(self) -> int | None:
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None


def make_server(source: StatusSource, host: str, port: int) -> HealthServer:
    config = uvicorn.Config(
        create_app(source),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return HealthServer(config)
