"""Typed configuration: one declaration per option (type, default, description), validated once.

``load_config(path)`` parses the YAML, validates the whole tree and either returns a frozen
:class:`Config` or raises :class:`~collector.errors.ConfigError` whose problems read
``FILE:LINE: field.path: what is wrong and what is allowed``. Unknown keys are rejected.
Nothing here touches the network. docs/configuration.md documents every option.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# MQTT topic levels must not contain wildcards or separators.
TOPIC_LEVEL_PATTERN = r"^[^/#+\s]+$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- identity & buffer


class Identity(_Model):
    id: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Collector id: unique per collector; part of the MQTT topic and the dedupe key."
    )
    site: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Site (plant) name, part of the MQTT topic."
    )
    line: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Production line name, part of the MQTT topic."
    )


class Synchronous(StrEnum):
    FULL = "full"
    NORMAL = "normal"


class BufferConfig(_Model):
    path: Path = Field(description="SQLite file of the outbox; its folder must be writable.")
    max_readings: int = Field(
        default=5_000_000,
        ge=1000,
        description="Cap on buffered readings; when full, the oldest are dropped and counted.",
    )
    synchronous: Synchronous = Field(
        default=Synchronous.FULL,
        description="SQLite synchronous mode: full survives power loss; normal (WAL) may lose "
        "the last commits on power loss but never corrupts.",
    )
    commit_interval_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Least time between two commits: the polls of that time go in one "
        "transaction (one fsync) and one message. Lower: less latency; higher: less CPU.",
    )


# --------------------------------------------------------------------------- MQTT


class TlsConfig(_Model):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttVersion(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class MqttConfig(_Model):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    client_id: str | None = Field(
        default=None, max_length=128, description="MQTT client id; default: the collector id."
    )
    version: MqttVersion = Field(default=MqttVersion.V5, description="MQTT protocol version.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive (s).")
    topic_prefix: str = Field(
        default="collector",
        pattern=r"^[^#+\s]+$",
        description="First topic level(s); see docs/messages.md.",
    )
    username: str | None = Field(default=None, description="MQTT user name.")
    password_env: str | None = Field(
        default=None, description="Name of the environment variable holding the password."
    )
    password_file: Path | None = Field(default=None, description="File holding the password.")
    tls: TlsConfig | None = Field(default=None, description="Enable TLS (and set its files).")
    max_message_bytes: int = Field(
        default=256 * 1024, ge=1024, le=256 * 1024 * 1024, description="Cap on one message."
    )
    max_readings_per_message: int = Field(
        default=500, ge=1, le=100_000, description="Cap on readings in one message."
    )
    max_inflight_messages: int = Field(
        default=8, ge=1, le=100, description="Messages published and not yet acknowledged."
    )
    shutdown_grace_s: float = Field(
        default=5.0, ge=0, le=300, description="On SIGTERM, time given to deliver the buffer."
    )
    reconnect_min_ms: int = Field(default=1000, ge=10, description="First reconnect delay.")
    reconnect_max_ms: int = Field(default=30_000, ge=10, description="Longest reconnect delay.")

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self

    def password(self) -> SecretStr | None:
        """Resolve the password from its environment variable or file (read at start-up)."""
        return _secret(self.password_env, self.password_file)


def _secret(env: str | None, file: Path | None) -> SecretStr | None:
    if env is not None:
        value = os.environ.get(env)
        return None if value is None else SecretStr(value)
    if file is not None:
        return SecretStr(file.read_text(encoding="utf-8").rstrip("\r\n"))
    return None


# --------------------------------------------------------------------------- health


class HealthConfig(_Model):
    enabled: bool = Field(default=True, description="Serve /health and /status.")
    host: str = Field(
        default="127.0.0.1",
        description="Bind address; loopback by default. Set 0.0.0.0 only on a trusted network.",
    )
    port: int = Field(default=8180, ge=0, le=65535, description="HTTP port (0: any free port).")
    token_env: str | None = Field(
        default=None,
        description="Environment variable holding the bearer token for the endpoints that "
        "change state (POST /stations/{name}/unit). No token: those endpoints are off.",
    )
    token_file: Path | None = Field(default=None, description="File holding that token.")

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("give token_env or token_file, not both")
        return self

    @property
    def unit_api_enabled(self) -> bool:
        return self.enabled and (self.token_env is not None or self.token_file is not None)

    def token(self) -> SecretStr | None:
        """The bearer token, resolved at start-up; None when the state-changing API is off."""
        return _secret(self.token_env, self.token_file)


# --------------------------------------------------------------------------- stations


class TagRef(_Model):
    device: Name = Field(description="Device name (a device of this station).")
    tag: Name = Field(description="Tag name on that device.")

    def __str__(self) -> str:
        return f"{self.device}.{self.tag}"


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    REWORK = "rework"
    SCRAP = "scrap"
    #: Never configured: what a unit gets when it ends without a verdict (timeout, next serial).
    INCOMPLETE = "incomplete"


class VerdictSource(TagRef):
    map: dict[str, Verdict] | None = Field(
        default=None,
        description="Tag value -> verdict, e.g. {1: pass, 2: fail, 3: rework}. Values not in "
        "the map mean 'no verdict yet'. Without a map: the strings pass/fail/rework/scrap "
        "(any case), and a bool (true: pass, false: fail).",
    )

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML gives {1: pass} an int key; tag values are compared by their text.
        if isinstance(value, dict):
            return {verdict_key(k): v for k, v in value.items()}
        return value

    @field_validator("map")
    @classmethod
    def _no_incomplete(cls, value: dict[str, Verdict] | None) -> dict[str, Verdict] | None:
        if value and Verdict.INCOMPLETE in value.values():
            raise ValueError(
                "'incomplete' is given by the collector; map to pass, fail, rework or scrap"
            )
        return value


def verdict_key(value: object) -> str:
    """How a tag value is looked up in ``verdict.map``: 1, 1.0 and "1" are the same key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class UnitEnd(StrEnum):
    VERDICT = "verdict"
    CYCLE_COMPLETE = "cycle_complete"
    NEXT_SERIAL = "next_serial"


class StationConfig(_Model):
    name: Name = Field(description="Station name, unique on this collector.")
    operation: Name = Field(description="The operation this station performs, e.g. flash.")
    operation_source: TagRef | None = Field(
        default=None,
        description="A device tag naming the operation, for a station that runs several; "
        "`operation` applies while it is empty or unread.",
    )
    serial_source: TagRef | Literal["http"] | None = Field(
        default=None,
        description="Where the unit serial comes from: a device tag (a scanner's `serial`, "
        "Modbus string registers), or `http` for POST /stations/{name}/unit.",
    )
    verdict: VerdictSource | None = Field(
        default=None, description="The tester tag that holds the verdict (result code)."
    )
    failure_code: TagRef | None = Field(
        default=None, description="The tester tag that holds the failure code."
    )
    cycle_complete: TagRef | None = Field(
        default=None, description="A bool tag that turns true when the operation is done."
    )
    unit_end: UnitEnd | None = Field(
        default=None,
        description="What ends a unit besides the next serial and the timeout: verdict (the "
        "verdict tag changes to a verdict), cycle_complete (that tag turns true) or "
        "next_serial. Default: verdict if a verdict tag is set, else next_serial.",
    )
    unit_timeout_s: float = Field(
        default=3600,
        gt=0,
        le=7 * 86400,
        description="A unit still open this long after it started ends with its verdict so "
        "far, or `incomplete`.",
    )
    key_characteristics: list[TagRef] = Field(
        default_factory=list,
        description="Tags whose last, minimum and maximum values go into each unit record.",
    )

    @property
    def end(self) -> UnitEnd:
        if self.unit_end is not None:
            return self.unit_end
        return UnitEnd.VERDICT if self.verdict is not None else UnitEnd.NEXT_SERIAL

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.unit_end is UnitEnd.VERDICT and self.verdict is None:
            raise ValueError("unit_end is 'verdict' but no verdict tag is set")
        if self.unit_end is UnitEnd.CYCLE_COMPLETE and self.cycle_complete is None:
            raise ValueError("unit_end is 'cycle_complete' but no cycle_complete tag is set")
        if self.failure_code is not None and self.verdict is None:
            raise ValueError("failure_code needs a verdict tag as well")
        _reject_duplicates((k.tag for k in self.key_characteristics), "key characteristic tag")
        return self

    def tag_refs(self) -> list[tuple[str, TagRef]]:
        """(field, reference) of every device tag this station reads signals from."""
        refs: list[tuple[str, TagRef | None]] = [
            (
                "serial_source",
                self.serial_source if isinstance(self.serial_source, TagRef) else None,
            ),
            ("operation_source", self.operation_source),
            ("verdict", self.verdict),
            ("failure_code", self.failure_code),
            ("cycle_complete", self.cycle_complete),
        ]
        refs += [(f"key_characteristics[{i}]", k) for i, k in enumerate(self.key_characteristics)]
        return [(f, r) for f, r in refs if r is not None]


# --------------------------------------------------------------------------- Modbus


class ModbusTable(StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bit_table(self) -> bool:
        return self in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)


class ModbusType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


# Registers each fixed-size type spans.
TYPE_REGISTERS: dict[ModbusType, int] = {
    ModbusType.BOOL: 1,
    ModbusType.INT16: 1,
    ModbusType.UINT16: 1,
    ModbusType.INT32: 2,
    ModbusType.UINT32: 2,
    ModbusType.FLOAT32: 2,
    ModbusType.INT64: 4,
    ModbusType.UINT64: 4,
    ModbusType.FLOAT64: 4,
}


class ByteOrder(StrEnum):
    """Order of the two bytes inside one register (big = the Modbus standard)."""

    BIG = "big"
    LITTLE = "little"


class WordOrder(StrEnum):
    """Order of registers in a multi-register value (big = most significant word first)."""

    BIG = "big"
    LITTLE = "little"


class ModbusTag(_Model):
    name: Name = Field(description="Tag name, unique within the device.")
    table: ModbusTable = Field(description="Which of the four Modbus tables.")
    address: int = Field(ge=0, le=65535, description="0-based address in that table.")
    type: ModbusType = Field(default=ModbusType.UINT16, description="Value type.")
    count: int | None = Field(
        default=None, ge=1, le=125, description="Registers of a string (2 characters each)."
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="For bool in a register: bit 0 (LSB) to 15."
    )
    byte_order: ByteOrder | None = Field(default=None, description="Default: the device's.")
    word_order: WordOrder | None = Field(default=None, description="Default: the device's.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="value = raw * scale + offset.")
    unit: str | None = Field(default=None, max_length=32, description="Engineering unit.")

    @model_validator(mode="after")
    def _type_fits_table(self) -> Self:
        if self.table.is_bit_table:
            if self.type is not ModbusType.BOOL:
                raise ValueError(
                    f"type {self.type.value} needs a register table "
                    f"(holding_register or input_register); a {self.table.value} holds bool only"
                )
            if self.bit is not None:
                raise ValueError(f"bit is only for bool in a register, not in a {self.table.value}")
        elif self.type is ModbusType.BOOL and self.bit is None:
            raise ValueError("bool in a register needs bit: 0 (LSB) to 15")
        elif self.type is not ModbusType.BOOL and self.bit is not None:
            raise ValueError("bit is only allowed with type bool")
        if self.type is ModbusType.STRING and self.count is None:
            raise ValueError("type string needs count: the number of registers (1 to 125)")
        if self.type is not ModbusType.STRING and self.count is not None:
            raise ValueError("count is only allowed with type string")
        if self.address + self.width - 1 > 65535:
            raise ValueError(f"address {self.address} + {self.width} registers runs past 65535")
        if self.type in (ModbusType.STRING, ModbusType.BOOL) and (
            self.scale != 1.0 or self.offset != 0.0
        ):
            raise ValueError(f"scale and offset do not apply to type {self.type.value}")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) this tag occupies."""
        if self.table.is_bit_table:
            return 1
        if self.type is ModbusType.STRING:
            assert self.count is not None
            return self.count
        return TYPE_REGISTERS[self.type]


class ModbusWorkarounds(_Model):
    """Device quirks. Defaults are the Modbus specification's limits."""

    max_registers_per_request: int = Field(
        default=125, ge=1, le=125, description="Lower it for devices that reject long reads."
    )
    max_bits_per_request: int = Field(
        default=2000, ge=1, le=2000, description="Lower it for devices that reject long reads."
    )


class _DeviceBase(_Model):
    """What every device has, whatever its protocol."""

    name: Name = Field(description="Device name, unique on this collector.")
    station: Name | None = Field(default=None, description="Station this device belongs to.")
    poll_interval_ms: int = Field(default=1000, ge=10, le=86_400_000, description="Poll period.")
    timeout_ms: int = Field(default=1000, ge=10, le=60_000, description="Per-request timeout.")
    reconnect_min_ms: int = Field(default=500, ge=10, description="First reconnect delay.")
    reconnect_max_ms: int = Field(default=30_000, ge=10, description="Longest reconnect delay.")

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError("reconnect_max_ms must be >= reconnect_min_ms")
        return self

    @property
    def tag_names(self) -> set[str]:
        raise NotImplementedError


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


class _SerialPort(_Model):
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


class _ModbusDevice(_DeviceBase):
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    byte_order: ByteOrder = Field(default=ByteOrder.BIG, description="Default for the tags.")
    word_order: WordOrder = Field(default=WordOrder.BIG, description="Default for the tags.")
    max_gap_registers: int = Field(
        default=16, ge=0, le=124, description="Unused registers bridged to join two requests."
    )
    max_gap_bits: int = Field(
        default=64, ge=0, le=1999, description="Unused bits bridged to join two requests."
    )
    workarounds: ModbusWorkarounds = Field(default_factory=ModbusWorkarounds)
    tags: list[ModbusTag] = Field(min_length=1, description="What to read.")
    tags_csv: Path | None = Field(
        default=None,
        description="A register map (CSV with a header: name, table, address, type, count, "
        "bit, byte_order, word_order, scale, offset, unit), relative to the config file; its "
        "rows are added to tags.",
    )

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[ModbusTag]) -> list[ModbusTag]:
        _reject_duplicates((t.name for t in tags), "tag name")
        return tags

    @model_validator(mode="after")
    def _fits_in_requests(self) -> Self:
        limit = self.workarounds.max_registers_per_request
        for tag in self.tags:
            if not tag.table.is_bit_table and tag.width > limit:
                raise ValueError(
                    f"tag {tag.name!r} spans {tag.width} registers, more than "
                    f"workarounds.max_registers_per_request ({limit})"
                )
        return self

    @property
    def tag_names(self) -> set[str]:
        return {t.name for t in self.tags}


class ModbusTcpDevice(_ModbusDevice):
    protocol: Literal["modbus_tcp"] = Field(description="Modbus TCP (also via a TCP gateway).")
    host: str = Field(description="IP address or host name of the device or gateway.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")


class ModbusRtuDevice(_ModbusDevice, _SerialPort):
    """One unit on an RS-485 bus. Devices with the same ``port`` share it, one request at a
    time; their serial settings must agree."""

    protocol: Literal["modbus_rtu"] = Field(description="Modbus RTU on a serial line.")
    baudrate: int = Field(default=19200, description="Bits per second (Modbus default 19200).")
    parity: Parity = Field(default=Parity.EVEN, description="Parity (Modbus default even).")


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


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


class SerialAsciiDevice(_DeviceBase, _SerialPort):
    """An instrument that speaks ASCII lines: unprompted (listen) or on a command (query)."""

    protocol: Literal["serial_ascii"] = Field(description="ASCII lines on a serial line.")
    mode: Literal["listen", "query"] = Field(description="listen: the device sends by itself.")
    command: str | None = Field(default=None, description="query mode: what to send each poll.")
    terminator: Terminator = Field(default=Terminator.CRLF, description="Line end.")
    encoding: Literal["ascii", "latin-1", "utf-8"] = Field(default="ascii")
    pattern: str = Field(description="Regular expression; its named groups become tags.")
    fields: dict[Name, LineField] = Field(
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


class ScanRoute(_Model):
    """Scans that match ``pattern`` become readings of tag ``tag`` (e.g. a work order)."""

    tag: Name
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _valid(cls, value: str) -> str:
        _compile(value)
        return value


class BarcodeScannerDevice(_DeviceBase, _SerialPort):
    """A barcode scanner in serial mode: each scan that matches ``serial_pattern`` becomes a
    reading of tag ``serial`` (make it the station's serial_source)."""

    protocol: Literal["barcode_scanner"] = Field(description="A serial barcode scanner.")
    poll_interval_ms: int = Field(default=100, ge=10, le=60_000, description="Hand-over period.")
    terminator: Terminator = Field(default=Terminator.CR, description="Line end.")
    encoding: Literal["ascii", "latin-1", "utf-8"] = Field(default="ascii")
    strip_prefix: str = Field(default="", description="Removed from the start of each scan.")
    strip_suffix: str = Field(default="", description="Removed from the end of each scan.")
    serial_pattern: str = Field(default=r"\S+", description="A unit serial (full match).")
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


# --------------------------------------------------------------------------- OPC-UA


class OpcUaPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class OpcUaMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(_Model):
    policy: OpcUaPolicy = Field(default=OpcUaPolicy.NONE, description="Security policy.")
    mode: OpcUaMode = Field(default=OpcUaMode.NONE, description="Message security mode.")
    certificate_file: Path | None = Field(
        default=None, description="This client's application certificate (DER or PEM)."
    )
    private_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    server_certificate_file: Path | None = Field(
        default=None, description="The server certificate to trust (DER or PEM)."
    )
    trusted_certificates_dir: Path | None = Field(
        default=None, description="A folder of trusted server certificates (*.der, *.pem)."
    )
    trust_any_server_certificate: bool = Field(
        default=False,
        description="Accept any server certificate (no protection against a fake server). "
        "Only for a first test; never the default.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.policy is OpcUaPolicy.NONE) != (self.mode is OpcUaMode.NONE):
            raise ValueError(
                "policy None goes with mode None; the other policies need mode Sign or "
                "SignAndEncrypt"
            )
        if self.policy is not OpcUaPolicy.NONE:
            if self.certificate_file is None or self.private_key_file is None:
                raise ValueError(
                    f"policy {self.policy} needs certificate_file and private_key_file (see "
                    "docs/opcua.md for how to create them)"
                )
            if not (
                self.server_certificate_file
                or self.trusted_certificates_dir
                or self.trust_any_server_certificate
            ):
                raise ValueError(
                    "give server_certificate_file or trusted_certificates_dir to check the "
                    "server's certificate (or, knowingly, trust_any_server_certificate: true)"
                )
        return self


class OpcUaUser(_Model):
    username: str | None = Field(default=None, description="User name (with a password).")
    password_env: str | None = Field(default=None, description="Variable holding the password.")
    password_file: Path | None = Field(default=None, description="File holding the password.")
    certificate_file: Path | None = Field(
        default=None, description="A user certificate (X.509 identity) instead of a password."
    )
    private_key_file: Path | None = Field(default=None, description="That certificate's key.")

    @model_validator(mode="after")
    def _one_identity(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        by_password = self.username is not None
        by_certificate = self.certificate_file is not None or self.private_key_file is not None
        if by_password and by_certificate:
            raise ValueError("give username/password or a user certificate, not both")
        if by_certificate and (self.certificate_file is None or self.private_key_file is None):
            raise ValueError("a user certificate needs certificate_file and private_key_file")
        if (self.password_env or self.password_file) and not by_password:
            raise ValueError("a password needs a username")
        return self

    def password(self) -> SecretStr | None:
        return _secret(self.password_env, self.password_file)


class OpcUaCollect(StrEnum):
    POLL = "poll"
    SUBSCRIBE = "subscribe"


class Deadband(_Model):
    type: Literal["absolute", "percent"] = Field(
        description="absolute: in the value's unit; percent: of the node's EURange."
    )
    value: float = Field(gt=0, description="Changes smaller than this are not reported.")


class OpcUaTag(_Model):
    name: Name = Field(description="Tag name, unique per device.")
    node: str | None = Field(
        default=None,
        description="NodeId, e.g. 'ns=2;s=Rack1.Slot03.Temp' or 'i=2258'. Namespace indexes "
        "can change when the server restarts: prefer namespace_uri + id.",
    )
    namespace_uri: str | None = Field(
        default=None, description="Namespace URI, resolved to its index at every connect."
    )
    id: str | None = Field(
        default=None, description="With namespace_uri: the identifier, e.g. 's=Rack1.Slot03.Temp'."
    )
    collect: OpcUaCollect | None = Field(default=None, description="Overrides the device's.")
    deadband: Deadband | None = Field(default=None, description="Overrides the device's.")
    unit: str | None = Field(default=None, description="Engineering unit.")
    scale: float = Field(default=1.0, description="value * scale + offset (numbers only).")
    offset: float = Field(default=0.0)

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node is None) == (self.namespace_uri is None):
            raise ValueError("give node (a NodeId string) or namespace_uri + id, not both")
        if (self.namespace_uri is None) != (self.id is None):
            raise ValueError("namespace_uri and id go together")
        node = self.node if self.node is not None else self.id
        assert node is not None
        if not re.fullmatch(r"(ns=\d+;)?[isgb]=.+", node):
            raise ValueError(
                f"{node!r} is not a NodeId: expected e.g. 'ns=2;s=Name', 'ns=3;i=1001' (or, "
                "with namespace_uri, 's=Name' / 'i=1001')"
            )
        if self.namespace_uri is not None and node.startswith("ns="):
            raise ValueError("with namespace_uri, id has no 'ns=' part")
        return self


class OpcUaDevice(_DeviceBase):
    protocol: Literal["opcua"] = Field(description="An OPC-UA server.")
    endpoint: str = Field(
        pattern=r"^opc\.tcp://[^/\s]+(/\S*)?$", description="opc.tcp://HOST:PORT[/path]"
    )
    collect: OpcUaCollect = Field(
        default=OpcUaCollect.POLL,
        description="poll: one Read of all poll tags per poll_interval_ms; subscribe: the "
        "server reports changes (monitored items).",
    )
    publishing_interval_ms: int = Field(
        default=500, ge=10, le=3_600_000, description="Subscription publishing interval."
    )
    sampling_interval_ms: int = Field(
        default=250, ge=0, le=3_600_000, description="Monitored items' sampling interval."
    )
    queue_size: int = Field(default=10, ge=1, le=10_000, description="Server-side queue per item.")
    deadband: Deadband | None = Field(default=None, description="Default deadband for numbers.")
    keepalive_s: float = Field(
        default=5.0, ge=0.5, le=600, description="How often the session is checked when idle."
    )
    max_nodes_per_read: int = Field(
        default=500, ge=1, le=100_000, description="Nodes per Read call (server limits)."
    )
    max_buffered_changes: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="Subscription changes kept between hand-overs; beyond that the oldest are "
        "dropped and counted.",
    )
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    user: OpcUaUser = Field(default_factory=OpcUaUser, description="Anonymous when empty.")
    tags: list[OpcUaTag] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[OpcUaTag]) -> list[OpcUaTag]:
        _reject_duplicates((t.name for t in tags), "tag name")
        return tags

    @property
    def tag_names(self) -> set[str]:
        return {t.name for t in self.tags}

    def collect_of(self, tag: OpcUaTag) -> OpcUaCollect:
        return tag.collect or self.collect


DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | SerialAsciiDevice | BarcodeScannerDevice | OpcUaDevice,
    Field(discriminator="protocol"),
]


# --------------------------------------------------------------------------- the whole file


class Config(_Model):
    collector: Identity
    buffer: BufferConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    stations: list[StationConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Self:
        _reject_duplicates((s.name for s in self.stations), "station name")
        _reject_duplicates((d.name for d in self.devices), "device name")
        stations = {s.name for s in self.stations}
        devices = {d.name: d for d in self.devices}
        for index, device in enumerate(self.devices):
            if device.station is not None and device.station not in stations:
                raise FieldError(
                    ("devices", index, "station"),
                    f"station {device.station!r} is not defined; defined: {_listing(stations)}",
                )
        buses: dict[str, ModbusRtuDevice] = {}
        for device in self.devices:
            if isinstance(device, ModbusRtuDevice):
                first = buses.setdefault(device.port, device)
                if _line_settings(first) != _line_settings(device):
                    raise ValueError(
                        f"devices {first.name!r} and {device.name!r} share port {device.port} "
                        "but not its settings (baudrate, bytesize, parity, stopbits)"
                    )
        for index, station in enumerate(self.stations):
            for field, ref in station.tag_refs():
                _check_station_ref(index, station.name, field, ref, devices)
            if station.serial_source == "http" and not self.health.unit_api_enabled:
                raise FieldError(
                    ("stations", index, "serial_source"),
                    "'http' needs health.token_env "
                    "or health.token_file (the unit endpoint is off without a token)",
                )
        return self


def _check_station_ref(
    index: int, station: str, field: str, ref: TagRef, devices: dict[str, DeviceConfig]
) -> None:
    loc: list[str | int] = ["stations", index]
    loc += [int(p) if p.isdigit() else p for p in field.replace("[", ".").rstrip("]").split(".")]
    if ref.device not in devices:
        raise FieldError(
            (*loc, "device"), f"device {ref.device!r} is not defined; defined: {_listing(devices)}"
        )
    device = devices[ref.device]
    if ref.tag not in device.tag_names:
        raise FieldError(
            (*loc, "tag"),
            f"{ref.tag!r} is not a tag of device "
            f"{ref.device!r}; its tags: {_listing(device.tag_names)}",
        )
    if device.station != station:
        raise FieldError(
            (*loc, "device"),
            f"device {ref.device!r} belongs to station "
            f"{device.station!r}; it must belong to this station",
        )


def _line_settings(device: _SerialPort) -> tuple[object, ...]:
    return (device.baudrate, device.bytesize, device.parity, device.stopbits)


def _listing(names: Iterable[str]) -> str:
    items = sorted(names)
    return ", ".join(items) if items else "(none)"


class FieldError(ValueError):
    """A cross-reference problem that belongs to a field deeper than the validator that found
    it, so that the error points at that field's line."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


def _reject_duplicates(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


# --------------------------------------------------------------------------- loading

Path_ = tuple[str | int, ...]


def _line_map(
    node: yaml.Node, path: Path_ = (), out: dict[Path_, int] | None = None
) -> dict[Path_, int]:
    """Map every field path in the YAML document to the 1-based line that gives it."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out)
            # Keep the key's own line for the field itself (errors about the key, e.g. unknown).
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), out)
    return out


def _locate(loc: Sequence[str | int], lines: dict[Path_, int]) -> tuple[str, int]:
    """Turn a pydantic error location into (dotted field path, line).

    An element extends the path when the YAML has it; the last element is shown even when the
    YAML lacks it (a missing field); any other element is a pydantic-internal step, such as the
    tag of a discriminated union, and is skipped.
    """
    path: Path_ = ()
    shown = ""
    for index, element in enumerate(loc):
        candidate = (*path, element)
        step = f"[{element}]" if isinstance(element, int) else f".{element}"
        if candidate in lines:
            path = candidate
            shown += step
        elif index == len(loc) - 1:
            shown += step
    return shown.lstrip(".") or "(top level)", lines.get(path, 1)


def _message(error: Any) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (not ignored: check its spelling against docs/configuration.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        allowed = error["ctx"]["expected_tags"].replace("'", "")
        return f"{error['ctx']['tag']!r} is not a protocol; allowed: {allowed}"
    if kind == "union_tag_not_found":
        return "required field is missing (it selects the kind of device)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        if pattern == NAME_PATTERN:
            return (
                f"{error['input']!r} is not a valid name: use letters, digits, '_', '.', '-' "
                "and start with a letter or digit"
            )
        if pattern == TOPIC_LEVEL_PATTERN:
            return f"{error['input']!r} must not contain '/', '#', '+' or spaces (MQTT topic level)"
    if kind == "value_error" or "input" not in error:
        return msg  # our own validators already name the bad value
    return f"{msg}; got {error['input']!r}"


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Validate a YAML document; raise ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{filename}:{line}: (yaml): {exc.problem or exc}"]) from exc
    if node is None or not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: (top level): the file must be a YAML mapping"])
    lines = _line_map(node)
    csv_problems = _load_csv_tags(data, filename, lines)
    if csv_problems:
        raise ConfigError(csv_problems)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error["loc"]
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, error["ctx"]["discriminator"].strip("'"))
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, FieldError):
                loc = (*loc, *cause.loc)
            field, line = _locate(loc, lines)
            problems.append(f"{filename}:{line}: {field}: {_message(error)}")
        raise ConfigError(problems) from None


CSV_COLUMNS = tuple(ModbusTag.model_fields)


def _load_csv_tags(data: dict[str, Any], filename: str, lines: dict[Path_, int]) -> list[str]:
    """Add the rows of each Modbus device's ``tags_csv`` to its tags (in place). Problems read
    ``MAP.csv:LINE: column: what is wrong``, like the config's own."""
    problems: list[str] = []
    devices = data.get("devices")
    if not isinstance(devices, list):
        return problems
    base = Path(filename).parent
    for index, device in enumerate(devices):
        if not isinstance(device, dict) or not device.get("tags_csv"):
            continue
        where = f"{filename}:{lines.get(('devices', index, 'tags_csv'), 1)}"
        path = Path(str(device["tags_csv"]))
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text(encoding="utf-8-sig")  # spreadsheets often write a BOM
        except OSError as exc:
            problems.append(
                f"{where}: devices[{index}].tags_csv: cannot read {str(path)!r}: {exc.strerror}"
            )
            continue
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in reader.fieldnames or []]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        missing = [h for h in ("name", "table", "address") if h not in header]
        if unknown or missing:
            what = []
            if missing:
                what.append(f"missing column(s) {', '.join(missing)}")
            if unknown:
                what.append(f"unknown column(s) {', '.join(unknown)}")
            problems.append(
                f"{path}:1: (header): {'; '.join(what)}; allowed: {', '.join(CSV_COLUMNS)}"
            )
            continue
        tags = list(device.get("tags") or [])
        seen: dict[str, int] = {}
        for row in reader:
            cells = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
            if not cells:
                continue  # a blank line in the sheet
            name = cells.get("name", "")
            if name in seen:
                problems.append(
                    f"{path}:{reader.line_num}: name: duplicate tag name {name!r} "
                    f"(also on line {seen[name]})"
                )
                continue
            seen[name] = reader.line_num
            try:
                ModbusTag.model_validate(cells)
            except ValidationError as exc:
                for error in exc.errors():
                    column = ".".join(str(x) for x in error["loc"]) or "(row)"
                    problems.append(f"{path}:{reader.line_num}: {column}: {_message(error)}")
                continue
            tags.append(cells)
        device["tags"] = tags
        device["tags_csv"] = str(path)
    return problems


def load_config(path: Path | str) -> Config:
    """Read and validate a config file, and check that its secrets can be resolved."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: (file): cannot read: {exc.strerror}"]) from exc
    config = parse_config(text, str(path))
    problems = _environment_problems(config, str(path), text)
    if problems:
        raise ConfigError(problems)
    return config


def _dotted(path: Path_) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _environment_problems(config: Config, filename: str, text: str) -> list[str]:
    """Checks that depend on the machine, not the file: secrets that must exist."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = _line_map(node) if node is not None else {}
    problems: list[str] = []
    mqtt = config.mqtt
    env_path: Path_
    for env_path, env in (
        (("mqtt", "password_env"), mqtt.password_env),
        (("health", "token_env"), config.health.token_env),
    ):
        if env is not None and env not in os.environ:
            line = lines.get(env_path, 1)
            problems.append(
                f"{filename}:{line}: {'.'.join(map(str, env_path))}: environment variable "
                f"{env!r} is not set"
            )
    files: list[tuple[Path_, Path | None]] = [
        (("mqtt", "password_file"), mqtt.password_file),
        (("health", "token_file"), config.health.token_file),
    ]
    if mqtt.tls is not None:
        files += [
            (("mqtt", "tls", "ca_file"), mqtt.tls.ca_file),
            (("mqtt", "tls", "cert_file"), mqtt.tls.cert_file),
            (("mqtt", "tls", "key_file"), mqtt.tls.key_file),
        ]
    for index, device in enumerate(config.devices):
        if not isinstance(device, OpcUaDevice):
            continue
        base: Path_ = ("devices", index)
        env = device.user.password_env
        if env is not None and env not in os.environ:
            line = lines.get((*base, "user", "password_env"), 1)
            problems.append(
                f"{filename}:{line}: devices[{index}].user.password_env: environment variable "
                f"{env!r} is not set"
            )
        sec, user = device.security, device.user
        folder = sec.trusted_certificates_dir
        if folder is not None and not folder.is_dir():
            line = lines.get((*base, "security", "trusted_certificates_dir"), 1)
            problems.append(
                f"{filename}:{line}: devices[{index}].security.trusted_certificates_dir: "
                f"{str(folder)!r} is not a folder"
            )
        files += [
            ((*base, "security", "certificate_file"), sec.certificate_file),
            ((*base, "security", "private_key_file"), sec.private_key_file),
            ((*base, "security", "server_certificate_file"), sec.server_certificate_file),
            ((*base, "user", "password_file"), user.password_file),
            ((*base, "user", "certificate_file"), user.certificate_file),
            ((*base, "user", "private_key_file"), user.private_key_file),
        ]
    for field_path, file in files:
        if file is not None and not os.access(file, os.R_OK):
            line = lines.get(field_path, 1)
            problems.append(
                f"{filename}:{line}: {_dotted(field_path)}: "
                f"file {str(file)!r} does not exist or is not readable"
            )
    return problems
