"""What a driver is to the core: its config's base, its contract (connect, read, close) and its
errors. Nothing else.

Each protocol package (drivers/modbus, drivers/opcua, drivers/serial) declares its config models
on :class:`DeviceBase` and a driver that fulfils :class:`Driver`. The core (collector.config,
collector.context, collector.service) only ever asks a device what :class:`DeviceBase` offers:
its name, station and tags, whether its readings are events (:attr:`DeviceBase.emits_events`),
which files and environment variables hold its secrets and which line it shares with other
devices. It never names a protocol's class.

Scheduling, timeouts around ``read``, reconnect with backoff, statistics, buffering and
forwarding all live in the core (collector.acquisition.poller and friends), never in a driver.

Errors (a library's exceptions are translated into these at the driver's boundary)::

    DeviceError              something went wrong talking to a device; carries a bounded `code`
    ├── NotConnectedError    the link is down: the poller closes the driver and reconnects
    │                        with backoff
    └── RequestError         one request failed (timeout, exception reply, bad reply): the
                             tags it covered become bad-quality readings; the link stays up

This module imports nothing of collector.config (which builds its device union from the
protocol packages, so the packages must not import it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from pydantic import Field

from common.config import FieldPath, Model, Name, ReconnectBackoff, SecretEnv, SecretFile
from common.errors import ShopfloorError
from contract.codes import ErrorCode
from contract.records import Reading


class DeviceError(ShopfloorError):
    """A device-side failure with a bounded error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotConnectedError(DeviceError):
    """The connection to the device is gone or could not be made."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.CONNECTION) -> None:
        super().__init__(code, message)


class RequestError(DeviceError):
    """A single request failed; the connection is still usable."""


class SharedLine(NamedTuple):
    """A line several devices use one request at a time (an RS-485 bus): devices with the same
    ``key`` must agree on ``settings``."""

    key: str
    port: str
    settings: dict[str, object]


# Each distinct tag metadata, one dict for every tag that has it: a line of 120 devices x 125
# registers has 15,000 tags and a handful of distinct metadata, kept for as long as the config
# runs (4 MB when each tag had its own; issue 28). Bounded by the distinct ones configs hold.
_METAS: dict[tuple[object, ...], dict[str, object]] = {}


def _shared_meta(
    unit: object, kind: str | None, scale: float, offset: float, station: str | None
) -> dict[str, object]:
    """One tag's metadata (never changed once made: read-only for everyone)."""
    key = (unit, kind, scale.hex(), offset.hex(), station)  # -0.0 is not 0.0 in the JSON
    meta = _METAS.get(key)
    if meta is None:
        meta = _METAS[key] = {
            "unit": unit,
            "type": kind,
            "scale": scale,
            "offset": offset,
            "station": station,
        }
    return meta


class DeviceBase(ReconnectBackoff):
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
    # reconnect_min_ms, reconnect_max_ms: ReconnectBackoff.

    @property
    def tag_names(self) -> set[str]:
        raise NotImplementedError

    def tag_slots(self) -> dict[str, int]:
        """Tag -> rack slot, for tags that belong to one slot of a rack (collector.context.tagging
        routes their readings to that slot's station)."""
        tags = getattr(self, "tags", None) or []
        return {t.name: t.slot for t in tags if getattr(t, "slot", None) is not None}

    @property
    def emits_events(self) -> bool:
        """Whether each reading is an event (a scan, a line sent unprompted) rather than a
        polled value that repeats every poll (collector.context.tagging treats them differently)."""
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
            meta[name] = _shared_meta(
                getattr(tag, "unit", None),
                None if kind is None else str(kind),
                float(getattr(tag, "scale", 1.0)),
                float(getattr(tag, "offset", 0.0)),
                self.station,
            )
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


class Driver(Protocol):
    """One configured device.

    - ``connect`` opens the link; raises :class:`NotConnectedError` on failure.
    - ``read`` performs one poll and returns one reading per configured tag. A failed request
      yields bad-quality readings for the tags it covered; a lost link raises
      :class:`NotConnectedError` and the core reconnects with backoff.
    - ``close`` releases the link; it must not raise.
    - ``describe`` gives a one-line summary for ``collector check`` (e.g. the request plan).
    - ``max_read_seconds`` bounds one ``connect`` or ``read``; the core enforces it.
    - ``details`` is what a technician needs on /status beyond the core's counters (the
      request plan, recent raw lines); plain JSON values.
    """

    @property
    def max_read_seconds(self) -> float: ...

    async def connect(self) -> None: ...

    async def read(self) -> Sequence[Reading]: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...

    def details(self) -> dict[str, Any]: ...


@runtime_checkable
class Reachable(Protocol):
    """A driver whose peer listens on TCP: while it is down, the poller probes that address
    on a short period and reconnects as soon as it answers (common.backoff), instead of
    waiting out a long backoff."""

    def peer_address(self) -> tuple[str, int]: ...


@runtime_checkable
class Pushes(Protocol):
    """A driver that receives data between polls (OPC-UA subscriptions): it calls the
    callback given to ``set_on_change`` when data arrived, and the poller then takes it with
    ``take_changes`` at once instead of at the next poll."""

    def set_on_change(self, callback: Callable[[], None]) -> None: ...

    def take_changes(self) -> Sequence[Reading]: ...


if TYPE_CHECKING:
    from abc import ABCMeta as _PerClassCheck
else:

    class _PerClassCheck(type(Protocol)):
        """``isinstance`` against a runtime-checkable protocol that answers once per class.

        Python 3.11's check walks the protocol's members on every call (about 12 µs), and the
        poller asks it after every read: a tenth of a millisecond a second per device at 10
        polls a second. Drivers have their methods on their class, so the answer for a class
        is the answer for all its instances."""

        # (No annotated attribute here: typing would take a metaclass's annotations for
        # members of the protocol.)

        def __instancecheck__(cls, instance: object) -> bool:
            key = (cls, type(instance))
            answer = _ANSWERS.get(key)
            if answer is None:
                answer = _ANSWERS[key] = super().__instancecheck__(instance)
            return answer

    _ANSWERS = {}  # (protocol, class) -> bool


@runtime_checkable
class CountsInputErrors(Protocol, metaclass=_PerClassCheck):
    """A driver that also meets input no reading stands for (a serial line that matches no
    pattern, or is too long, or did not fit the pending bound): the core adds these counts,
    by error code, to the device's error counts after each read (/status, /metrics)."""

    def take_input_errors(self) -> Counter[str]:
        """The counts since the last call (and reset them)."""
        ...
