"""The publisher seam: what the forwarder needs from an MQTT client, and nothing more.

The forwarder (collector.delivery.forwarder) owns the delivery policy: lanes, the in-flight window,
splitting, quarantine, acks. A :class:`Publisher` only moves one message to the broker and
says what the broker answered. collector.delivery.mqtt implements it on paho-mqtt (the only module
that imports paho); the forwarder's unit tests use a fake that answers in microseconds.

- :meth:`Publisher.publish` returns a future resolved with the broker's :class:`Ack` (QoS 1,
  PUBACK), or failed with :class:`ConnectionLost` when the connection it went out on ended
  first: the forwarder then sends it again from the buffer.
- :attr:`Publisher.connected`, :attr:`Publisher.connection` (a number that changes with every
  lost connection) and :attr:`Publisher.max_packet_bytes` (the broker's announced Maximum
  Packet Size) are read whenever the forwarder decides what to send next.
- The listener given to :meth:`Publisher.set_listener` is called on the event loop on each
  connect, disconnect and answer, so the forwarder wakes without polling.
- :meth:`Publisher.set_message_handler` subscribes to topics on every connect (the store's
  acknowledgements, ``{base}/ack``) and hands each message to the forwarder on the loop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.histogram import Histogram

# Reason codes (MQTT v5 section 2.4): >= 0x80 means not accepted.
FAILURE_FROM = 0x80
PACKET_TOO_LARGE = 0x95


@dataclass(frozen=True, slots=True)
class Ack:
    """The broker's answer to one publish: its reason code and that code's name."""

    value: int
    name: str = "Success"

    @property
    def is_failure(self) -> bool:
        return self.value >= FAILURE_FROM

    def __str__(self) -> str:
        return self.name


class ConnectionLost(Exception):
    """Set on in-flight futures when their connection ended before the PUBACK."""

    def __init__(self, connection: int, after_refusal: bool = False) -> None:
        super().__init__(f"connection {connection} lost")
        self.connection = connection
        #: The broker had refused a message, and accepted none of ours since, before the
        #: connection ended. Some brokers end the connection after a refusal (mosquitto 2.0.11
        #: with ``max_queued_messages 0`` does, after every one, and the refusal's PUBACK is often
        #: lost in the reset when more messages were in flight): the refusal ended it, not the
        #: messages still in flight.
        self.after_refusal = after_refusal


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connection(self) -> int:
        """Changes whenever a connection is lost (the number :class:`ConnectionLost` carries)."""
        ...

    @property
    def max_packet_bytes(self) -> int | None:
        """The broker's Maximum Packet Size (MQTT v5 CONNACK), None when it set none."""
        ...

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the loop) on each connect, disconnect and answer."""
        ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future[Ack]:
        """Publish with QoS 1; the future holds the broker's answer."""
        ...

    def set_message_handler(
        self, topics: Sequence[str], handler: Callable[[str, bytes], None]
    ) -> None:
        """Subscribe (QoS 1) to ``topics`` on every connect; call ``handler(topic, payload)``
        on the loop for each message. (Only with ``mqtt.delivery: store``.)"""
        ...

    async def run(self) -> None:
        """Connect, and connect again after each loss, until :meth:`close`."""
        ...

    async def close(self) -> None:
        """Say goodbye (the retained offline state) and disconnect; :meth:`run` returns."""
        ...


@dataclass
class MqttStatus:
    """What /status shows for MQTT: the connection (kept by the publisher) and the delivery
    (kept by the forwarder). Mutated on the event loop only."""

    connected: bool = False
    last_connect_error: str | None = None
    last_accepted_ts: float | None = None
    messages_accepted: int = 0
    readings_delivered: int = 0
    units_delivered: int = 0
    #: Deviations recorded on the line PC (POST /deviations) the broker took.
    deviations_delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    in_flight: int = 0
    connects: int = 0
    max_packet_bytes: int | None = None
    #: Publish to PUBACK (seconds), for /metrics.
    publish_rtt: Histogram = field(default_factory=Histogram)
    #: The last seq of the current (or last) backlog replay; the next one it will send, or
    #: None once it is drained.
    backlog_until_seq: int | None = None
    backlog_next_seq: int | None = None
    #: Since when (epoch s) a published message has waited for its PUBACK with none accepted
    #: meanwhile, across reconnects (None: nothing waits). Kept by the publisher.
    unacknowledged_since: float | None = None
    #: Publishes the broker refused since the last one it accepted.
    refused_since_success: int = 0
    #: mqtt.delivery store: readings and unit records the broker took that wait for the
    #: store's acknowledgement (still in the buffer), and when (epoch s) the last one came.
    store_waiting_readings: int = 0
    store_waiting_units: int = 0
    store_waiting_deviations: int = 0
    #: When (epoch s) the oldest of them was sent (updated about once a second).
    store_waiting_since: float | None = None
    last_store_ack_ts: float | None = None
    store_acks: int = 0
    #: Acks refused (malformed, forged: reason -> count) and acks for another outbox.
    store_acks_refused: Counter[str] = field(default_factory=Counter)
    store_acks_other_outbox: int = 0
    #: Items sent again: asked for by the store (resend), or a tail it never acknowledged.
    store_resent: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "last_connect_error": self.last_connect_error,
            "last_accepted_ts": self.last_accepted_ts,
            "messages_accepted": self.messages_accepted,
            "readings_delivered": self.readings_delivered,
            "units_delivered": self.units_delivered,
            "deviations_delivered": self.deviations_delivered,
            "rejected": dict(self.rejected),
            "quarantined": self.quarantined,
            "in_flight": self.in_flight,
            "connects": self.connects,
            "max_packet_bytes": self.max_packet_bytes,
            "backlog_until_seq": self.backlog_until_seq,
            "backlog_next_seq": self.backlog_next_seq,
            "unacknowledged_since": self.unacknowledged_since,
            "refused_since_success": self.refused_since_success,
            "store_waiting_readings": self.store_waiting_readings,
            "store_waiting_units": self.store_waiting_units,
            "store_waiting_deviations": self.store_waiting_deviations,
            "store_waiting_since": self.store_waiting_since,
            "last_store_ack_ts": self.last_store_ack_ts,
            "store_acks": self.store_acks,
            "store_acks_refused": dict(self.store_acks_refused),
            "store_acks_other_outbox": self.store_acks_other_outbox,
            "store_resent": self.store_resent,
        }
