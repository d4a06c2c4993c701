"""Wiring: drivers -> pollers -> context -> buffer writer -> outbox -> forwarder, plus health.

One event loop, one TaskGroup. Shutdown order matters for "nothing is lost": stop the pollers,
commit what they produced, give the forwarder its grace period, then close the buffer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from collector import __version__
from collector.acquisition.poller import DeviceStatus, Poller, phase_s
from collector.buffer import AsyncOutbox, BufferWriter, age_seconds
from collector.config import Config, DeviceConfig, ValueKeys, load_config
from collector.context import serials
from collector.context.firstread import FirstReadHold, HoldLimits
from collector.context.tagging import StationContext
from collector.delivery.forwarder import Delivered, Forwarder, MqttStatus
from collector.delivery.storesync import store_health
from collector.operations import metrics
from collector.operations.health import HealthServer
from common import systemd
from common.backoff import Backoff
from common.config import FileKind, dotted
from common.errors import ConfigError
from contract.deviations import Deviation, encode_deviation
from contract.encode import device_metas, ts_text
from contract.records import Reading
from contract.text import escaped
from drivers.base import Driver
from drivers.registry import create_driver

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], limit_s: float = 10.0) -> None:
    """Cancel tasks and wait for them, cancelling again those still running.

    On Python 3.11, ``asyncio.wait_for`` (used inside pymodbus) can swallow a cancellation
    that arrives just as its inner future completes (fixed in 3.12), so one cancel() may not
    stop a poller.
    """
    pending = set(tasks)
    deadline = asyncio.get_running_loop().time() + limit_s
    while pending and asyncio.get_running_loop().time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.error(
            "stopping: %d task(s) did not stop: %s",
            len(pending),
            ", ".join(t.get_name() for t in pending),
        )


def warn_about_secret_files(config: Config) -> None:
    """Warn (once, at start-up) when a file holding a secret can be read by other users."""
    for field, path, kind in config.secret_files():
        if path is None or kind is not FileKind.SECRET:
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IROTH:
            log.warning(
                "%s %s is readable by every user (mode %s): chmod o-r it",
                dotted(field),
                path,
                oct(stat.S_IMODE(mode)),
            )


# Above this fill ratio the buffer is reported as a health problem (drops are near).
BUFFER_WARN_RATIO = 0.9


class Service:
    def __init__(self, config: Config, on_delivered: Delivered | None = None) -> None:
        self.config = config
        b = config.buffer
        self.outbox = AsyncOutbox(b.path, b.max_readings, b.synchronous)
        self.context = StationContext(config.stations, config.devices)
        self.writer = BufferWriter(
            self.outbox,
            changes=self.context.take_changes,
            commit_interval_s=b.commit_interval_ms / 1000,
            max_readings_per_batch=config.mqtt.max_readings_per_message,
            positional=config.mqtt.value_keys is ValueKeys.POSITION,
        )
        tagging = config.tagging
        #: Readings waiting for their station's first serial read (collector.context.firstread).
        self.hold = FirstReadHold(
            self.context,
            self.writer.submit,
            HoldLimits(tagging.first_serial_wait_s, tagging.first_serial_max_readings),
        )
        self.forwarder: Forwarder | None = None
        self._set_meta(config)
        self.mqtt = MqttStatus()
        self.devices = {d.name: DeviceStatus(d.name, d.protocol, d.station) for d in config.devices}
        self._on_delivered = on_delivered
        self._started = time.time()
        self._dropped_at_start = 0
        self._oldest_unsent_ts: float | None = None
        self._quarantined_at_start = 0
        self.ready = asyncio.Event()
        self._metric_figures = metrics.BufferFigures()
        self._metrics = metrics.registry_for(self, self._metric_figures)
        self.health_server: HealthServer | None = None
        self.drivers: dict[str, Driver] = {}
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self.config_path: Path | None = None
        #: The last reload: when, what it did, or why it was refused (shown on /status).
        self.reload_state: dict[str, Any] | None = None
        #: Readings still buffered when the service stopped.
        self.left_in_buffer = 0

    def _sink(self, device: str, readings: Sequence[Reading]) -> None:
        self.hold.sink(device, readings)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. Raises StartupError if the buffer or the port is not to
        be had; after start-up, device and broker failures never end it."""
        h = self.config.health
        if h.enabled:
            self.health_server = HealthServer(self, h.host, h.port, h.token())
        try:
            await self.outbox.open()
        except BaseException:
            if self.health_server is not None:
                self.health_server.socket.close()
            raise
        self._dropped_at_start = self.outbox.outbox.dropped_total
        self._quarantined_at_start = self.outbox.outbox.quarantined_total
        self.context.restore(*await self.outbox.load_context())
        warn_about_secret_files(self.config)
        try:
            await self._run(stop)
        finally:
            await self.outbox.close()

    def _start_poller(self, group: asyncio.TaskGroup, device: DeviceConfig, index: int) -> None:
        self.devices[device.name] = status = DeviceStatus(
            device.name, device.protocol, device.station
        )
        self.drivers[device.name] = driver = create_driver(device)
        interval = device.poll_interval_ms / 1000
        poller = Poller(
            driver,
            status,
            interval,
            self._sink,
            Backoff(device.reconnect_min_ms / 1000, device.reconnect_max_ms / 1000),
            phase_s=phase_s(index, len(self.config.devices), interval),
            can_take=self.writer.can_take,
            under_way=(self.writer.poll_started, self.writer.poll_ended),
        )
        self._polling[device.name] = group.create_task(poller.run(), name=f"poll:{device.name}")

    async def _run(self, stop: asyncio.Event) -> None:
        config = self.config
        forwarder = self.forwarder = Forwarder(config, self.outbox, self.mqtt, self._on_delivered)
        forwarder.set_meta(self.writer.metas)
        forwarder.on_meta_refused = self.writer.meta_refused
        forward_stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            self._group = group
            writer = group.create_task(self.writer.run(), name="buffer-writer")
            forwarding = group.create_task(forwarder.run(forward_stop), name="forwarder")
            for index, device in enumerate(config.devices):
                self._start_poller(group, device, index)
            pollers = list(self._polling.values())
            ticking = group.create_task(self._tick(), name="unit-timer")
            watching = group.create_task(self._watch_unsent_age(), name="unsent-age")
            health = None
            if self.health_server is not None:
                health = group.create_task(self.health_server.run_until_exit(), name="health")
            log.info(
                "collector %s running: %d device(s), buffer %s, broker %s:%d%s",
                config.collector.id,
                len(pollers),
                config.buffer.path,
                config.mqtt.host,
                config.mqtt.port,
                f", health on http://{config.health.host}:{self.health_server.bound_port}"
                if self.health_server
                else "",
            )
            # Everything made at start-up (modules, config, FastAPI, SQLAlchemy) lives as long
            # as the process: keep it out of the garbage collector's full passes, which
            # otherwise walk it all every few seconds while readings churn the young ones.
            gc.freeze()
            self.ready.set()
            watchdog = None
            interval = systemd.watchdog_interval()
            if interval is not None:
                watchdog = group.create_task(systemd.feed_watchdog(interval), name="watchdog")
            systemd.notify("READY=1", f"STATUS=collecting from {len(pollers)} device(s)")
            await stop.wait()
            systemd.notify("STOPPING=1", "STATUS=stopping: delivering what is buffered")

            log.info("stopping: polling stopped, delivering what is buffered")
            async with self._reload_lock:  # a reload in progress finishes first
                self._group = None
                await cancel_and_wait([*self._polling.values(), ticking, watching])
            # No serial can be read any more: what waited for one goes out as it is.
            self.hold.release_all("the collector stops")
            self.context.tick(final=True)  # no late reading can come now: finish ended units
            await self.writer.flush()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            forward_stop.set()
            await forwarding
            if health is not None and self.health_server is not None:
                self.health_server.should_exit = True
                await health
            if watchdog is not None:  # fed until the very end of the stop
                watchdog.cancel()
        depth = self.left_in_buffer = self.outbox.outbox.depth
        if depth:
            log.info("stopped; %d reading(s) stay buffered for the next start", depth)
        else:
            log.info("stopped; buffer empty")

    async def reload(self, path: Path | None = None) -> bool:
        """Re-read the config (SIGHUP). An invalid one is refused and the running config kept;
        a valid one restarts the devices whose config changed and leaves the others polling.
        Stations take the new config with their current units kept. The buffer, MQTT, health
        and identity sections need a restart to change: kept, and said so. Returns whether the
        new config was taken."""
        path = path or self.config_path
        assert path is not None, "no config file to reload"
        async with self._reload_lock:
            group = self._group
            if group is None:
                return False  # stopping
            systemd.notify("RELOADING=1")
            try:
                # Parsed on a worker thread: whatever the file holds (it is bounded in size,
                # depth and alias expansion), the loop goes on polling meanwhile.
                new = await asyncio.to_thread(load_config, path)
            except Exception as exc:
                # Anything else is a loader bug; the reload is refused all the same (a dead
                # reload task would leave systemd at RELOADING and /status at the last reload).
                problems = (
                    exc.problems
                    if isinstance(exc, ConfigError)
                    else [f"{path}:1: (file): cannot be loaded: {type(exc).__name__}: {exc}"]
                )
                log.error(  # noqa: TRY400 - the problems are the message
                    "reload: %s is invalid; the running config stays:\n%s",
                    path,
                    "\n".join(problems),
                )
                self.reload_state = {"ts": time.time(), "ok": False, "problems": problems}
                systemd.notify("READY=1", "STATUS=config reload refused: invalid config")
                return False
            kept = [
                name
                for name in ("collector", "buffer", "mqtt", "health")
                if getattr(new, name) != getattr(self.config, name)
            ]
            # Sections that cannot change while running keep their running values.
            new = new.model_copy(update={name: getattr(self.config, name) for name in kept})
            old_devices = {d.name: d for d in self.config.devices}
            new_devices = {d.name: d for d in new.devices}
            restart = sorted(n for n in old_devices if new_devices.get(n) != old_devices[n])
            start = sorted(n for n in new_devices if old_devices.get(n) != new_devices[n])
            await cancel_and_wait([self._polling.pop(n) for n in restart])
            for name in restart:
                self.drivers.pop(name, None)
                self.devices.pop(name, None)
            if new.stations != self.config.stations or restart or start:
                await self._swap_context(new)
            self.config = new
            self._set_meta(new)
            index = {d.name: i for i, d in enumerate(new.devices)}
            for name in start:
                self._start_poller(group, new_devices[name], index[name])
            self.reload_state = {
                "ts": time.time(),
                "ok": True,
                "restarted": sorted(set(restart) & set(start)),
                "added": sorted(set(start) - set(restart)),
                "removed": sorted(set(restart) - set(start)),
                "not_applied_until_restart": kept,
            }
            log.info(
                "reload: %s taken; devices restarted %s, added %s, removed %s; %d kept polling%s",
                path,
                self.reload_state["restarted"] or "none",
                self.reload_state["added"] or "none",
                self.reload_state["removed"] or "none",
                len(self._polling) - len(start),
                f"; {', '.join(kept)} changes need a restart" if kept else "",
            )
            systemd.notify("READY=1", f"STATUS=collecting from {len(self._polling)} device(s)")
            return True

    def _set_meta(self, config: Config) -> None:
        """The devices' tag metadata: what polls refer to, and the retained messages."""
        self.writer.set_meta(device_metas(config.devices))
        if self.forwarder is not None:
            self.forwarder.set_meta(self.writer.metas)

    async def _swap_context(self, new: Config) -> None:
        """A station context for the new config, with the current units carried over."""
        old = self.context
        await self.writer.flush()  # what the old context produced goes in with its readings
        # No await from here on: no reading can be tagged between the snapshot and the swap.
        snapshot = old.snapshot()
        context = StationContext(new.stations, new.devices)
        context.restore(*snapshot)
        self.context = context
        self.hold.set_context(context)
        self.writer.set_changes(context.take_changes)

    async def _tick(self) -> None:
        """Unit timeouts and unit records whose late readings are in: checked every 0.5 s,
        whether or not any device delivers."""
        while True:
            await asyncio.sleep(0.5)
            self.hold.tick()
            if self.context.tick():
                self.writer.poke()

    async def _watch_unsent_age(self) -> None:
        """The oldest unsent reading's time, for health() (which cannot wait for the buffer)."""
        while True:
            self._oldest_unsent_ts = (await self.outbox.stats()).oldest_ts
            await asyncio.sleep(1.0)

    def set_unit(
        self,
        station: str,
        serial: str | None,
        golden: bool = False,
        work_order: str | None = None,
        operator: str | None = None,
    ) -> None:
        """The HTTP unit endpoint: a serial arrives (None: the unit left), or, at a station
        that reads its serial from a device, the unit there is marked golden."""
        if self.serial_sources().get(station) != "http":
            if serial is None or not self.context.mark_golden(station, serial):
                raise ValueError(f"{serial!r} is not the unit at station {station!r}")
        else:
            self.context.set_serial(
                station, serial, golden=golden, work_order=work_order, operator=operator
            )
        self.writer.poke()

    async def record_deviation(self, deviation: Deviation) -> dict[str, Any]:
        """POST /deviations: committed (fsynced) to the outbox before the answer."""
        try:
            seq = await self.outbox.add_deviation(deviation.ts, encode_deviation(deviation))
        except sa.exc.SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
            log.error("buffer: cannot keep a deviation (%s)", cause)  # noqa: TRY400
            raise RuntimeError(f"the buffer cannot keep the deviation now: {cause}") from None
        log.info(
            "deviation %d recorded at station %s (%s)",
            seq, escaped(deviation.station), deviation.severity,
        )  # fmt: skip
        return {
            "seq": seq,
            "outbox": self.outbox.outbox.outbox_id,
            "ts": ts_text(deviation.ts),
            "station": deviation.station,
            "severity": deviation.severity,
        }

    def station_unit(self, station: str) -> dict[str, Any]:
        return self.context.status()[station]

    def serial_sources(self) -> dict[str, str]:
        return {
            s.name: str(s.serial_source) if s.serial_source is not None else "nowhere"
            for s in self.config.stations
        }

    async def metrics(self) -> bytes:
        stats = await self.outbox.stats()
        self._metric_figures.oldest_age_s = age_seconds(stats.oldest_ts) or 0.0
        path = self.config.buffer.path
        self._metric_figures.bytes_on_disk = sum(
            f.stat().st_size for f in (path, Path(f"{path}-wal")) if f.exists()
        )
        return metrics.render(self._metrics)

    # ------------------------------------------------------------------ StatusSource

    def health(self) -> tuple[str, list[str]]:
        reasons: list[str] = []
        for name, device in self.devices.items():
            if not device.connected:
                reasons.append(f"device {name} not connected: {device.last_error or 'starting'}")
        reasons += self._mqtt_reasons()
        if self.writer.last_error is not None:
            reasons.append(f"buffer cannot write: {self.writer.last_error}")
        elif not self.writer.keeping_up:
            reasons.append("buffer cannot keep up with what is polled: polls are being skipped")
        if self.outbox.ack_error is not None:
            reasons.append(f"buffer cannot delete delivered readings: {self.outbox.ack_error}")
        outbox = self.outbox.outbox
        if outbox.depth >= BUFFER_WARN_RATIO * outbox.max_readings:
            reasons.append(f"buffer {outbox.depth}/{outbox.max_readings} readings, nearly full")
        dropped = outbox.dropped_total - self._dropped_at_start + self.writer.overflow_dropped
        if dropped:
            reasons.append(f"{dropped} reading(s) dropped since start (buffer full)")
        untagged = self.hold.released_untagged_total
        if untagged:
            reasons.append(
                f"{untagged} reading(s) released untagged at start-up: no first serial read "
                f"within the bounds (tagging.first_serial_*) at "
                f"{', '.join(self.hold.untagged_stations[:5])}"
            )
        quarantined = outbox.quarantined_total - self._quarantined_at_start
        if quarantined:
            reasons.append(f"{quarantined} reading(s) quarantined since start (broker refused)")
        if self.reload_state is not None and not self.reload_state["ok"]:
            first = self.reload_state["problems"][0]
            reasons.append(f"config reload refused, the running config stays: {first}")
        if outbox.reset is not None:
            reasons.append(
                f"buffer was corrupt at start-up ({outbox.reset.error}); moved aside to "
                f"{outbox.reset.moved_to}; seq continues at {outbox.reset.first_seq}"
            )
        return ("degraded" if reasons else "ok"), reasons

    def _mqtt_reasons(self) -> list[str]:
        """MQTT not connected, or connected and not taking readings."""
        mqtt, reasons = self.mqtt, []
        if not mqtt.connected:
            reasons.append(f"mqtt not connected: {mqtt.last_connect_error or 'starting'}")
        if mqtt.refused_since_success:
            reasons.append(
                f"mqtt: the broker refused {mqtt.refused_since_success} publish(es) since the "
                "last one it accepted"
            )
        now = time.time()
        waiting = mqtt.unacknowledged_since
        if waiting is not None and now - waiting > 2 * self.config.mqtt.keepalive_s:
            reasons.append(
                f"mqtt: no acknowledgement from the broker for {now - waiting:.0f} s "
                "(over 2 x mqtt.keepalive_s)"
            )
        reasons += store_health(mqtt, self.config.mqtt, now)
        limit, oldest = self.config.health.max_unsent_age_s, self._oldest_unsent_ts
        if limit is not None and oldest is not None and now - oldest > limit:
            reasons.append(
                f"oldest unsent reading is {now - oldest:.0f} s old (over "
                f"health.max_unsent_age_s = {limit:g})"
            )
        return reasons

    async def status(self) -> dict[str, Any]:
        stats = await self.outbox.stats()
        state, reasons = self.health()
        c = self.config.collector
        return {
            "collector": {
                "id": c.id,
                "site": c.site,
                "line": c.line,
                "version": __version__,
                "started_ts": self._started,
                "uptime_s": time.time() - self._started,
            },
            "health": {"status": state, "reasons": reasons},
            "config": {
                "path": None if self.config_path is None else str(self.config_path),
                "last_reload": self.reload_state,
            },
            "devices": {
                name: {**d.snapshot(), "details": self.drivers[name].details()}
                if name in self.drivers
                else d.snapshot()
                for name, d in self.devices.items()
            },
            "stations": self.context.status(),
            # Serials refused for control or format characters, per station
            # (collector.context.serials).
            "rejected_serials": dict(serials.rejected),
            # Readings waiting for (or released by) stations' first serial reads.
            "first_serial_hold": self.hold.status(),
            "buffer": {
                "path": str(self.config.buffer.path),
                "depth": stats.depth,
                "max_readings": stats.max_readings,
                "oldest_unsent_age_s": age_seconds(stats.oldest_ts),
                "dropped_total": stats.dropped_total,
                "quarantined_total": stats.quarantined_total,
                "reset": None
                if self.outbox.outbox.reset is None
                else {
                    "moved_to": str(self.outbox.outbox.reset.moved_to),
                    "error": self.outbox.outbox.reset.error,
                    "first_seq": self.outbox.outbox.reset.first_seq,
                },
                "overflow_dropped": self.writer.overflow_dropped,
                "pending_polls": self.writer.pending,
                "last_seq": stats.last_seq,
                "units_depth": stats.units_depth,
                "last_unit_seq": stats.last_unit_seq,
                "deviations_depth": stats.deviations_depth,
                "write_error": self.writer.last_error,
            },
            "mqtt": self.mqtt.snapshot(),
            "http": None if self.health_server is None else self.health_server.stats(),
        }
