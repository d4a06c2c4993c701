"""bench.profile's attribution of py-spy samples to the parts of a poll (pure logic)."""

from __future__ import annotations

from pathlib import Path

from bench.profile import EVENT_LOOP, IDLE, OTHER, part_of, parts_of, thread_names

LOOP = (
    "thread (7): MainThread;run (asyncio/runners.py:190);BaseEventLoop._run_once "
    "(asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"
)


def test_the_deepest_frame_of_a_part_takes_the_sample() -> None:
    # pymodbus's send ends in asyncio's transport: the sample is pymodbus's
    send = (
        f"{LOOP};Poller._poll_once (collector/acquisition/poller.py:249);_ModbusDriver.read "
        "(drivers/modbus/driver.py:142);TransactionManager.execute "
        "(pymodbus/transaction/transaction.py:204);_SelectorSocketTransport.write "
        "(asyncio/selector_events.py:1057)"
    )
    assert part_of(send) == "pymodbus: transaction, framing, decode"
    decode = (
        f"{LOOP};Poller._poll_once (collector/acquisition/poller.py:249);readings_from_reply "
        "(drivers/modbus/plan.py:162)"
    )
    assert part_of(decode) == "our decode (drivers/modbus)"
    commit = (
        "thread (9): outbox_0;_worker (concurrent/futures/thread.py:83);Outbox.append "
        "(collector/buffer/store.py:271);Transaction.commit (sqlalchemy/engine/base.py:2628)"
    )
    assert part_of(commit).startswith("buffer:")


def test_waits_are_idle_and_the_loop_alone_is_the_loop() -> None:
    assert part_of(f"{LOOP};EpollSelector.select (selectors.py:468)") == IDLE
    assert part_of("thread (9): outbox_0;_worker (concurrent/futures/thread.py:81)") == IDLE
    assert part_of(f"{LOOP};_set_result_unless_cancelled (asyncio/futures.py:315)") == EVENT_LOOP
    assert part_of("thread (3): Thread-1;gc_collect (gc.py:1)") == OTHER


def test_raw_output_is_counted_per_thread(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{LOOP};EpollSelector.select (selectors.py:468) 40\n"
        f"{LOOP};readings_from_reply (drivers/modbus/plan.py:162) 3\n"
        "thread (9): outbox_0;_worker (concurrent/futures/thread.py:81) 5\n"
    )
    counts = parts_of(raw)
    assert counts[7] == {IDLE: 40, "our decode (drivers/modbus)": 3}
    assert counts[9] == {IDLE: 5}
    assert thread_names(raw) == {7: "MainThread", 9: "outbox"}
