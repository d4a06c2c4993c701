"""Config models of serial ASCII instruments and barcode scanners (``serial_ascii``,
``barcode_scanner``), and the serial line settings Modbus RTU shares. No pyserial here."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from common.config import Model as _Model
from common.config import TagName, compile_pattern
from drivers.base import DeviceBase


class Parity(StrEnum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"
    MARK = "mark"
    SPACE = "space"


class FlowControl(StrEnum):
    NONE = "none"
    RTSCTS = "rtscts"
    XONXOFF = "xonxoff"


BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)


class SerialPort(_Model):
    """A serial line. Prefer /dev/serial/by-id/... names: they survive a USB re-plug."""

    port: str = Field(min_length=1, description="Device path, e.g. /dev/serial/by-id/usb-...")
    baudrate: int = Field(default=9600, description="Bits per second.")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Data bits.")
    parity: Parity = Field(default=Parity.NONE, description="Parity.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    flow_control: FlowControl = Field(default=FlowControl.NONE, description="Flow control.")

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, value: int) -> int:
        if value not in BAUD_RATES:
            raise ValueError(f"baudrate {value} is not one of {', '.join(map(str, BAUD_RATES))}")
        return value


class Terminator(StrEnum):
    CRLF = "crlf"
    LF = "lf"
    CR = "cr"

    @property
    def bytes(self) -> bytes:
        return {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}[self.value]


class FieldType(StrEnum):
    FLOAT = "float"
    INT = "int"
    STRING = "string"
    BOOL = "bool"


class LineField(_Model):
    """How one named group of the pattern becomes a tag."""

    type: FieldType = Field(default=FieldType.FLOAT, description="Value type.")
    scale: float = Field(default=1.0, description="value = number * scale + offset.")
    offset: float = Field(default=0.0, description="value = number * scale + offset.")
    unit: str | None = Field(default=None, max_length=32, description="Engineering unit.")


_compile = compile_pattern


class SerialAsciiDevice(DeviceBase, SerialPort):
    """An instrument that speaks ASCII lines: unprompted (listen) or on a command (query)."""

    protocol: Literal["serial_ascii"] = Field(description="ASCII lines on a serial line.")
    mode: Literal["listen", "query"] = Field(description="listen: the device sends by itself.")
    command: str | None = Field(default=None, description="query mode: what to send each poll.")
    terminator: Terminator = Field(default=Terminator.CRLF, description="Line end.")
    encoding: Literal["ascii", "latin-1", "utf-8"] = Field(default="ascii")
    pattern: str = Field(description="Regular expression; its named groups become tags.")
    fields: dict[TagName, LineField] = Field(
        default_factory=dict, description="Per named group: type, scale, unit (default float)."
    )
    max_line_bytes: int = Field(default=256, ge=8, le=65536, description="Longer: discarded.")

    @model_validator(mode="after")
    def _pattern_and_mode(self) -> Self:
        groups = set(_compile(self.pattern).groupindex)
        if not groups:
            raise ValueError("pattern has no named group, e.g. (?P<weight>[-+0-9.]+)")
        unknown = set(self.fields) - groups
        if unknown:
            raise ValueError(
                f"fields {sorted(unknown)} are not named groups of pattern; groups: "
                f"{', '.join(sorted(groups))}"
            )
        if self.mode == "query" and not self.command:
            raise ValueError("mode query needs command, e.g. 'MEAS:VOLT?'")
        if self.mode == "listen" and self.command:
            raise ValueError("command is only for mode query")
        return self

    @property
    def tag_names(self) -> set[str]:
        return set(_compile(self.pattern).groupindex)

    @property
    def emits_events(self) -> bool:
        # In listen mode the instrument sends a line per measurement: each is an event.
        return self.mode == "listen"


class ScanRoute(_Model):
    """Scans that match ``pattern`` become readings of tag ``tag`` (e.g. a work order)."""

    tag: TagName
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _valid(cls, value: str) -> str:
        _compile(value)
        return value


# The default unit serial (full match): 6 or more of letters, digits and - _ . /, at least one
# of them a digit. Line noise is short or has bytes outside that set (a random byte is in it
# about one time in four); a printable word (HELLO, a label without a number) has no digit.
DEFAULT_SERIAL_PATTERN = r"(?=[^0-9]*[0-9])[-A-Za-z0-9_./]{6,}"


class BarcodeScannerDevice(DeviceBase, SerialPort):
    """A barcode scanner in serial mode: each scan that matches ``serial_pattern`` becomes a
    reading of tag ``serial`` (make it the station's serial_source)."""

    protocol: Literal["barcode_scanner"] = Field(description="A serial barcode scanner.")
    poll_interval_ms: int = Field(default=100, ge=10, le=60_000, description="Hand-over period.")
    terminator: Terminator = Field(default=Terminator.CR, description="Line end.")
    encoding: Literal["ascii", "latin-1", "utf-8"] = Field(default="ascii")
    strip_prefix: str = Field(default="", description="Removed from the start of each scan.")
    strip_suffix: str = Field(default="", description="Removed from the end of each scan.")
    serial_pattern: str = Field(
        default=DEFAULT_SERIAL_PATTERN,
        description="A unit serial (full match); the default takes 6 or more letters, digits "
        "and - _ . / with at least one digit. Set it to your labels' exact shape.",
    )
    routes: list[ScanRoute] = Field(default_factory=list, description="Other codes, by pattern.")
    max_line_bytes: int = Field(default=256, ge=8, le=65536, description="Longer: discarded.")

    @field_validator("serial_pattern")
    @classmethod
    def _valid(cls, value: str) -> str:
        _compile(value)
        return value

    @property
    def tag_names(self) -> set[str]:
        return {"serial"} | {r.tag for r in self.routes}

    @property
    def emits_events(self) -> bool:
        return True  # each scan is an event: the same label scanned again is a retest
