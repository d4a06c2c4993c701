"""Serial technician tool: ``collector probe serial://...`` shows each line as it arrives and what
a pattern makes of it. It uses the driver's public exchange (:meth:`SerialAsciiDriver.lines`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError

from common.errors import EXIT_CONFIG, EXIT_STARTUP
from drivers.base import NotConnectedError
from drivers.serial.config import SerialAsciiDevice
from drivers.serial.driver import SerialAsciiDriver
from drivers.serial.lines import LineParser


def probe_device(url: str, query: str | None, pattern: str | None) -> SerialAsciiDevice:
    """A device config from ``serial:///dev/ttyUSB0?baud=9600&parity=even&terminator=crlf``."""
    parts = urlsplit(url)
    if parts.scheme != "serial" or not parts.path:
        raise ValueError(f"expected serial:///dev/PORT?baud=N, got {url!r}")
    params = dict(parse_qsl(parts.query))
    unknown = set(params) - {"baud", "parity", "bytesize", "stopbits", "terminator", "encoding"}
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)}; allowed: baud, parity, "
            "bytesize, stopbits, terminator, encoding"
        )
    spec: dict[str, Any] = {
        "name": "probe",
        "protocol": "serial_ascii",
        "port": parts.path,
        "mode": "query" if query else "listen",
        "command": query,
        "pattern": pattern or r"(?P<line>.*)",
        "timeout_ms": 2000,
        "baudrate": int(params.get("baud", 9600)),
        "parity": params.get("parity", "none"),
        "bytesize": int(params.get("bytesize", 8)),
        "stopbits": int(params.get("stopbits", 1)),
        "terminator": params.get("terminator", "crlf"),
        "encoding": params.get("encoding", "ascii"),
    }
    if pattern is None:
        spec["fields"] = {"line": {"type": "string"}}
    return SerialAsciiDevice.model_validate(spec)


async def probe(device: SerialAsciiDevice, seconds: float, out: Callable[[str], None]) -> int:
    """Show each line as it arrives and what the pattern makes of it, for ``seconds``."""
    driver = SerialAsciiDriver(device)
    await driver.connect()
    parser = LineParser.for_device(device)
    out(
        f"probing {device.port} at {device.baudrate} baud"
        + (f", sending {device.command!r} every second" if device.command else "")
        + f", for {seconds:g} s; Ctrl-C stops"
    )
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            for ts, text in await driver.lines(min(1.0, end - loop.time()), device.command):
                readings = parser.parse(text, ts)
                if readings is None:
                    out(f"{text!r}  -> does not match the pattern")
                else:
                    shown = ", ".join(
                        f"{r.tag}={r.value!r}" if r.error is None else f"{r.tag}: {r.error}"
                        for r in readings
                    )
                    out(f"{text!r}  -> {shown}")
            if device.command:
                await asyncio.sleep(max(0.0, min(1.0, end - loop.time())))
    finally:
        await driver.close()
    return 0


def probe_command(url: str, query: str | None, pattern: str | None, seconds: float) -> int:
    """``collector probe serial://...``: each line, and what the pattern makes of it."""
    try:
        device = probe_device(url, query, pattern)
    except (ValueError, ValidationError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(probe(device, seconds, lambda line: print(line, flush=True)))
    except NotConnectedError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 0
