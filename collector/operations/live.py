"""The live page's feed: one /status snapshot a second, sent to every open page by server-sent
events (``GET /events``), and the page's files (``GET /``, ``GET /page/...``).

Bounds, so that a page left open (or many) cannot grow the collector:

- One producer computes the snapshot, once a second, only while a page is open; every page
  gets the same bytes. Nothing is queued per page: a page that reads slowly gets the newest
  snapshot when it is ready for one (older ones are skipped), and uvicorn stops writing to a
  connection whose socket buffer is full.
- At most ``max_clients`` pages at once; the next one gets 503 and retries later.
- A page's stream ends when its connection closes (Starlette cancels it) and when the server
  stops (:meth:`LiveFeed.close`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from collector.operations.advice import advice_json

log = logging.getLogger(__name__)

#: The page's files, shipped as package data (no CDN: a line PC often has no internet).
PAGE_FILES = {
    "page.js": "text/javascript; charset=utf-8",
    "deviation.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
#: Only this origin's scripts and styles, no framing, no form posted by the browser itself
#: (the deviation form is sent by deviation.js, with the token as a header): the page needs
#: nothing else.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# Tells a browser's EventSource to reconnect 2 s after a lost stream.
RETRY_MS = 2000
# A comment line on an idle stream lets proxies and the browser see it is alive.
KEEPALIVE_S = 15.0


def encode_status(status: dict[str, Any]) -> bytes:
    """/status as JSON. orjson, not FastAPI's encoder: with a few thousand tags that one takes
    a few hundred milliseconds of the event loop (the polls' loop), orjson about one. Enums are
    their values; anything unexpected becomes its text rather than an error."""
    return orjson.dumps(status, default=str, option=orjson.OPT_NON_STR_KEYS)


class LiveFeed:
    """The newest /status snapshot as an SSE event, shared by every open page."""

    def __init__(
        self,
        status: Callable[[], Awaitable[dict[str, Any]]],
        *,
        max_clients: int = 8,
        period_s: float = 1.0,
    ) -> None:
        self._status = status
        self.max_clients = max_clients
        self.period_s = period_s
        self.clients = 0
        self.refused_total = 0
        self.events_sent_total = 0
        self._latest: bytes | None = None
        self._fresh = asyncio.Event()
        self._closed = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._failing = False

    def stats(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "max_clients": self.max_clients,
            "refused_total": self.refused_total,
            "events_sent_total": self.events_sent_total,
        }

    def close(self) -> None:
        """End every stream (the server is stopping; uvicorn waits for open connections)."""
        self._closed.set()

    def admit(self) -> bool:
        if self.clients >= self.max_clients or self._closed.is_set():
            self.refused_total += 1
            return False
        self.clients += 1
        if self._producer is None:
            self._producer = asyncio.create_task(self._produce(), name="live-page-feed")
        return True

    def leave(self) -> None:
        self.clients -= 1
        if self.clients == 0 and self._producer is not None:
            self._producer.cancel()
            self._producer = None
            self._latest = None

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                snapshot = await self._status()
            except Exception:
                # A broken snapshot must not end the feed (nor the service): log it once until
                # one succeeds, and the pages keep their last picture and show its age.
                if not self._failing:
                    log.exception("live page: the status snapshot failed")
                self._failing = True
            else:
                self._failing = False
                self._latest = b"event: status\ndata: " + encode_status(snapshot) + b"\n\n"
                fresh, self._fresh = self._fresh, asyncio.Event()
                fresh.set()
            await asyncio.sleep(max(0.0, self.period_s - (loop.time() - started)))

    async def stream(self) -> AsyncIterator[bytes]:
        """One page's events (the caller was admitted, and calls ``leave`` when it ends)."""
        yield f"retry: {RETRY_MS}\n\n".encode()
        if self._latest is not None:
            self.events_sent_total += 1
            yield self._latest
        while not self._closed.is_set():
            fresh = self._fresh
            waits = [
                asyncio.ensure_future(fresh.wait()),
                asyncio.ensure_future(self._closed.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if self._closed.is_set():
                break
            if fresh.is_set() and self._latest is not None:
                self.events_sent_total += 1
                yield self._latest
            else:
                yield b": keep-alive\n\n"


class _EventStream(StreamingResponse):
    """A page's stream; its slot is given back however the stream ends (the client went away,
    the server stopped, or the response never started)."""

    def __init__(self, feed: LiveFeed) -> None:
        super().__init__(
            feed.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._feed.leave()


def _page_file(name: str) -> bytes:
    return (resources.files("collector.operations") / "page" / name).read_bytes()


def add_page_routes(app: FastAPI, feed: LiveFeed) -> None:
    """``GET /`` (the page), ``GET /page/{file}``, ``GET /page/advice.json``, ``GET /events``.
    All read-only, like /status."""
    # Read once: a handful of kilobytes, and no file access per request.
    index = _page_file("index.html")
    files = {name: (_page_file(name), media) for name, media in PAGE_FILES.items()}
    advice = orjson.dumps(advice_json())

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # none: a browser asks for one; say so quietly

    @app.get("/page/advice.json", include_in_schema=False)
    async def page_advice() -> Response:
        return Response(advice, media_type="application/json", headers=PAGE_HEADERS)

    @app.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, f"no page file {name!r}")
        body, media = files[name]
        return Response(body, media_type=media, headers=PAGE_HEADERS)

    @app.get("/events")
    async def events() -> Response:
        """Server-sent events: ``event: status`` with the /status JSON, at most once a second."""
        if not feed.admit():
            raise HTTPException(
                503,
                f"{feed.max_clients} live pages are open already (the limit); retry later",
                headers={"Retry-After": "10"},
            )
        return _EventStream(feed)
