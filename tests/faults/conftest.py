"""Fixtures of the fault suite: a TCP proxy that can go silent, a small disk, TLS files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import LoopbackTcpServer


class SilentProxy(LoopbackTcpServer):
    """A TCP proxy on 127.0.0.1. ``go_silent()`` makes every open connection swallow bytes in
    both directions without closing (a pulled cable, a dead NAT entry: no FIN, no RST); new
    connections are refused meanwhile. ``recover()`` accepts and forwards again."""

    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.silent = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.silent:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._track(asyncio.create_task(self._pump(source, sink)))

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if self.silent:
                    continue  # swallowed: the peer never learns
                sink.write(data)
                await sink.drain()
        if not self.silent:
            sink.close()

    def go_silent(self) -> None:
        self.silent = True

    def recover(self) -> None:
        self.silent = False


@pytest.fixture
async def proxy_to(request: pytest.FixtureRequest) -> AsyncIterator[type[SilentProxy]]:
    proxies: list[SilentProxy] = []

    class Tracked(SilentProxy):
        async def start(self) -> None:
            await super().start()
            proxies.append(self)

    yield Tracked
    for proxy in proxies:
        await proxy.stop()


@dataclass
class SmallDisk:
    """A folder with little space: a real tmpfs when this test may mount one, else a folder
    whose SQLite buffer is capped with max_page_count (SQLite then fails with the same
    SQLITE_FULL, "database or disk is full", as on a full disk)."""

    path: Path
    tmpfs: bool

    def grow(self) -> None:
        """Give the space back."""
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = False
    if os.geteuid() == 0:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
            capture_output=True,
            check=False,
        )
        mounted = result.returncode == 0
    if not mounted:
        print("small_disk: cannot mount a tmpfs here; capping the SQLite file instead")
    yield SmallDisk(mount_point, mounted)
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    #: A client certificate the broker does not trust (signed by the other CA).
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def _make_cert(folder: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    ca = _make_ca(folder, "test-ca")
    other = _make_ca(folder, "other-ca")
    server = _make_cert(folder, "broker", ca, "IP:127.0.0.1,DNS:localhost")
    client = _make_cert(folder, "collector", ca, "DNS:collector")
    stranger = _make_cert(folder, "stranger", other, "DNS:collector")
    return TlsFiles(
        ca[0], server[0], server[1], client[0], client[1], other[0], stranger[0], stranger[1]
    )
