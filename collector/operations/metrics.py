"""Prometheus metrics for GET /metrics (prometheus-client), read from the service's own state
at scrape time: the counters /status shows are the ones exported, never kept twice.

Names are ``collector_*``; per-device series carry ``device`` (and ``code`` for errors).
docs/metrics.md lists them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from collector import __version__
from collector.acquisition.poller import DeviceStatus
from collector.buffer import AsyncOutbox, BufferWriter
from collector.config import Config
from collector.context import serials
from collector.context.firstread import FirstReadHold
from collector.context.tagging import StationContext
from collector.context.units import RECENT_KEY
from collector.delivery.publisher import MqttStatus
from common.histogram import Histogram


class MetricsSource(Protocol):
    """What a scrape reads (the service provides it; read-only here)."""

    @property
    def config(self) -> Config: ...

    @property
    def devices(self) -> Mapping[str, DeviceStatus]: ...

    @property
    def writer(self) -> BufferWriter: ...

    @property
    def outbox(self) -> AsyncOutbox: ...

    @property
    def mqtt(self) -> MqttStatus: ...

    @property
    def context(self) -> StationContext: ...

    @property
    def hold(self) -> FirstReadHold: ...


@dataclass
class BufferFigures:
    """What a scrape needs from the buffer that takes a query (refreshed before each scrape)."""

    oldest_age_s: float = 0.0
    bytes_on_disk: int = 0


def _histogram(
    name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family


class ServiceCollector(Collector):
    def __init__(self, service: MetricsSource, figures: BufferFigures) -> None:
        self._service = service
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        service = self._service
        c = service.config.collector
        info = GaugeMetricFamily(
            "collector_info", "The collector and its version.", labels=["id", "version"]
        )
        info.add_metric([c.id, __version__], 1)
        yield info

        devices = service.devices.values()
        connected = GaugeMetricFamily(
            "collector_device_connected",
            "1 while the device is connected.",
            labels=["device", "protocol"],
        )
        polls = CounterMetricFamily("collector_device_polls", "Polls made.", labels=["device"])
        skipped = CounterMetricFamily(
            "collector_device_skipped_polls",
            "Poll slots skipped because a poll overran.",
            labels=["device"],
        )
        errors = CounterMetricFamily(
            "collector_device_errors", "Errors by code.", labels=["device", "code"]
        )
        for d in devices:
            connected.add_metric([d.name, d.protocol], 1 if d.connected else 0)
            polls.add_metric([d.name], d.polls)
            skipped.add_metric([d.name], d.skipped_polls)
            for code, count in sorted(d.errors.items()):
                errors.add_metric([d.name, code], count)
        yield from (connected, polls, skipped, errors)
        yield _histogram(
            "collector_poll_duration_seconds",
            "How long a poll took (connect excluded).",
            ["device"],
            (([d.name], d.poll_seconds) for d in devices),
        )

        yield from _station_figures(service.context)

        writer, outbox, mqtt = service.writer, service.outbox.outbox, service.mqtt
        yield CounterMetricFamily(
            "collector_readings_collected", "Readings read from devices.", value=writer.collected
        )
        yield CounterMetricFamily(
            "collector_readings_delivered",
            "Readings the broker accepted (this run).",
            value=mqtt.readings_delivered,
        )
        yield CounterMetricFamily(
            "collector_units_delivered",
            "Unit records the broker accepted (this run).",
            value=mqtt.units_delivered,
        )
        yield CounterMetricFamily(
            "collector_deviations_delivered",
            "Deviations the broker accepted (this run).",
            value=mqtt.deviations_delivered,
        )
        yield GaugeMetricFamily(
            "collector_buffer_readings", "Readings buffered.", value=outbox.depth
        )
        yield GaugeMetricFamily(
            "collector_buffer_max_readings", "buffer.max_readings.", value=outbox.max_readings
        )
        yield GaugeMetricFamily(
            "collector_buffer_unit_records", "Unit records buffered.", value=outbox.units_depth
        )
        yield GaugeMetricFamily(
            "collector_buffer_deviations",
            "Deviations recorded on this PC (POST /deviations) and not delivered yet.",
            value=outbox.deviations_depth,
        )
        yield GaugeMetricFamily(
            "collector_buffer_bytes",
            "Size of the buffer file and its WAL.",
            value=self._figures.bytes_on_disk,
        )
        yield GaugeMetricFamily(
            "collector_buffer_oldest_unsent_age_seconds",
            "Age of the oldest reading not yet delivered (0 when none).",
            value=self._figures.oldest_age_s,
        )
        yield CounterMetricFamily(
            "collector_buffer_dropped",
            "Readings dropped: buffer full, or the writer's queue overflowing.",
            value=outbox.dropped_total + writer.overflow_dropped,
        )
        yield CounterMetricFamily(
            "collector_buffer_quarantined",
            "Readings the broker can never accept, moved aside.",
            value=outbox.quarantined_total,
        )
        hold = service.hold
        for name, doc, value in (
            ("held", "Readings held for their station's first serial read.", hold.held_total),
            ("released", "Held readings released by the first serial read, tagged with what it "
             "showed.", hold.released_total),
            ("released_untagged", "Held readings released at a bound (tagging.first_serial_*), "
             "tagged by their own time.", hold.released_untagged_total),
        ):  # fmt: skip
            yield CounterMetricFamily(f"collector_first_serial_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "collector_first_serial_holding",
            "Readings waiting for their station's first serial read now.",
            value=hold.holding,
        )
        bad_serials = CounterMetricFamily(
            "collector_rejected_serials",
            "Unit serials refused for control or format characters (or length), by station.",
            labels=["station"],
        )
        for station, count in sorted(serials.rejected.items()):
            bad_serials.add_metric([station], count)
        yield bad_serials
        yield GaugeMetricFamily(
            "collector_mqtt_connected", "1 while connected to the broker.", value=mqtt.connected
        )
        rejected = CounterMetricFamily(
            "collector_mqtt_rejected", "Publishes the broker refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(mqtt.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield from _store_figures(mqtt)
        yield _histogram(
            "collector_mqtt_publish_rtt_seconds",
            "From publish to the broker's acknowledgement.",
            [],
            [([], mqtt.publish_rtt)],
        )


def _store_figures(mqtt: MqttStatus) -> Iterator[Metric]:
    """mqtt.delivery store: what waits for the central store's acknowledgement."""
    yield GaugeMetricFamily(
        "collector_store_waiting_readings",
        "Readings the broker took that wait for the store's acknowledgement (in the buffer).",
        value=mqtt.store_waiting_readings,
    )
    yield GaugeMetricFamily(
        "collector_store_waiting_units",
        "Unit records the broker took that wait for the store's acknowledgement.",
        value=mqtt.store_waiting_units,
    )
    last = mqtt.last_store_ack_ts
    yield GaugeMetricFamily(
        "collector_store_ack_age_seconds",
        "Seconds since the last store acknowledgement (-1: none yet).",
        value=-1 if last is None else max(0.0, time.time() - last),
    )
    yield CounterMetricFamily(
        "collector_store_acks", "Store acknowledgements applied.", value=mqtt.store_acks
    )
    refused = CounterMetricFamily(
        "collector_store_acks_refused",
        "Store acknowledgements ignored as malformed or forged, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(mqtt.store_acks_refused.items()):
        refused.add_metric([reason], count)
    yield refused
    yield CounterMetricFamily(
        "collector_store_resent",
        "Items sent again: asked for by the store, or a tail it never acknowledged.",
        value=mqtt.store_resent,
    )


#: Station counters: (metric suffix, Figures attribute, help).
_STATION_COUNTS = (
    ("units", "units", "Unit records (attempts) finished, golden samples excluded."),
    ("first_pass_passes", "first_pass_passes", "Units that passed on their first attempt."),
    ("passes", "passes", "Attempts that passed."),
    ("fails", "fails", "Attempts that failed."),
    ("rework", "rework", "Attempts with the verdict rework."),
    ("scrap", "scrap", "Attempts with the verdict scrap."),
    ("incomplete", "incomplete", "Attempts that ended without a verdict."),
    ("retests", "retests", "Attempts after the first (retests)."),
    ("golden", "golden", "Golden-sample attempts (not in the other counts)."),
)


def _station_figures(context: StationContext) -> Iterator[Metric]:
    """Per station (this run): unit counts by verdict, and cycle times."""
    figures = context.figures()
    for suffix, attribute, doc in _STATION_COUNTS:
        family = CounterMetricFamily(f"collector_station_{suffix}", doc, labels=["station"])
        for name, f in figures.items():
            family.add_metric([name], getattr(f, attribute))
        yield family
    last = GaugeMetricFamily(
        "collector_station_last_cycle_time_seconds",
        "Cycle time of the last attempt with a verdict.",
        labels=["station"],
    )
    mean = GaugeMetricFamily(
        "collector_station_mean_cycle_time_seconds",
        "Mean cycle time since start (window=all) and over the last units (window=recent).",
        labels=["station", "window"],
    )
    for name, f in figures.items():
        shown = f.as_dict()
        if f.last_cycle_time_s is not None:
            last.add_metric([name], f.last_cycle_time_s)
        for window, key in (("all", "mean_cycle_time_s"), ("recent", RECENT_KEY)):
            if shown[key] is not None:
                mean.add_metric([name, window], shown[key])
    yield last
    yield mean


def registry_for(service: MetricsSource, figures: BufferFigures) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service, figures))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
