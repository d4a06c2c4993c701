"""Prometheus metrics of the store (``store_*``), read at scrape time from the service's
counters and, for the gap audit, from the database (so every store process of a shared
subscription shows the same, complete picture). docs/store.md lists them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from store.status import ServiceView, StreamGaps


class StoreCollector(Collector):
    def __init__(
        self,
        service: ServiceView,
        gaps: list[StreamGaps],
        waiting: tuple[int, int] | None = None,
        kept: tuple[int, int] | None = None,
    ) -> None:
        self._service = service
        self._gaps = gaps
        self._waiting = waiting
        self._kept = kept

    def collect(self) -> Iterator[Metric]:
        s = self._service.stats
        messages = CounterMetricFamily(
            "store_messages", "MQTT messages committed, by topic kind.", labels=["kind"]
        )
        for kind, n in sorted(s.messages.items()):
            messages.add_metric([kind], n)
        yield messages
        for name, doc, value in (
            ("store_readings_received", "Readings received (duplicates included).",
             s.readings_received),
            ("store_readings_inserted", "Readings stored (new rows).", s.readings_inserted),
            ("store_units_received", "Unit records received.", s.units_received),
            ("store_units_inserted", "Unit records stored (new rows).", s.units_inserted),
            ("store_deviations_received", "Deviations from line PCs received.",
             s.deviations_received),
            ("store_deviations_inserted", "Deviations from line PCs stored (new rows).",
             s.deviations_inserted),
            ("store_batches", "Transactions committed.", s.batches),
            ("store_acks", "PUBACKs sent after a commit.", s.acked),
            ("store_collector_acks", "Store acknowledgements published to collectors "
             "({base}/ack).", s.acks_published),
            ("store_readings_pruned", "Readings deleted by retention.", s.pruned),
            ("store_parked", "Readings messages parked until their meta version arrives.",
             s.parked),
            ("store_unparked", "Parked messages ingested when their meta version arrived.",
             s.unparked),
            ("store_parked_dropped", "Parked messages dropped into quarantine at a bound of "
             "ingest.parked_max_* (oldest first).", s.parked_dropped),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        quarantined = CounterMetricFamily(
            "store_quarantined", "Messages quarantined, by kind.", labels=["kind"]
        )
        for kind in (
            "json", "schema", "field", "topic", "identity", "conflict", "database",
            "meta_hash", "meta_conflict",
        ):  # fmt: skip
            quarantined.add_metric([kind], s.quarantined.get(kind, 0))
        yield quarantined
        pruned = CounterMetricFamily(
            "store_quarantine_pruned",
            "Quarantined messages pruned at a bound of ingest.quarantine_max_* (oldest first), "
            "by kind.",
            labels=["kind"],
        )
        for kind, n in sorted(s.quarantine_pruned.items()):
            pruned.add_metric([kind], n)
        yield pruned
        if s.quarantine_pruned_last is not None:
            yield GaugeMetricFamily(
                "store_quarantine_last_pruned_timestamp_seconds",
                "When quarantined messages were last pruned at a bound (Unix time).",
                s.quarantine_pruned_last,
            )
        if self._kept is not None:
            yield GaugeMetricFamily(
                "store_quarantine_rows",
                "Quarantined messages kept now, parked ones aside (database).",
                self._kept[0],
            )
            yield GaugeMetricFamily(
                "store_quarantine_bytes",
                "Payload bytes of the quarantined messages kept now, parked ones aside (database).",
                self._kept[1],
            )
        errors = CounterMetricFamily(
            "store_db_errors", "Failed database writes, by reason.", labels=["reason"]
        )
        for reason in ("down", "full", "read-only", "other"):
            errors.add_metric([reason], s.db_errors.get(reason, 0))
        yield errors
        yield GaugeMetricFamily("store_db_up", "1 while the database takes writes.", int(s.db_ok))
        yield GaugeMetricFamily(
            "store_mqtt_connected", "1 while connected to the broker.", int(s.mqtt_connected)
        )
        yield GaugeMetricFamily("store_queued_messages", "Received, not yet written.", s.queued)
        if self._waiting is not None:
            yield GaugeMetricFamily(
                "store_parked_messages",
                "Readings messages parked now, waiting for their meta version (database).",
                self._waiting[0],
            )
            yield GaugeMetricFamily(
                "store_parked_bytes",
                "Payload bytes of the readings messages parked now (database).",
                self._waiting[1],
            )
        labels = ["collector", "outbox", "kind"]
        high = GaugeMetricFamily(
            "store_high_water_seq", "Contiguous high-water mark per stream.", labels=labels
        )
        missing = GaugeMetricFamily("store_missing_seqs", "Seqs missing per stream.", labels=labels)
        ranges = GaugeMetricFamily(
            "store_missing_ranges", "Missing seq ranges per stream.", labels=labels
        )
        never = GaugeMetricFamily(
            "store_never_assigned_seqs",
            "Seqs the collector announced it never assigned (a reservation jump): no error.",
            labels=labels,
        )
        lost = GaugeMetricFamily(
            "store_lost_seqs",
            "Missing seqs no longer recoverable (unavailable at the collector, or unanswered "
            "past gaps.alert_after_s); the rest of store_missing_seqs is pending.",
            labels=labels,
        )
        now = datetime.now(UTC)
        alert = self._service.config.gaps.alert_after_s
        for g in self._gaps:
            key = [g.collector, g.outbox, g.kind]
            if g.high_water is not None:
                high.add_metric(key, g.high_water)
            missing.add_metric(key, g.missing_count)
            ranges.add_metric(key, len(g.missing))
            never.add_metric(key, g.never_assigned_count)
            lost.add_metric(key, sum(b - a + 1 for a, b, _ in g.lost(alert, now)))
        yield high
        yield missing
        yield ranges
        yield never
        yield lost


def render(
    service: ServiceView,
    gaps: list[StreamGaps],
    waiting: tuple[int, int] | None = None,
    kept: tuple[int, int] | None = None,
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(service, gaps, waiting, kept))
    return generate_latest(registry)
