"""Request planning and reply checking, pure (no I/O, no pymodbus): :func:`plan_requests`
coalesces a device's tags into as few requests as possible (once, at start-up),
:func:`readings_from_reply` decodes a reply into readings, :func:`check_reply` translates an
exception reply and makes sure the reply answers the request."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

from contract.codes import ErrorCode
from contract.records import Quality, Reading, Value
from drivers.base import RequestError
from drivers.modbus.codec import TagCodec, decode
from drivers.modbus.config import (
    ByteOrder,
    ModbusRtuDevice,
    ModbusTable,
    ModbusTcpDevice,
    ModbusType,
)

# Read function codes per table (Modbus Application Protocol V1.1b3, section 6).
FUNCTION_CODE: dict[ModbusTable, int] = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}

EXCEPTION_CODES: dict[int, ErrorCode] = {
    1: ErrorCode.ILLEGAL_FUNCTION,
    2: ErrorCode.ILLEGAL_DATA_ADDRESS,
    3: ErrorCode.ILLEGAL_DATA_VALUE,
    4: ErrorCode.DEVICE_FAILURE,
    5: ErrorCode.ACKNOWLEDGE,
    6: ErrorCode.DEVICE_BUSY,
    10: ErrorCode.GATEWAY_PATH_UNAVAILABLE,
    11: ErrorCode.GATEWAY_TARGET_NO_RESPONSE,
}

# --------------------------------------------------------------------------- coalescing


# How one tag is taken out of a reply: (name, unit, offset in the reply, width, a fast
# decoder of its single register or bit, or None for the general decode, its codec).
_Step = tuple[str, str | None, int, int, Callable[[int], Value] | None, TagCodec]


def _fast_decoder(codec: TagCodec, bits: bool) -> Callable[[int], Value] | None:
    """A decoder for the common one-register cases, built once per plan: the per-reading work
    of the general path (byte juggling, struct) is most of a poll's CPU."""
    tag = codec.tag
    if bits:
        return bool
    if codec.byte_order is not ByteOrder.BIG:
        return None
    scale, offset = tag.scale, tag.offset
    plain = scale == 1.0 and offset == 0.0
    if tag.type is ModbusType.UINT16:
        return int if plain else (lambda w: float(w * scale + offset))
    if tag.type is ModbusType.INT16:
        if plain:
            return lambda w: w - 0x10000 if w & 0x8000 else w
        return lambda w: float((w - 0x10000 if w & 0x8000 else w) * scale + offset)
    return None


def _as_is(codec: TagCodec, bits: bool) -> bool:
    """Whether the tag's value is its one register or bit unchanged: a plain big-endian uint16
    (pymodbus hands registers over as ints) or a coil / discrete input (as bools)."""
    if bits:
        return True
    tag = codec.tag
    return (
        tag.type is ModbusType.UINT16
        and codec.byte_order is ByteOrder.BIG
        and tag.scale == 1.0
        and tag.offset == 0.0
    )


@dataclass(frozen=True, slots=True)
class _Block:
    """A request whose every tag is one register or bit taken as is (the usual plain-register
    device): its readings are made in C (``map`` over ``zip``), without a Python statement
    per reading."""

    names: tuple[str, ...]
    units: tuple[str | None, ...]
    # None: the tags are the reply's values in order, one each; else their offsets.
    pick: Callable[[Sequence[Any]], Sequence[Any]] | None


def _block(steps: tuple[_Step, ...], count: int, bits: bool) -> _Block | None:
    if len(steps) < 2 or not all(_as_is(c, bits) for *_, c in steps):
        return None
    offsets = [offset for _, _, offset, _, _, _ in steps]
    whole = offsets == list(range(count))
    return _Block(
        names=tuple(name for name, *_ in steps),
        units=tuple(unit for _, unit, *_ in steps),
        pick=None if whole else itemgetter(*offsets),
    )


# tuple.__new__(Reading, fields) makes a Reading from a tuple in C; Reading(...) would call
# the named tuple's Python-level __new__ once per reading.
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class Request:
    """One read request: a contiguous span of a table covering one or more tags."""

    table: ModbusTable
    address: int
    count: int
    tags: tuple[TagCodec, ...]
    steps: tuple[_Step, ...] = field(default=(), compare=False, repr=False)
    block: _Block | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        bits = self.table.is_bit_table
        steps = tuple(
            (
                c.tag.name,
                c.tag.unit,
                c.tag.address - self.address,
                c.tag.width,
                _fast_decoder(c, bits),
                c,
            )
            for c in self.tags
        )
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "block", _block(steps, self.count, bits))

    def __str__(self) -> str:
        return f"{self.table.value}[{self.address}..{self.address + self.count - 1}]"


def plan_requests(
    codecs: Iterable[TagCodec],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap_registers: int = 16,
    max_gap_bits: int = 64,
) -> list[Request]:
    """Group tags into as few requests as possible.

    Per table, tags sorted by address are merged into the current request while the request
    stays within the size limit and the hole between them is at most the allowed gap (reading
    a few unused registers is far cheaper than another round trip). Overlapping tags share
    registers.
    """
    by_table: dict[ModbusTable, list[TagCodec]] = {}
    for codec in codecs:
        by_table.setdefault(codec.tag.table, []).append(codec)
    requests: list[Request] = []
    for table in ModbusTable:  # a fixed table order keeps plans stable
        members = sorted(by_table.get(table, []), key=lambda c: (c.tag.address, -c.tag.width))
        limit = max_bits if table.is_bit_table else max_registers
        gap = max_gap_bits if table.is_bit_table else max_gap_registers
        start = end = -1
        group: list[TagCodec] = []
        for codec in members:
            lo, hi = codec.tag.address, codec.tag.address + codec.tag.width
            if group and lo - end <= gap and max(end, hi) - start <= limit:
                end = max(end, hi)
                group.append(codec)
                continue
            if group:
                requests.append(Request(table, start, end - start, tuple(group)))
            start, end, group = lo, hi, [codec]
        if group:
            requests.append(Request(table, start, end - start, tuple(group)))
    return requests


def plan_for_device(device: ModbusTcpDevice | ModbusRtuDevice) -> list[Request]:
    return plan_requests(
        (TagCodec.for_device(tag, device) for tag in device.tags),
        max_registers=device.workarounds.max_registers_per_request,
        max_bits=device.workarounds.max_bits_per_request,
        max_gap_registers=device.max_gap_registers,
        max_gap_bits=device.max_gap_bits,
    )


def readings_from_reply(
    request: Request, values: Sequence[int] | Sequence[bool], ts: float
) -> list[Reading]:
    """Decode the tags of a request from its reply values (words or bits)."""
    block = request.block
    if block is not None and len(values) >= request.count:
        picked = values if block.pick is None else block.pick(values)
        if request.table.is_bit_table:
            picked = list(map(bool, picked))
        fields = zip(
            repeat(ts), block.names, picked, block.units, repeat(Quality.GOOD), repeat(None)
        )
        return list(map(_new_tuple, repeat(Reading), fields))
    out: list[Reading] = []
    for name, unit, offset, width, fast, codec in request.steps:
        try:
            if fast is not None:
                value = fast(values[offset])
            else:
                value = decode(codec, [int(v) for v in values[offset : offset + width]])
        except ValueError:
            out.append(Reading.bad(ts, name, ErrorCode.DECODE, unit))
        else:
            out.append(Reading(ts, name, value, unit))
    return out


def check_reply(request: Request, reply: Any) -> Sequence[int] | Sequence[bool]:
    """Translate an exception reply and make sure the reply answers *this* request."""
    expected = FUNCTION_CODE[request.table]
    if reply.isError():
        if reply.function_code != expected | 0x80:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: reply to another function")
        code = EXCEPTION_CODES.get(reply.exception_code, ErrorCode.EXCEPTION_OTHER)
        raise RequestError(code, f"{request}: exception {reply.exception_code}")
    if reply.function_code != expected:
        raise RequestError(
            ErrorCode.BAD_REPLY, f"{request}: function {reply.function_code}, expected {expected}"
        )
    if request.table.is_bit_table:
        bits: list[bool] = reply.bits
        # Bits come padded to whole bytes.
        if not request.count <= len(bits) < request.count + 8:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: {len(bits)} bits in reply")
        return bits
    registers: list[int] = reply.registers
    if len(registers) != request.count:
        raise RequestError(
            ErrorCode.BAD_REPLY, f"{request}: {len(registers)} registers, expected {request.count}"
        )
    return registers
