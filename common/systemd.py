"""systemd integration without a dependency: the sd_notify protocol is one datagram.

Under ``Type=notify`` the service says READY=1 once start-up is done (buffer open, health port
bound, drivers created), STOPPING=1 when it begins to stop, and, when the unit sets
``WatchdogSec``, WATCHDOG=1 at half that period from a task on the service's own event loop:
if the loop hangs, the pings stop and systemd restarts the service. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not under systemd (or it failed)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        log.warning("systemd: cannot notify (%s)", exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the unit's WatchdogSec (seconds), if systemd asks this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def feed_watchdog(interval: float) -> None:
    """Ping systemd's watchdog every ``interval`` seconds until cancelled. It runs on the
    service's loop: a blocked loop stops the pings, and systemd restarts the service."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
