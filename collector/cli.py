"""Command line: ``collector run | check | probe | scan | browse | opcua-cert | buffer | schema |
store | demo`` (``--help`` lists them from the parser itself).

Exit codes: 0 success, 1 start-up failure (e.g. the buffer cannot be opened), 2 invalid config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from collector import __version__
from common.errors import EXIT_CONFIG, EXIT_STARTUP, ConfigError, StartupError

if TYPE_CHECKING:
    from collector.config import Config

# The collector's config model (pydantic, the driver registry) is imported by the commands that
# read a config, not here: `collector store ...` starts without it (a store process is started
# often, and tests start hundreds).

log = logging.getLogger("collector")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, logger, message (and ts outside journald, which
    stamps lines itself), for log shippers that parse fields."""

    def __init__(self, with_time: bool) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        import orjson  # noqa: PLC0415

        entry: dict[str, object] = {}
        if self.with_time:
            entry["ts"] = datetime.fromtimestamp(record.created, UTC)
        entry |= {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, option=orjson.OPT_UTC_Z).decode()


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    # Under systemd, journald stamps every line itself: do not print a second timestamp.
    under_journald = "JOURNAL_STREAM" in os.environ
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(with_time=not under_journald))
    else:
        fmt = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt if under_journald else "%(asctime)s " + fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collector")
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line (level, logger, message; ts outside journald)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service in the foreground until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, type=Path)

    check = sub.add_parser("check", help="validate a config without touching the network")
    check.add_argument("--config", required=True, type=Path)

    probe = sub.add_parser(
        "probe", help="read a device by hand: Modbus registers in every type, or serial lines"
    )
    probe.add_argument(
        "url",
        help="modbus://HOST:PORT?unit=1, or "
        "serial:///dev/ttyUSB0?baud=9600&parity=none&terminator=crlf",
    )
    probe.add_argument(
        "--table",
        default="holding_register",
        choices=["holding_register", "input_register", "coil", "discrete_input"],
        help="Modbus: the table (default holding_register)",
    )
    probe.add_argument("--address", type=int, default=0, help="Modbus: 0-based address")
    probe.add_argument("--count", type=int, default=4, help="Modbus: registers or bits (4)")
    probe.add_argument("--timeout-ms", type=int, default=1000, help="Modbus: per request")
    probe.add_argument("--query", help="serial: send this each second (e.g. 'MEAS:VOLT?')")
    probe.add_argument("--pattern", help="serial: regular expression with named groups to try")
    probe.add_argument("--seconds", type=float, default=30.0, help="serial: how long (30)")

    scan = sub.add_parser("scan", help="find the unit ids that answer behind a Modbus gateway")
    scan.add_argument("url", help="modbus://HOST:PORT")
    scan.add_argument("--units", default="1-247", help="range, e.g. 1-32 (default 1-247)")
    scan.add_argument("--timeout-ms", type=int, default=300, help="wait per unit (300)")
    scan.add_argument("--address", type=int, default=0, help="holding register to read (0)")

    browse = sub.add_parser("browse", help="list an OPC-UA server's nodes, to copy NodeIds")
    browse.add_argument("endpoint", help="opc.tcp://HOST:PORT[/path]")
    browse.add_argument(
        "--security",
        default="None",
        help="POLICY,MODE e.g. Basic256Sha256,SignAndEncrypt (default: None)",
    )
    browse.add_argument("--cert", type=Path, help="this client's certificate (see opcua-cert)")
    browse.add_argument("--key", type=Path, help="its private key")
    browse.add_argument("--server-cert", type=Path, help="the server certificate to trust")
    browse.add_argument(
        "--trust-any-server",
        action="store_true",
        help="accept whatever certificate the server shows (prints its fingerprint)",
    )
    browse.add_argument(
        "--save-server-cert",
        type=Path,
        metavar="FILE",
        help="write the certificate the server shows to FILE (DER), to trust it in the config",
    )
    browse.add_argument("--user", help="user name; the password is read from $OPCUA_PASSWORD")
    browse.add_argument("--depth", type=int, default=6, help="how deep (default 6)")
    browse.add_argument("--max-nodes", type=int, default=5000, help="stop after N nodes")
    browse.add_argument("--all", action="store_true", help="include the standard's objects")

    cert = sub.add_parser("opcua-cert", help="create this collector's OPC-UA certificate")
    cert.add_argument("--cert", type=Path, required=True, help="certificate to write (DER)")
    cert.add_argument("--key", type=Path, required=True, help="private key to write (PEM)")

    buffer = sub.add_parser("buffer", help="inspect a buffer file (read-only, also while running)")
    buffer_sub = buffer.add_subparsers(dest="buffer_command", required=True)
    for name, text in (
        ("stats", "counts, seq and time ranges, drops"),
        ("export", "rows as JSON lines, oldest first"),
    ):
        cmd = buffer_sub.add_parser(name, help=text)
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="the config naming the buffer")
        where.add_argument("--path", type=Path, help="the buffer file itself")
        if name == "export":
            cmd.add_argument(
                "--since",
                help="read at or after: 2026-11-20T06:00:00Z, or an age like 90m, 36h, 3d",
            )
            cmd.add_argument(
                "--table", default="readings", choices=["readings", "units", "quarantine"]
            )

    sub.add_parser("schema", help="print the config's JSON Schema (for editor completion)")

    store = sub.add_parser("store", add_help=False, help="the central store (docs/store.md)")
    store.add_argument("store_args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="run a simulated line and a collector for it")
    demo.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    demo.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    demo.add_argument(
        "--buffer", type=Path, default=None, help="buffer file (default: in the temp folder)"
    )
    demo.add_argument("--quiet", action="store_true", help="no live view")
    demo.add_argument(
        "--delivery",
        choices=["broker", "store"],
        default="broker",
        help="mqtt.delivery: broker (default: no store runs) or store (one runs)",
    )
    # The description names every command from the parser itself, so none can be left out.
    parser.description = (
        f"Commands: {' | '.join(sub.choices)}. Exit codes: 0 success, 1 start-up failure "
        "(e.g. the buffer cannot be opened), 2 invalid config."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``collector buffer export | head -1``): end quietly, as cat
        # does. stdout is pointed at /dev/null so that the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    # "collector store --help": options before the store's own command are the store's.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "store":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.log_level, json_lines=args.log_format == "json")
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        from collector.config import load_config  # noqa: PLC0415 - see the imports' comment
        from collector.config.loader import config_warnings  # noqa: PLC0415

        try:
            # starting: what the start needs of the machine (buffer.path), as check says it
            config = load_config(args.config, starting=True)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        for warning in config_warnings(config, args.config):
            log.warning("%s", warning)
        return run_service(config, args.config)
    if args.command == "probe" and args.url.startswith("modbus://"):
        from drivers.modbus.tools import probe_command  # noqa: PLC0415 - only probe needs it

        return probe_command(args)
    if args.command == "probe":
        from drivers.serial.tools import probe_command as serial_probe  # noqa: PLC0415

        return serial_probe(args.url, args.query, args.pattern, args.seconds)
    if args.command == "scan":
        from drivers.modbus.tools import scan_command  # noqa: PLC0415

        return scan_command(args)
    if args.command == "browse":
        from drivers.opcua.tools import browse_command  # noqa: PLC0415 - loads asyncua

        return browse_command(args)
    if args.command == "buffer":
        return _buffer(args)
    if args.command == "schema":
        from collector.config import Config  # noqa: PLC0415 - see the imports' comment

        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    if args.command == "store":
        from store.cli import main as store_main  # noqa: PLC0415 - the store is its own package

        return store_main([*extra, *args.store_args])
    if args.command == "opcua-cert":
        from drivers.opcua.tools import opcua_cert_command  # noqa: PLC0415 - loads asyncua

        return opcua_cert_command(args.cert, args.key)
    if args.command == "demo":
        from collector.demo.line import run_demo  # noqa: PLC0415 - only the demo needs the simulator

        return run_demo(
            args.broker, args.duration, args.buffer, quiet=args.quiet, delivery=args.delivery
        )
    return EXIT_CONFIG  # pragma: no cover - argparse rejects unknown commands


def _check(path: Path) -> int:
    from collector.config import load_config  # noqa: PLC0415 - see the imports' comment
    from collector.config.loader import config_warnings  # noqa: PLC0415

    try:
        config = load_config(path, starting=True)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_CONFIG
    from drivers.registry import create_driver  # noqa: PLC0415 - light until it is valid

    print(f"{path}: OK ({len(config.devices)} device(s), {len(config.stations)} station(s))")
    for warning in config_warnings(config, path):
        print(warning)
    for device in config.devices:
        print(f"  {device.name}: {create_driver(device).describe()}")
    return 0


def run_service(config: Config, path: Path | None = None) -> int:
    from collector.service import Service  # noqa: PLC0415

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = Service(config)
        reloads: set[asyncio.Task[bool]] = set()
        if path is not None:
            service.config_path = path

            def reload() -> None:
                # SIGHUP (systemctl reload): re-read the config; the service goes on either way.
                task = asyncio.create_task(service.reload(path), name="reload")
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
        await service.run(stop)

    try:
        asyncio.run(main_loop())
    except StartupError as exc:
        log.error("cannot start: %s", exc)  # noqa: TRY400 - a clear line, not a traceback
        return EXIT_STARTUP
    return 0


def parse_since(text: str, now: float | None = None) -> float:
    """An RFC 3339 time (UTC when it has no offset) or an age: 90m, 36h, 3d, 2w."""
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if age:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[age.group(2)]
        return (time.time() if now is None else now) - float(age.group(1)) * seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 2026-11-20T06:00:00Z or 36h") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _buffer(args: argparse.Namespace) -> int:
    from collector.buffer import export_rows, inspect_stats  # noqa: PLC0415

    path: Path = args.path
    if args.config is not None:
        from collector.config import load_config  # noqa: PLC0415 - see the imports' comment

        try:
            path = load_config(args.config).buffer.path
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    try:
        if args.buffer_command == "stats":
            print(json.dumps(inspect_stats(path), indent=2))
            return 0
        since = parse_since(args.since) if args.since else None
        out = sys.stdout.buffer
        for line in export_rows(path, args.table, since):
            out.write(line + b"\n")
        out.flush()
    except ValueError as exc:
        print(f"buffer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"buffer: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0
