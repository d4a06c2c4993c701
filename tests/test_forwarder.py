"""The forwarder's delivery policy against a fake publisher
(collector.delivery.publisher.Publisher): the in-flight window, the lanes, splitting,
quarantine, the message sizes learned from a broker, retries, and unit records through the same
loop. A real SQLite buffer; no broker, so each test
runs in milliseconds. The same rules against a real mosquitto are in tests/faults/ and
tests/test_mqtt_broker_rules.py; the rule that a message whose connection died before its
PUBACK is kept and sent again is also checked here against a real mosquitto, through a proxy
that loses the PUBACK (:class:`PubackCutter`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from collector.buffer import AsyncOutbox, make_batch
from collector.config import Config
from collector.delivery.forwarder import Forwarder
from collector.delivery.publisher import Ack, ConnectionLost, MqttStatus
from contract.decode import decode_readings, decode_units
from contract.encode import PollEncoder
from contract.records import Context, ContextChanges, Reading, UnitRecord
from tests.helpers import LoopbackTcpServer, Mosquitto, Subscriber, async_wait_until

ENCODER = PollEncoder()
HOLD = -1  # the fake keeps the message unanswered until the test answers it
DROP = -2  # the connection dies with the message in flight
REFUSE_AND_DROP = -3  # refused (Not authorized), then the broker ends the connection
ACCEPT = 0x00
NOT_AUTHORIZED = 0x87
TOO_LARGE = 0x95
NAMES = {ACCEPT: "Success", NOT_AUTHORIZED: "Not authorized", TOO_LARGE: "Packet too large"}

Answer = Callable[[str, bytes], int]


class FakePublisher:
    """Answers each publish as ``answer(topic, payload)`` says, on a later loop step (as a
    PUBACK would arrive); reconnects at once after a dropped connection."""

    def __init__(self, answer: Answer = lambda _t, _p: ACCEPT) -> None:
        self.answer = answer
        self.connected = True
        self.connection = 0
        self.max_packet_bytes: int | None = None
        self.sent: list[tuple[str, bytes]] = []
        # What the fake broker acknowledged as accepted: its own record, not the forwarder's.
        self.acknowledged: list[tuple[str, bytes]] = []
        self._messages: dict[int, tuple[str, bytes]] = {}
        self.retained: list[bool] = []  # of each message sent
        self.held: list[asyncio.Future[Ack]] = []
        self.outstanding = 0
        self.most_outstanding = 0
        self.outstanding_before: list[int] = []  # unanswered when each message was sent
        self._listener: Callable[[], None] = lambda: None
        self._closed = asyncio.Event()
        self._in_flight: list[asyncio.Future[Ack]] = []

    def set_listener(self, listener: Callable[[], None]) -> None:
        self._listener = listener

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future[Ack]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ack] = loop.create_future()
        self.sent.append((topic, payload))
        self.retained.append(retain)
        self._in_flight.append(future)
        self._messages[id(future)] = (topic, payload)
        self.outstanding_before.append(self.outstanding)
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        verdict = self.answer(topic, payload)
        if verdict == HOLD:
            self.held.append(future)
        elif verdict == DROP:
            loop.call_soon(self.drop)
        elif verdict == REFUSE_AND_DROP:
            loop.call_soon(self.resolve, future, NOT_AUTHORIZED)
            loop.call_soon(self.drop, True)
        else:
            loop.call_soon(self.resolve, future, verdict)
        return future

    def resolve(self, future: asyncio.Future[Ack], code: int = ACCEPT) -> None:
        if not future.done():
            self.outstanding -= 1
            self._in_flight.remove(future)
            future.set_result(Ack(code, NAMES[code]))
            if code == ACCEPT:
                self.acknowledged.append(self._messages[id(future)])
        self._listener()

    def drop(self, after_refusal: bool = False) -> None:
        """The connection ends: what is in flight fails; connected again at once."""
        self.connection += 1
        for future in self._in_flight:
            if not future.done():
                future.set_exception(ConnectionLost(self.connection, after_refusal))
        self._in_flight.clear()
        self.held.clear()
        self.outstanding = 0
        self._listener()

    async def run(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()

    # ------------------------------------------------------------------ what arrived

    def payloads(self) -> list[list[int]]:
        """The seqs of each readings message sent."""
        return [
            [r.seq for r in decode_readings(p)] for t, p in self.sent if t.endswith("/readings")
        ]

    def acknowledged_seqs(self) -> list[int]:
        """The seqs of the readings messages the fake acknowledged as accepted."""
        return [
            r.seq
            for t, p in self.acknowledged
            if t.endswith("/readings")
            for r in decode_readings(p)
        ]


def config(tmp_path: Path, **mqtt: Any) -> Config:
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": str(tmp_path / "b.db")},
            "mqtt": {"delivery": "broker", **mqtt},  # no store here: delete on PUBACK
            "devices": [
                {
                    "name": "dev",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "tags": [{"name": "t", "table": "holding_register", "address": 0}],
                }
            ],
        }
    )


async def store_polls(box: AsyncOutbox, polls: int, per_poll: int, tag: str = "t") -> None:
    """``polls`` polls of ``per_poll`` readings each, stored as the writer stores them (with
    no unit context: these tests follow seqs, and a context version is kept by the writer,
    not here)."""
    context = Context(None, None, None)
    batches = []
    seq = box.outbox.last_seq + 1
    for p in range(polls):
        readings = [Reading(1_700_000_000.0 + p, f"{tag}{i}", i, "V") for i in range(per_poll)]
        batches.append(make_batch(ENCODER, seq, "dev", readings, [context] * per_poll))
        seq += per_poll
    await box.append(batches)


class Running:
    def __init__(self, box: AsyncOutbox, forwarder: Forwarder, fake: FakePublisher) -> None:
        self.box, self.forwarder, self.fake = box, forwarder, fake
        self.accepted: list[bytes] = []

    def delivered_seqs(self, key: str = "readings") -> list[int]:
        decode = decode_units if key == "units" else decode_readings
        return [
            item.seq
            for message in self.accepted
            if (b'"units":' in message) == (key == "units")
            for item in decode(message)
        ]


@asynccontextmanager
async def forwarding(
    tmp_path: Path, fake: FakePublisher, before: int = 0, per_poll: int = 5, **mqtt: Any
) -> AsyncIterator[Running]:
    """A real buffer with ``before`` polls stored, and the forwarder running on the fake."""
    box = AsyncOutbox(tmp_path / "b.db", 100_000)
    await box.open()
    if before:
        await store_polls(box, before, per_poll)
    forwarder = Forwarder(
        config(tmp_path, **mqtt),
        box,
        MqttStatus(),
        publisher=fake,
        refusal_backoff_s=(0.001, 0.01),
    )
    running = Running(box, forwarder, fake)
    forwarder._on_delivered = running.accepted.append
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop, grace_s=5))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await box.close()


async def test_window_of_messages_in_flight_is_filled_and_never_exceeded(tmp_path: Path) -> None:
    fake = FakePublisher(lambda _t, _p: HOLD)
    async with forwarding(
        tmp_path, fake, before=20, max_readings_per_message=5, max_inflight_messages=3
    ) as run:
        await async_wait_until(lambda: len(fake.held) == 3, 5, "the window filled")
        assert len(fake.sent) == 3  # none beyond it while nothing is answered
        fake.answer = lambda _t, _p: ACCEPT
        for future in list(fake.held):
            fake.resolve(future)
        await async_wait_until(lambda: len(run.delivered_seqs()) == 100, 5, "all delivered")
        await async_wait_until(lambda: run.box.outbox.depth == 0, 5, "all deleted")
    assert fake.most_outstanding == 3
    assert run.delivered_seqs() == list(range(1, 101))


async def test_backlog_and_live_readings_take_turns(tmp_path: Path) -> None:
    fake = FakePublisher(lambda _t, _p: HOLD)
    async with forwarding(
        tmp_path, fake, before=4, max_readings_per_message=5, max_inflight_messages=1
    ) as run:
        await async_wait_until(lambda: len(fake.held) == 1, 5, "the first backlog message")
        await store_polls(run.box, 2, 5)  # live readings arrive meanwhile: seq 21-30
        for _ in range(6):
            await async_wait_until(lambda: fake.held, 5, "a message to answer")
            fake.resolve(fake.held.pop(0))
        await async_wait_until(lambda: len(run.delivered_seqs()) == 30, 5, "all delivered")
    firsts = [m[0] for m in fake.payloads()]
    assert firsts == [1, 21, 6, 26, 11, 16]  # backlog, live, backlog, live, then the rest


async def test_refused_as_too_large_is_resent_one_per_message_and_the_bad_one_quarantined(
    tmp_path: Path,
) -> None:
    def answer(_topic: str, payload: bytes) -> int:
        return TOO_LARGE if b'"huge0"' in payload else ACCEPT

    fake = FakePublisher(answer)
    async with forwarding(tmp_path, fake, max_readings_per_message=100) as run:
        await store_polls(run.box, 2, 3)  # seq 1-6
        await store_polls(run.box, 1, 3, tag="huge")  # seq 7-9, huge0 is seq 7
        await store_polls(run.box, 1, 3)  # seq 10-12
        await async_wait_until(lambda: run.forwarder.status.quarantined == 1, 5, "quarantine")
        await async_wait_until(lambda: len(set(run.delivered_seqs())) == 11, 5, "the others")
        assert run.box.outbox.quarantined_total == 1
    assert sorted(set(run.delivered_seqs())) == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    assert run.forwarder.status.rejected["Packet too large"] >= 2  # whole, then alone
    sent = fake.payloads()
    assert [7] in sent  # the bad one alone (refused again, then moved aside)
    assert [8] in sent  # its neighbours resent one by one meanwhile


async def test_the_packet_size_a_broker_announces_is_applied(tmp_path: Path) -> None:
    """Every message fits the broker's Maximum Packet Size (its CONNACK's), topic and header
    included, while polls are still batched together up to it."""
    limit = 1600  # about 8 readings of 181 bytes

    def answer(topic: str, payload: bytes) -> int:
        return TOO_LARGE if len(payload) + len(topic) + 16 > limit else ACCEPT

    fake = FakePublisher(answer)
    fake.max_packet_bytes = limit
    async with forwarding(tmp_path, fake, before=30, per_poll=2) as run:
        await async_wait_until(lambda: len(run.delivered_seqs()) == 60, 5, "all delivered")
    sizes = [len(p) + len(t) + 16 for t, p in fake.sent]
    assert max(sizes) <= limit
    assert run.forwarder.status.rejected == {}
    assert max(len(m) for m in fake.payloads()) > 2  # polls still go together
    assert run.delivered_seqs() == list(range(1, 61))


async def test_the_size_learned_from_a_broker_that_drops_large_messages_is_applied(
    tmp_path: Path,
) -> None:
    """A broker that drops the connection on a large message, without saying why: after two
    drops the message is resent one reading per message, and from then on no message is
    larger than half the one that was dropped."""
    first: list[int] = []

    def answer(_topic: str, payload: bytes) -> int:
        if not first:
            first.append(len(payload))
        return DROP if len(payload) > first[0] * 3 // 4 else ACCEPT

    fake = FakePublisher(answer)
    async with forwarding(tmp_path, fake, before=40) as run:
        await async_wait_until(lambda: len(run.delivered_seqs()) == 200, 5, "the first 200")
        learned_at = len(fake.sent)
        await store_polls(run.box, 40, 5)  # as many again, all waiting at once
        await async_wait_until(lambda: len(set(run.delivered_seqs())) == 400, 5, "all")
    learned = first[0] // 2
    later = [len(p) for _t, p in fake.sent[learned_at:]]
    assert max(later) <= learned
    assert sorted(set(run.delivered_seqs())) == list(range(1, 401))
    # A limit for batching, not one reading per message for ever:
    assert max(len(m) for m in fake.payloads()[learned_at:]) > 1


async def test_a_broker_that_ends_the_connection_after_a_refusal_is_not_taken_for_a_size_limit(
    tmp_path: Path,
) -> None:
    """mosquitto 2.0.11 with ``max_queued_messages 0`` ends the connection after every refused
    publish (an ACL denial), taking the messages in flight behind the refused one with it. Those
    are not suspects: no split, no learned size; once allowed, everything goes in batches."""
    refusals = 0

    def answer(topic: str, _payload: bytes) -> int:
        nonlocal refusals
        if topic.endswith("/readings") and refusals < 6:
            refusals += 1
            return REFUSE_AND_DROP
        return ACCEPT

    fake = FakePublisher(answer)
    async with forwarding(
        tmp_path, fake, before=40, max_readings_per_message=20, max_inflight_messages=4
    ) as run:
        await async_wait_until(lambda: len(set(run.delivered_seqs())) == 200, 5, "all")
    assert refusals == 6
    assert set(run.forwarder.status.rejected) == {"Not authorized"}
    assert run.forwarder._learned_max_bytes is None
    assert min(len(m) for m in fake.payloads()) == 20  # never split to one per message
    assert sorted(set(run.delivered_seqs())) == list(range(1, 201))


async def test_after_a_lost_connection_its_oldest_message_goes_alone_until_answered(
    tmp_path: Path,
) -> None:
    """The oldest message a connection died with is sent alone on the next one: if it ends
    that connection too, nothing else in flight shares the blame, and a broker that refuses it
    and hangs up has no unread data to reset the connection with (mosquitto 2.0.11 loses the
    refusal's PUBACK in that reset). Once it is answered, the window fills again."""
    verdicts = [DROP]

    def answer(_topic: str, _payload: bytes) -> int:
        return verdicts.pop(0) if verdicts else HOLD

    fake = FakePublisher(answer)
    async with forwarding(
        tmp_path, fake, before=20, max_readings_per_message=5, max_inflight_messages=4
    ) as run:
        await async_wait_until(lambda: fake.connection == 1 and fake.held, 5, "sent again")
        again = len(fake.sent) - 1
        assert fake.payloads()[again] == [1, 2, 3, 4, 5]  # the suspect, resent...
        fake.resolve(fake.held.pop(0))
        await async_wait_until(lambda: len(fake.held) == 4, 5, "the window filled again")
        assert fake.outstanding_before[again:] == [0, 0, 1, 2, 3]  # ...alone until answered
        fake.answer = lambda _t, _p: ACCEPT
        for future in list(fake.held):
            fake.resolve(future)
        await async_wait_until(lambda: len(set(run.delivered_seqs())) == 100, 5, "all")


async def test_a_poll_stored_larger_than_a_message_is_split_in_the_buffer(tmp_path: Path) -> None:
    """A buffer written before polls were cut at encode time (or with a larger
    max_readings_per_message) still goes out in messages of the configured size."""
    fake = FakePublisher()
    async with forwarding(tmp_path, fake, before=1, per_poll=12, max_readings_per_message=5) as run:
        await async_wait_until(lambda: len(run.delivered_seqs()) == 12, 5, "all delivered")
    assert [len(m) for m in fake.payloads()] == [4, 4, 4]
    assert run.delivered_seqs() == list(range(1, 13))


async def test_lost_connection_resends_what_was_in_flight_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    drops = [2]  # the 2nd publish loses the connection

    def answer(_topic: str, _payload: bytes) -> int:
        drops[0] -= 1
        return DROP if drops[0] == 0 else ACCEPT

    fake = FakePublisher(answer)
    async with forwarding(
        tmp_path, fake, before=10, max_readings_per_message=5, max_inflight_messages=2
    ) as run:
        # Judged on what the fake acknowledged, not on what the forwarder says it delivered: a
        # forwarder that took the lost connection for a delivery would say so too.
        await async_wait_until(
            lambda: set(fake.acknowledged_seqs()) == set(range(1, 51)), 5, "all acknowledged"
        )
        await async_wait_until(lambda: run.box.outbox.depth == 0, 5, "all deleted")
    assert fake.connection == 1
    assert fake.payloads()[1] == [6, 7, 8, 9, 10]  # the message the connection died with...
    assert fake.payloads().count([6, 7, 8, 9, 10]) == 2  # ...sent again on the next one
    assert sorted(run.delivered_seqs()) == sorted(fake.acknowledged_seqs())
    assert len(run.delivered_seqs()) - 50 <= 2 * 5  # duplicates within the window


PUBLISH, PUBACK = 3, 4  # MQTT control packet types


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT control packet: fixed header, remaining length, the rest."""
    packet = bytearray(await reader.readexactly(1))
    length, shift = 0, 0
    while True:  # the remaining length, a variable byte integer
        byte = (await reader.readexactly(1))[0]
        packet.append(byte)
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = await reader.readexactly(length)
    return bytes(packet) + body


def body_of(packet: bytes) -> bytes:
    index = 1
    while packet[index] & 0x80:
        index += 1
    return packet[index + 1 :]


TOPIC_ALIAS = 0x23


def publish_topic(body: bytes, aliases: dict[bytes, bytes]) -> bytes:
    """The topic of a QoS-1 MQTT v5 PUBLISH (its body), also when it travels as a Topic Alias
    (collector.delivery.mqtt): ``aliases`` is the connection's alias -> topic."""
    topic_len = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + topic_len]
    at = 4 + topic_len  # after the packet id: the properties' length, then the properties
    if body[at] and body[at + 1] == TOPIC_ALIAS:  # the only property the collector sets
        alias = body[at + 2 : at + 4]
        if topic:
            aliases[alias] = topic  # this message names the alias
        return aliases.get(alias, b"")
    return topic


class PubackCutter(LoopbackTcpServer):
    """A proxy to a real broker, packet by packet, that loses the PUBACK of the first readings
    message and ends the connection there (both ends, no DISCONNECT): the broker has the message,
    the collector never hears that it did. New connections are refused until :meth:`recover`,
    so the test can look at the buffer between the cut and the reconnect."""

    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.connections = 0
        self.refusing = False
        self.cut = asyncio.Event()
        # Readings PUBLISH packets forwarded to the broker before the cut.
        self.readings_before_cut = 0

    def recover(self) -> None:
        self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        readings_ids: set[bytes] = set()  # packet ids of this connection's readings messages
        ends = (writer, up_writer)
        cut = asyncio.Event()  # this connection's cut (self.cut: the first one's, for the test)
        self._track(asyncio.create_task(self._up(reader, up_writer, readings_ids, ends, cut)))
        self._track(asyncio.create_task(self._down(up_reader, writer, readings_ids, ends, cut)))

    async def _up(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        readings_ids: set[bytes],
        ends: tuple[asyncio.StreamWriter, ...],
        cut: asyncio.Event,
    ) -> None:
        aliases: dict[bytes, bytes] = {}
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                packet = await read_packet(source)
                if cut.is_set():
                    break  # cut: nothing more reaches the broker (its side is ending cleanly)
                if packet[0] >> 4 == PUBLISH and (packet[0] >> 1) & 3:  # QoS 1 or 2
                    body = body_of(packet)
                    topic_len = int.from_bytes(body[:2], "big")
                    if publish_topic(body, aliases).endswith(b"/readings"):
                        # Noted before the broker can answer it.
                        readings_ids.add(body[2 + topic_len : 4 + topic_len])
                        if not self.cut.is_set():
                            self.readings_before_cut += 1
                sink.write(packet)
                await sink.drain()
        if not cut.is_set():
            for end in ends:
                end.close()

    async def _down(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        readings_ids: set[bytes],
        ends: tuple[asyncio.StreamWriter, ...],
        cut: asyncio.Event,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                packet = await read_packet(source)
                if (
                    not self.cut.is_set()
                    and packet[0] >> 4 == PUBACK
                    and body_of(packet)[:2] in readings_ids
                ):
                    self.refusing = True
                    cut.set()
                    self.cut.set()
                    break  # the PUBACK is lost with the connection
                sink.write(packet)
                await sink.drain()
        if not cut.is_set():
            for end in ends:
                end.close()
            return
        collector_side, broker_side = ends
        collector_side.close()
        # The broker's side ends cleanly: a FIN after what was forwarded, then its answers read
        # to its own end. Closed with answers unread, the socket would send a reset, and the
        # broker's kernel could drop PUBLISH data mosquitto had not read yet (seen under load):
        # "what the broker got" would no longer be what was forwarded.
        with contextlib.suppress(OSError):
            broker_side.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                while await source.read(1 << 16):
                    pass
        broker_side.close()


async def test_a_message_whose_connection_died_before_its_puback_is_kept_and_sent_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Against a real mosquitto: the broker took the first readings messages, but their
    connection ended before the collector got a PUBACK. Until a PUBACK says otherwise they are
    not delivered: every row stays in the buffer, and on the next connection exactly the same
    seqs go out again, each once, oldest first; only then are the rows deleted."""
    cutter = PubackCutter(mosquitto.port)
    await cutter.start()
    box = AsyncOutbox(tmp_path / "b.db", 100_000)
    await box.open()
    await store_polls(box, 10, 5)  # seqs 1-50, none delivered yet
    forwarder = Forwarder(
        config(
            tmp_path,
            host=cutter.host,
            port=cutter.port,
            max_readings_per_message=5,
            max_inflight_messages=4,
            reconnect_min_ms=100,
            reconnect_max_ms=300,
        ),
        box,
        MqttStatus(),
    )
    sub = Subscriber(mosquitto, forwarder.readings_topic, client_id="puback-consumer")
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop, grace_s=5))
    status = forwarder.status
    try:
        await asyncio.wait_for(cutter.cut.wait(), 10)
        # The forwarder has seen the connection end and settled what was in flight.
        await async_wait_until(
            lambda: not status.connected and status.in_flight == 0, 10, "the lost connection"
        )
        assert cutter.readings_before_cut >= 1
        # Everything the broker got on the cut connection reached the consumer (so what
        # arrives from now on came over the next connection).
        await async_wait_until(
            lambda: len(sub.payloads()) == cutter.readings_before_cut, 10, "the first messages"
        )
        before = sub.seqs()
        assert before == list(range(1, 5 * cutter.readings_before_cut + 1))  # in order
        # No PUBACK ever reached the collector: not one row is gone or waiting for its delete.
        kept = await box.take(0, 1000, 1 << 24)
        assert [s for b in kept for s in range(b.first_seq, b.last_seq + 1)] == list(range(1, 51))
        assert box.outbox.depth == 50
        assert status.readings_delivered == 0

        cutter.recover()
        await async_wait_until(lambda: len(sub.seqs()) - len(before) >= 50, 15, "all again")
        await async_wait_until(lambda: box.outbox.depth == 0, 10, "all deleted")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await box.close()
        sub.close()
        await cutter.stop()
    after = sub.seqs()[len(before) :]
    assert after == list(range(1, 51))  # the same seqs again, each once, oldest first
    assert cutter.connections == 2
    assert status.readings_delivered == 50


def unit(serial: str) -> UnitRecord:
    return UnitRecord(
        serial, "st", "op", 1, 1_700_000_000.0, 1_700_000_010.0, "verdict", "pass", None, 2, {}
    )


async def test_unit_records_go_through_the_same_loop_refused_ones_retried(tmp_path: Path) -> None:
    refusals = [1]

    def answer(topic: str, _payload: bytes) -> int:
        if topic.endswith("/units") and refusals[0]:
            refusals[0] -= 1
            return NOT_AUTHORIZED
        return ACCEPT

    fake = FakePublisher(answer)
    async with forwarding(tmp_path, fake, before=2) as run:
        await run.box.append([], ContextChanges([unit("SN1"), unit("SN2")], {}, {}))
        await async_wait_until(lambda: len(run.delivered_seqs("units")) == 2, 5, "units")
        await async_wait_until(lambda: len(run.delivered_seqs()) == 10, 5, "readings")
        await async_wait_until(lambda: run.box.outbox.units_depth == 0, 5, "units deleted")
    units = [u for m in run.accepted if b'"units":' in m for u in decode_units(m)]
    assert [(u.seq, u.serial) for u in units] == [(1, "SN1"), (2, "SN2")]
    assert run.forwarder.status.rejected == {"Not authorized": 1}
    assert run.forwarder.status.units_delivered == 2
    assert [t.rsplit("/", 1)[1] for t, _p in fake.sent].count("units") == 2  # refused, resent


async def test_on_connect_old_metadata_goes_first_not_retained_then_the_current_retained(
    tmp_path: Path,
) -> None:
    """Versions kept in the buffer that are not current are published again on every
    connect, not retained, before the current ones (retained) and before any readings; a
    version the broker refuses is said to the writer (on_meta_refused)."""
    from collector.buffer.schema import MetaUpdate
    from contract.encode import DeviceMeta

    def version(*tags: str) -> DeviceMeta:
        return DeviceMeta("dev", {t: {"unit": None} for t in tags}, tags)

    old, current = version("a", "b"), version("b", "a")
    box = AsyncOutbox(tmp_path / "b.db", 100_000)
    await box.open()
    context = Context(None, None, None)
    readings = [Reading(1_700_000_000.0, "a", 1), Reading(1_700_000_000.0, "b", 2)]
    # A poll of the old version stored with the reload that made it old.
    await box.append(
        [make_batch(ENCODER, 1, "dev", readings, [context] * 2, meta=old)],
        metas=MetaUpdate(
            ((old.device, old.meta, old.body), (current.device, current.meta, current.body)),
            frozenset({(current.device, current.meta)}),
        ),
    )
    fake = FakePublisher(lambda t, _p: NOT_AUTHORIZED if "/meta/" in t else ACCEPT)
    forwarder = Forwarder(config(tmp_path), box, MqttStatus(), publisher=fake)
    refused: list[tuple[str, str | None]] = []
    forwarder.on_meta_refused = lambda device, meta: refused.append((device, meta))
    fake.connected = False  # as at start-up: the metadata is set before the first connect
    forwarder.set_meta({"dev": current})
    fake.connected = True
    forwarder._changed()  # what the publisher says on a connect
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop, grace_s=5))
    try:
        await async_wait_until(lambda: box.outbox.depth == 0, 5, "the poll delivered")
        await async_wait_until(lambda: len(refused) == 2, 5, "the refusals said")
        # Its poll delivered, the old version is not kept any more.
        await async_wait_until(
            lambda: [m for _, m, _ in box.outbox.stored_metas()] == [current.meta], 5, "pruned"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await box.close()
    topics = [t.rsplit("/", 2)[-2:] for t, _ in fake.sent]
    assert topics[:3] == [["meta", "dev"], ["meta", "dev"], ["pc1", "readings"]]
    metas = [orjson.loads(p)["meta"] for t, p in fake.sent[:2]]
    assert metas == [old.meta, current.meta]
    assert fake.retained[:3] == [False, True, False]
    # Each refused version is said once (the writer keys its polls by tag from then on).
    assert sorted(refused) == sorted([("dev", old.meta), ("dev", current.meta)])
