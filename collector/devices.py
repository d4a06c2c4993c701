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
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]

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

    def secret_files(self) -> list[SecretFile]:
        """The files this device's secure link needs, relative to the device's own fields."""
        return []

    def secret_envs(self) -> list[SecretEnv]:
        """The environment variables holding this device's secrets, relative to its fields."""
        return []

    def shared_line(self) -> SharedLine | None:
        """The line this device shares with others of its kind, if any."""
        return None
