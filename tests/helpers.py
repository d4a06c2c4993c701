"""Test helpers: a real mosquitto process, an MQTT subscriber that records what arrives,
bounded waits on conditions (never sleep-and-hope), and the collector under test (the shared
line config from tests/cases/, the service in-process or as a process, the command line)."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from collector.service import Service
from contract.decode import (
    ContextBook,
    ContractError,
    FlatReading,
    MetaBook,
    decode_readings,
    expand_polls,
)
from drivers.modbus.sim import codecs

if TYPE_CHECKING:
    from collector.config import Config
    from drivers.modbus.sim import SimulatedModbusServer

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "cases"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Ports are handed out from below the ephemeral range, in turn from a random start: a port the
# kernel gives for bind(0) is an ephemeral one, and an outgoing connection (any client's local
# end) may take it before the server it was meant for binds it, which then fails with "Address
# already in use" (seen in CI: a benchmark's health port). Below the range, only our own
# servers bind; in turn, this process never hands out one port twice.
_PORTS_TO = _ephemeral_low()
_PORTS_FROM = max(1024, _PORTS_TO - 16384)
_next_port = [random.randrange(max(1, _PORTS_TO - _PORTS_FROM))]


def free_port() -> int:
    """A loopback port that was free a moment ago and that no outgoing connection will take."""
    span = _PORTS_TO - _PORTS_FROM
    for _ in range(min(span, 1000)):
        _next_port[0] = (_next_port[0] + 1) % span
        port = _PORTS_FROM + _next_port[0]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or waiting to close): the next one
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackTcpServer:
    """A test's own TCP server on 127.0.0.1 (a proxy, a fake broker) on a free port: a subclass
    serves each connection in :meth:`_accept`; the tasks it starts go through :meth:`_track`,
    so that :meth:`stop` closes the server and cancels everything still running."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll a condition in a thread-blocking way, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


async def async_wait_until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


class Mosquitto:
    """A real mosquitto on a free loopback port; can be stopped and started on the same port."""

    def __init__(
        self,
        workdir: Path,
        extra_conf: str = "",
        anonymous: bool = True,
        port: int | None = None,
        max_queued: int | None = 1_000_000,
    ) -> None:
        binary = mosquitto_binary()
        assert binary is not None
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto would switch to user "mosquitto", which cannot write
            # its persistence file here; stay the user who runs the tests.
            f"user {getpass.getuser()}\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            # Persistence keeps a durable subscriber's session and queue across a broker
            # restart, so a test consumer misses nothing published while it reconnects.
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            # A bound far above any test's traffic, where mosquitto's default (1000) would drop
            # a slow consumer's messages; None keeps the default. Not 0 (unbounded): mosquitto
            # 2.0.11 then ends a client's connection after every publish it refuses.
            + (f"max_queued_messages {max_queued}\n" if max_queued is not None else "")
            + "max_inflight_messages 0\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + extra_conf
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)])
        wait_until(lambda: port_open(self.port), 10, f"mosquitto on port {self.port}")

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(10)
            self.process = None


class Subscriber:
    """Records every message on a topic filter. Durable session (QoS 1, clean_session False)."""

    def __init__(
        self,
        broker: Mosquitto,
        topic: str,
        client_id: str = "test-consumer",
        username: str | None = None,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def payloads(self, suffix: str = "/readings") -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def polls(self, device: str | None = None) -> list[dict[str, Any]]:
        """The poll objects of the readings messages received (of ``device`` only, if
        given), as a consumer reading the JSON itself gets them from
        contract.decode.expand_polls: ``device`` filled in from the tag metadata received
        (a poll by position names it by its meta version), the values in ``value_list``."""
        book = self.meta_book()
        out = []
        for message in self.payloads():
            polls = message["polls"]
            if message.get("schema") == 3:
                expand_polls(polls, devices=book.device, collector=message["collector"])
            out += [p for p in polls if device is None or p.get("device") == device]
        return out

    def readings(self) -> list[dict[str, Any]]:
        """One dict per reading (contract.decode.FlatReading's fields), whatever the
        schema, read with the reference decoder; positional polls resolved with the tag
        metadata received on meta/{device} and the unit contexts on context/# (subscribe to
        them too: the line's ``#``)."""
        book, contexts = self.meta_book(), self.context_book()
        with self._lock:
            payloads = [p for t, p, _ in self.messages if t.endswith("/readings")]
        out = []
        for payload in payloads:
            try:
                decoded = decode_readings(payload, book, contexts)
            except ContractError as exc:
                if exc.kind not in ("unknown_meta", "unknown_context"):
                    raise
                # Parked, as docs/messages.md tells a consumer: its version may still come
                # (a wait polls again); a test that needs every seq sees the gap at its end.
                continue
            out += [{name: getattr(r, name) for name in FlatReading.__slots__} for r in decoded]
        return out

    def context_book(self) -> ContextBook:
        """Every unit-context version received (retained or not), for decode_readings."""
        book = ContextBook()
        with self._lock:
            for topic, payload, _ in self.messages:
                if "/context/" in topic:
                    book.add(payload)
        return book

    def meta_book(self) -> MetaBook:
        """Every tag-metadata version received (retained or not), for decode_readings."""
        book = MetaBook()
        with self._lock:
            for topic, payload, _ in self.messages:
                if "/meta/" in topic:
                    book.add(payload)
        return book

    def metas(self) -> list[dict[str, Any]]:
        """The tag metadata messages received (retained, on meta/{device})."""
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if "/meta/" in t and p]

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.readings()]

    def has_all(self, last: int, first: int = 1) -> bool:
        """Every seq from ``first`` to ``last`` arrived. (The highest seq alone says nothing
        about a backlog: live readings overtake it.)"""
        return set(range(first, last + 1)) <= set(self.seqs())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


SCHEMAS = REPO / "contract" / "schema"


def assert_valid(payload: bytes, schema: str) -> None:
    """The message is valid against contract/schema/<schema> (the file consumers are given)."""
    import jsonschema

    document = json.loads((SCHEMAS / schema).read_text())
    jsonschema.Draft202012Validator(
        document, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(json.loads(payload))


def assert_no_gaps(seqs: list[int], start: int = 1) -> None:
    """Every seq from ``start`` to the highest seen arrived at least once."""
    assert seqs, "no readings arrived"
    missing = sorted(set(range(start, max(seqs) + 1)) - set(seqs))
    assert not missing, f"{len(missing)} seq missing, first ones: {missing[:10]}"


def first_arrival_order(seqs: list[int]) -> list[int]:
    """The seqs in the order of their first arrival (duplicates removed)."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


class PtyPort:
    """A serial port for tests: a pseudo-terminal whose device end the test drives (``master``)
    while the collector opens ``path``, a symlink like /dev/serial/by-id/... .
    ``vanish()`` closes it (the collector's reads fail, as when a USB adapter is pulled);
    ``reappear()`` makes a new pty behind the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = self.slave = -1
        self.reappear()

    def reappear(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes as on a real serial line
        name = os.ttyname(slave)
        # The slave stays open here too: with no slave open, reads on the master fail (EIO).
        self.master, self.slave = master, slave
        tmp = self.path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        tmp.replace(self.path)

    def vanish(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1
        self.path.unlink(missing_ok=True)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            self.vanish()


class PtyLink:
    """Two pty ports joined back to back (what `socat pty pty` does): bytes written on one path
    come out of the other. For a Modbus RTU server on one end and the collector on the other;
    ``inject`` puts raw bytes on the collector's side as line noise."""

    def __init__(
        self, folder: Path, loop: asyncio.AbstractEventLoop, absent_units: set[int] | None = None
    ) -> None:
        self.a = PtyPort(folder / "ttyCOLLECTOR")
        self.b = PtyPort(folder / "ttyDEVICE")
        self._loop = loop
        # RTU frames start with the unit id: requests to an absent unit reach no one, as on a
        # bus where that unit is dead (the simulator itself would answer "device failure").
        self.absent_units = absent_units or set()
        loop.add_reader(self.a.master, self._relay, self.a, self.b)
        loop.add_reader(self.b.master, self._relay, self.b, self.a)

    def _relay(self, source: PtyPort, sink: PtyPort) -> None:
        try:
            data = os.read(source.master, 4096)
        except OSError:
            return
        if source is self.a and data and data[0] in self.absent_units:
            return
        os.write(sink.master, data)

    def inject(self, data: bytes) -> None:
        os.write(self.a.master, data)

    def close(self) -> None:
        for port in (self.a, self.b):
            self._loop.remove_reader(port.master)
            port.close()


# ------------------------------------------------------------------ the collector under test

#: Every topic the line of tests/cases/line.yaml publishes to.
TOPIC = "collector/plant-a/line-1/pc1/#"


def config_dict(broker: Mosquitto, modbus_port: int, buffer: Path, **mqtt: Any) -> dict[str, Any]:
    """tests/cases/line.yaml for this run: the broker, the Modbus server, the buffer file and
    any ``mqtt`` options to override."""
    config: dict[str, Any] = yaml.safe_load((CASES / "line.yaml").read_text(encoding="utf-8"))
    config["buffer"]["path"] = str(buffer)
    config["mqtt"] |= {"host": broker.host, "port": broker.port, **mqtt}
    for device in config["devices"]:
        device["port"] = modbus_port
    return config


def write_config(path: Path, broker: Mosquitto, modbus_port: int, buffer: Path) -> Path:
    path.write_text(yaml.safe_dump(config_dict(broker, modbus_port, buffer)))
    return path


async def set_tester(server: SimulatedModbusServer, config: Config, **values: Any) -> None:
    """Set the tester's tags (by name) in the simulated Modbus server."""
    tags = codecs(config.devices[0])
    for name, value in values.items():
        await server.set_value(1, tags[name], value)


class RunningService:
    """The service in this process, as ``async with``: started and ready, then stopped."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service = Service(config)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningService:
        self.task = asyncio.create_task(self.service.run(self.stop))
        await asyncio.wait_for(self.service.ready.wait(), 10)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


async def start_collector(config: Path) -> asyncio.subprocess.Process:
    """``collector run`` as a process of its own (stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def collector(*args: str) -> tuple[int, str, str]:
    """``collector ARGS`` as a subprocess from a test's event loop: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``collector ARGS`` in the repository, bounded to a minute."""
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def require_systemd_analyze() -> str:
    """systemd-analyze's path: fail on CI, skip (saying why) elsewhere."""
    import pytest  # a test dependency: bench/ uses these helpers without it

    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed; .ci/run must install systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


class EventClient:
    """One server-sent-events stream over its own connection, recording what arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.code: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.create_task(self._read())
        await async_wait_until(lambda: self.code is not None, 10, "the stream's answer")

    async def _read(self) -> None:
        import httpx  # a test dependency: bench/ uses these helpers without it

        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", f"http://127.0.0.1:{self.port}/events") as answer,
        ):
            self.code = answer.status_code
            if answer.status_code != 200:
                return
            event = None
            async for line in answer.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "status":
                    self.statuses.append(json.loads(line[6:]))
                    self.arrivals.append(time.monotonic())

    async def close(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# Browser tests: Debian's chromium driven by Playwright (no browser download). Without the
# background-networking flags chromium tries to reach Google's hosts at every start.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_or_skip() -> str:
    """Browser tests need Debian's chromium: fail on CI (.ci/run installs it), skip elsewhere."""
    if shutil.which(CHROMIUM) is None:
        import pytest

        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM
