"""Modbus technician tools: ``collector probe modbus://...`` (one read, shown in every type and
byte/word order) and ``collector scan`` (which unit ids answer behind a gateway). They use the
driver's public one-request method (:meth:`ModbusTcpDriver.request`), nothing private.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError

from common.errors import EXIT_CONFIG, EXIT_STARTUP
from contract.codes import ErrorCode
from drivers.base import DeviceError, NotConnectedError, RequestError
from drivers.modbus.codec import interpretations
from drivers.modbus.config import ModbusTable, ModbusTcpDevice
from drivers.modbus.driver import ModbusTcpDriver

GATEWAY_NO_TARGET = (ErrorCode.GATEWAY_PATH_UNAVAILABLE, ErrorCode.GATEWAY_TARGET_NO_RESPONSE)


def tcp_device_from_url(url: str, timeout_ms: int = 1000) -> ModbusTcpDevice:
    """A device config from ``modbus://HOST:PORT?unit=1`` (port 502 when omitted)."""
    parts = urlsplit(url)
    if parts.scheme != "modbus" or not parts.hostname:
        raise ValueError(f"expected modbus://HOST:PORT?unit=N, got {url!r}")
    params = dict(parse_qsl(parts.query))
    unknown = set(params) - {"unit"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; allowed: unit")
    return ModbusTcpDevice.model_validate(
        {
            "name": "probe",
            "protocol": "modbus_tcp",
            "host": parts.hostname,
            "port": parts.port or 502,
            "unit_id": int(params.get("unit", 1)),
            "timeout_ms": timeout_ms,
            "tags": [{"name": "x", "table": "coil", "address": 0, "type": "bool"}],
        }
    )


async def read_raw(
    device: ModbusTcpDevice, table: ModbusTable, address: int, count: int
) -> list[int] | list[bool]:
    """One read, as the device answers it (raises NotConnectedError or RequestError)."""
    driver = ModbusTcpDriver(device)
    try:
        await driver.connect()
        return await driver.request(table, address, count)
    finally:
        await driver.close()


async def scan_units(
    device: ModbusTcpDevice,
    units: Iterable[int],
    table: ModbusTable = ModbusTable.HOLDING_REGISTER,
    address: int = 0,
) -> list[tuple[int, str]]:
    """Which unit ids behind ``device``'s address answer a 1-register read: (unit, what it
    said). A reply of any kind, an exception response included, means the unit is there; no
    answer, or a gateway's "target failed to respond", means it is not. Bounded by the unit
    range and the device's timeout per unit."""
    found: list[tuple[int, str]] = []
    driver = ModbusTcpDriver(device)
    try:
        for unit in units:
            if not driver.connected:
                await driver.close()
                await driver.connect()  # pymodbus drops the link after unanswered requests
            try:
                values = await driver.request(table, address, 1, unit_id=unit)
            except RequestError as exc:
                if exc.code is ErrorCode.TIMEOUT or exc.code in GATEWAY_NO_TARGET:
                    continue
                found.append((unit, f"answers with an exception: {exc.code.value}"))
            except NotConnectedError:
                continue
            else:
                found.append((unit, f"{table.value}[{address}] = {values[0]}"))
    finally:
        await driver.close()
    return found


# --------------------------------------------------------------------------- commands


ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def interpretation_table(rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """The probe's table, each column as wide as its widest cell plus two spaces: a 64-bit
    value (20 digits, or a long float) never runs into its neighbour."""
    rows = list(rows)
    name_width = max([len("type"), *(len(name) for name, _ in rows)]) + 2
    table = [cells for _, cells in rows if len(cells) == len(ORDERS)]  # not the string rows
    widths = [
        max([len(order), *(len(cells[i]) for cells in table)]) + 2 for i, order in enumerate(ORDERS)
    ]
    lines = [
        f"{'type':<{name_width}}"
        + "".join(f"{o:>{w}}" for o, w in zip(ORDERS, widths, strict=True))
    ]
    for name, cells in rows:
        if len(cells) == len(ORDERS):
            line = "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        else:
            line = "  " + "  ".join(cells)  # a string, as long as it is
        lines.append(f"{name:<{name_width}}{line}")
    return "\n".join(lines)


def probe_command(args: argparse.Namespace) -> int:
    """``collector probe modbus://...``: one read, shown in every type and order."""
    table = ModbusTable(args.table)
    limit = 2000 if table.is_bit_table else 125
    if not 1 <= args.count <= limit:
        print(f"probe: --count must be 1..{limit} for {table.value}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        device = tcp_device_from_url(args.url, args.timeout_ms)
    except (ValueError, ValidationError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    where = f"{device.host}:{device.port} unit {device.unit_id}"
    span = f"{table.value}[{args.address}..{args.address + args.count - 1}]"
    try:
        values = asyncio.run(read_raw(device, table, args.address, args.count))
    except DeviceError as exc:
        print(f"probe: {where} {span}: {exc.code.value}: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    print(f"{where} {span}")
    if table.is_bit_table:
        print("bits: " + " ".join("1" if v else "0" for v in values))
        return 0
    words = [int(v) for v in values]
    print(
        "words: "
        + " ".join(f"0x{w:04X}" for w in words)
        + "   ("
        + " ".join(str(w) for w in words)
        + ")"
    )
    print(
        f"\nThe value at address {args.address}, read as each type and byte/word order; "
        "pick the one the device's display shows:"
    )
    print(interpretation_table(interpretations(words, args.address)))
    print(
        "\nIn the config: ABCD = byte_order big, word_order big; CDAB = big, little; "
        "BADC = little, big; DCBA = little, little."
    )
    return 0


def scan_command(args: argparse.Namespace) -> int:
    """``collector scan modbus://...``: which unit ids answer behind a gateway."""
    low, _, high = args.units.partition("-")
    high = high or low
    if not (low.isdigit() and high.isdigit() and 0 <= int(low) <= int(high) <= 247):
        print(
            f"scan: --units {args.units!r}: expected a range within 0-247, e.g. 1-32",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    first, last = int(low), int(high)
    try:
        device = tcp_device_from_url(args.url, args.timeout_ms)
    except (ValueError, ValidationError) as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    count = last - first + 1
    print(
        f"scanning {device.host}:{device.port} units {first}-{last} "
        f"(at most {count * args.timeout_ms / 1000:.0f} s)...",
        flush=True,
    )
    found = asyncio.run(scan_units(device, range(first, last + 1), address=args.address))
    normal = [(unit, what) for unit, what in found if "exception" not in what]
    for unit, what in normal:
        print(f"unit {unit}: {what}")
    odd = [unit for unit, what in found if "exception" in what]
    if odd:
        # Some gateways (and simulators) answer for every unit id, with an exception for the
        # ones that are not there; a real unit may also refuse this address.
        print(f"answered only with an exception: units {', '.join(map(str, odd))}")
    print(f"{len(normal)} unit(s) answered a read; {len(odd)} with an exception only")
    return 0
