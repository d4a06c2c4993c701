"""The real `collector run` in its own process, for tests that look at it from outside: over
HTTP, in a browser, by its memory (RSS) and its log. The log goes to a file (a pipe nobody
reads would block a collector that logs a lot)."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import async_wait_until


class CollectorProcess:
    def __init__(
        self,
        config: dict[str, Any],
        folder: Path,
        env: dict[str, str] | None = None,
        max_open_files: int | None = None,
    ) -> None:
        self.config = config
        self.folder = folder
        self.env = env or {}
        self.max_open_files = max_open_files
        self.port = int(config["health"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "collector.log"
        self.process: asyncio.subprocess.Process | None = None

    def _limit_files(self) -> None:
        """In the child: the soft file limit systemd gives a service by default (1024)."""
        assert self.max_open_files is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, hard))

    async def start(self) -> None:
        path = self.folder / "collector.yaml"
        path.write_text(yaml.safe_dump(self.config))
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "collector",
                "run",
                "--config",
                str(path),
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                preexec_fn=None if self.max_open_files is None else self._limit_files,
            )
        await async_wait_until(self._answers, 20, f"the collector's health port {self.port}")

    async def _answers(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"the collector exited: {self.log_text()[-2000:]}")
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{self.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"{self.url}/status")
            answer.raise_for_status()
            return answer.json()  # type: ignore[no-any-return]

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError("the collector did not stop on SIGTERM within 30 s") from None
