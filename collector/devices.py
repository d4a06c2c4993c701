"""What every device config is, whatever its protocol: the base the protocol packages build on.

Each protocol package (drivers/modbus, drivers/opcua, drivers/serial) declares its config
models on :class:`DeviceBase`; the core (collector.config, collector.context, collector.service)
only ever asks a device what this base offers: its name, station and tags, whether its readings
are events (:attr:`DeviceBase.emits_events`), which files and environment variables hold its
secrets (:meth:`DeviceBase.secret_files`, :meth:`DeviceBase.secret_envs`) and which line it
shares with other devices (:meth:`DeviceBase.shared_line`). It never names a protocol's class.

This module imports nothing of collector.config (which builds its device union from the
protocol packages, so the packages must not import it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, NamedTuple, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


def _not_an_index(name: str) -> str:
    # Schema-2 messages key values by tag name, and JavaScript (a browser, Node-RED) moves
    # integer-like keys to the front of an object: "17" would silently reorder the tags.
    if re.fullmatch(r"0|[1-9][0-9]*", name):
        raise ValueError(
            f"tag name {name!r} is a whole number, which JSON consumers reorder; give it a "
            f"letter, e.g. 'r{name}'"
        )
    return name


#: A tag's name: a Name that is not a canonical whole number.
TagName = Annotated[Name, AfterValidator(_not_an_index)]


def _host(value: str) -> str:
    if not value.strip() or value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a host: give an IP address or a host name")
    return value


#: A host name or address: not empty, no spaces.
Host = Annotated[str, Field(max_length=253), AfterValidator(_host)]

#: Longest regular expression a config may give (a real one is a line).
MAX_PATTERN_CHARS = 1000


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A config's regular expression, or ValueError saying why not (a huge repeat count, e.g.
    ``a{99999999999}``, raises OverflowError in ``re``: reported, not a traceback)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        shown = repr(pattern) if len(pattern) <= 60 else f"{pattern[:60]!r}..."
        raise ValueError(f"{shown} is not a regular expression: {exc}") from None


#: A field's place in the config, e.g. ("devices", 2, "user", "password_file").
FieldPath = tuple[str | int, ...]


def dotted(path: FieldPath) -> str:
    """A field path as the config's error messages show it: ``devices[2].user.password_file``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


class Model(BaseModel):
    """Every config model: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FileKind(StrEnum):
    #: Holds a secret (a password, a private key): must not be readable by other users.
    SECRET = "secret"  # noqa: S105 - a kind of file, not a password
    #: A certificate or CA bundle the secure link needs: must be readable.
    FILE = "file"
    #: A folder of trusted certificates: must be a folder.
    FOLDER = "folder"


class SecretFile(NamedTuple):
    """A file (or folder) the config names for a secure link, where it is named."""

    field: FieldPath
    path: Path | None
    kind: FileKind


class SecretEnv(NamedTuple):
    """An environment variable the config names for a secret, where it is named."""

    field: FieldPath
    name: str | None


class SharedLine(NamedTuple):
    """A line several devices use one request at a time (an RS-485 bus): devices with the same
    ``key`` must agree on ``settings``."""

    key: str
    port: str
    settings: dict[str, object]


def secret(env: str | None, file: Path | None) -> SecretStr | None:
    """A secret from its environment variable or file (read at start-up)."""
    if env is not None:
        value = os.environ.get(env)
        return None if value is None else SecretStr(value)
    if file is not None:
        return SecretStr(file.read_text(encoding="utf-8").rstrip("\r\n"))
    return None


def reject_duplicates(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


class DeviceBase(Model):
    """What every device has, whatever its protocol."""

    if TYPE_CHECKING:
        # Each protocol's model declares it as a Literal: the discriminator of the union.
        protocol: str

    #: A model for the rows of ``tags_csv`` (a register map), for protocols that take one.
    csv_tag_model: ClassVar[type[Model] | None] = None

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

    def tag_slots(self) -> dict[str, int]:
        """Tag -> rack slot, for tags that belong to one slot of a rack (collector.context
        routes their readings to that slot's station)."""
        tags = getattr(self, "tags", None) or []
        return {t.name: t.slot for t in tags if getattr(t, "slot", None) is not None}

    @property
    def emits_events(self) -> bool:
        """Whether each reading is an event (a scan, a line sent unprompted) rather than a
        polled value that repeats every poll (collector.context treats them differently)."""
        return False

    def tag_meta(self) -> dict[str, dict[str, object]]:
        """Each tag's metadata for the retained ``meta/{device}`` message (docs/messages.md):
        engineering unit, value type, scale, offset and station, from the tag's declaration
        (a ``tags`` list of models or a ``fields`` mapping, whichever the protocol has);
        null where the protocol does not say. A protocol may override it."""
        declared: dict[str, object] = {t.name: t for t in getattr(self, "tags", None) or ()}
        declared.update(getattr(self, "fields", None) or {})
        meta: dict[str, dict[str, object]] = {}
        for name in sorted(self.tag_names):
            tag = declared.get(name)
            kind = getattr(tag, "type", None)
            meta[name] = {
                "unit": getattr(tag, "unit", None),
                "type": None if kind is None else str(kind),
                "scale": float(getattr(tag, "scale", 1.0)),
                "offset": float(getattr(tag, "offset", 0.0)),
                "station": self.station,
            }
        return meta

    def secret_files(self) -> list[SecretFile]:
        """The files this device's secure link needs, relative to the device's own fields."""
        return []

    def secret_envs(self) -> list[SecretEnv]:
        """The environment variables holding this device's secrets, relative to its fields."""
        return []

    def shared_line(self) -> SharedLine | None:
        """The line this device shares with others of its kind, if any."""
        return None

    def warnings(self) -> list[tuple[FieldPath, str]]:
        """Likely mistakes that are still valid config (``collector check`` prints them, the
        service logs them at start): (field path relative to the device, what to check)."""
        return []
