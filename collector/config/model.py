"""The whole file: :class:`Config`, its device union and the checks across sections.

The device union is built from the protocol registry (drivers.registry), so a protocol is
added there and nowhere here; tests/test_registry.py ties the two together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Self, Union

from pydantic import Field, model_validator

from collector.config.base import BufferConfig, HealthConfig, Identity, MqttConfig, TaggingConfig
from collector.config.stations import StationConfig, TagRef, expand_slots
from common.config import FieldPath, FileKind, SecretEnv, SecretFile
from common.config import Model as _Model
from common.config import reject_duplicates as _reject_duplicates
from drivers.base import DeviceBase, SharedLine
from drivers.registry import REGISTRY

if TYPE_CHECKING:
    # The core sees every device as what DeviceBase offers; it never names a protocol's class.
    DeviceConfig = DeviceBase
else:
    DeviceConfig = Annotated[
        Union[tuple(p.model for p in REGISTRY.values())],  # noqa: UP007 - built at run time
        Field(discriminator="protocol"),
    ]


# --------------------------------------------------------------------------- the whole file


class Config(_Model):
    collector: Identity
    buffer: BufferConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    tagging: TaggingConfig = Field(default_factory=TaggingConfig)
    stations: list[StationConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _expand_slots(cls, data: object) -> object:
        return expand_slots(data)

    @model_validator(mode="after")
    def _references(self) -> Self:
        problems = reference_problems(
            list(enumerate(self.stations)),
            list(enumerate(self.devices)),
            unit_api=self.health.unit_api_enabled,
        )
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise FieldErrors(problems)
        return self

    def secret_files(self) -> list[SecretFile]:
        """Every file (and folder) holding or guarding a secret, where the config names it:
        the one list both the start-up checks (collector.config.loader) and the permission
        warning (collector.service) read."""
        m, h = self.mqtt, self.health
        files = [
            SecretFile(("mqtt", "password_file"), m.password_file, FileKind.SECRET),
            SecretFile(("health", "token_file"), h.token_file, FileKind.SECRET),
        ]
        if m.tls is not None:
            files += [
                SecretFile(("mqtt", "tls", "ca_file"), m.tls.ca_file, FileKind.FILE),
                SecretFile(("mqtt", "tls", "cert_file"), m.tls.cert_file, FileKind.FILE),
                SecretFile(("mqtt", "tls", "key_file"), m.tls.key_file, FileKind.SECRET),
            ]
        for index, device in enumerate(self.devices):
            files += [f._replace(field=("devices", index, *f.field)) for f in device.secret_files()]
        return files

    def secret_envs(self) -> list[SecretEnv]:
        """Every environment variable holding a secret, where the config names it."""
        envs = [
            SecretEnv(("mqtt", "password_env"), self.mqtt.password_env),
            SecretEnv(("health", "token_env"), self.health.token_env),
        ]
        for index, device in enumerate(self.devices):
            envs += [e._replace(field=("devices", index, *e.field)) for e in device.secret_envs()]
        return envs


def reference_problems(
    stations: Sequence[tuple[int, StationConfig]],
    devices: Sequence[tuple[int, DeviceBase]],
    *,
    unit_api: bool,
    other_devices: Iterable[str] = (),
    other_stations: Iterable[str] = (),
) -> list[ValueError]:
    """Every problem across sections (names, station references, shared lines), all at once.

    ``stations`` and ``devices`` are (index in the file, model) pairs: the loader also calls
    this with only the entries that validated, so that schema and reference problems are
    reported in one pass; ``other_names`` are the names of devices that did not validate
    and ``other_stations`` those of stations that did not (a reference to one of them is not
    reported as undefined: its own problem is).
    """
    problems: list[ValueError] = []
    for names, what in (
        ([s.name for _, s in stations], "station name"),
        ([d.name for _, d in devices], "device name"),
    ):
        try:
            _reject_duplicates(names, what)
        except ValueError as exc:
            problems.append(exc)
    # A rack's devices name the station group; its slots expand to stations of that group.
    station_names = {s.name for _, s in stations} | {
        s.group for _, s in stations if s.group is not None
    }
    by_name = {d.name: d for _, d in devices}
    unknown_ok = set(other_devices)
    for index, device in devices:
        if device.station in set(other_stations):
            continue
        if device.station is not None and device.station not in station_names:
            problems.append(
                FieldError(
                    ("devices", index, "station"),
                    f"station {device.station!r} is not defined; "
                    f"defined: {_listing(station_names)}",
                )
            )
    lines: dict[str, tuple[str, SharedLine]] = {}
    for _, device in devices:
        line = device.shared_line()
        if line is None:
            continue
        first, first_line = lines.setdefault(line.key, (device.name, line))
        if first_line.settings != line.settings:
            problems.append(
                ValueError(
                    f"devices {first!r} and {device.name!r} share port {line.port} "
                    f"but not its settings ({', '.join(line.settings)})"
                )
            )
    # A rack's slots (collector.config.stations.expand_slots) share one line in the file:
    # a reference problem is reported once per rack and field (the first slot's, or the
    # first slot that has it), not once per slot.
    reported: set[tuple[str, str]] = set()
    for index, station in stations:
        for field, ref in station.tag_refs():
            if ref.device in unknown_ok and ref.device not in by_name:
                continue
            if station.group is not None and (station.group, field) in reported:
                continue
            problem = _check_station_ref(
                index, station.group or station.name, field, ref, by_name, invalid=unknown_ok
            )
            if problem is not None:
                problems.append(problem)
                if station.group is not None:
                    reported.add((station.group, field))
        if station.group is not None and station.slot != _first_slot(stations, station.group):
            continue
        if station.serial_source == "http" and not unit_api:
            problems.append(
                FieldError(
                    ("stations", index, "serial_source"),
                    "'http' needs health.token_env "
                    "or health.token_file (the unit endpoint is off without a token)",
                )
            )
    return problems


def _first_slot(stations: Sequence[tuple[int, StationConfig]], group: str) -> int | None:
    return next((s.slot for _, s in stations if s.group == group), None)


def _check_station_ref(
    index: int,
    station: str,
    field: str,
    ref: TagRef,
    devices: dict[str, DeviceBase],
    *,
    invalid: set[str],
) -> FieldError | None:
    loc: list[str | int] = ["stations", index]
    loc += [int(p) if p.isdigit() else p for p in field.replace("[", ".").rstrip("]").split(".")]
    if ref.device not in devices:
        return FieldError(
            (*loc, "device"),
            f"device {ref.device!r} is not defined; defined: {_listing(set(devices) | invalid)}",
        )
    device = devices[ref.device]
    if ref.tag not in device.tag_names:
        return FieldError(
            (*loc, "tag"),
            f"{ref.tag!r} is not a tag of device "
            f"{ref.device!r}; its tags: {_listing(device.tag_names)}",
        )
    if device.station != station:
        return FieldError(
            (*loc, "device"),
            f"device {ref.device!r} belongs to station "
            f"{device.station!r}; it must belong to this station",
        )
    return None


def _listing(names: Iterable[str]) -> str:
    items = sorted(names)
    return ", ".join(items) if items else "(none)"


class FieldError(ValueError):
    """A cross-reference problem that belongs to a field deeper than the validator that found
    it, so that the error points at that field's line."""

    def __init__(self, loc: Sequence[str | int] | FieldPath, message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


class FieldErrors(ValueError):
    """Several problems found by one validator (all reported, not only the first)."""

    def __init__(self, problems: Sequence[ValueError]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = list(problems)


def device_models() -> tuple[type[DeviceBase], ...]:
    """The models of the device union, in registry order (for tests and tools)."""
    return tuple(p.model for p in REGISTRY.values())
