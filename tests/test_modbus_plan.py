"""Coalescing plans: as few requests as possible, within the protocol's limits."""

from __future__ import annotations

from typing import Any

from drivers.modbus.codec import TagCodec
from drivers.modbus.config import ByteOrder, ModbusTag, WordOrder
from drivers.modbus.plan import plan_requests


def tags(
    *specs: tuple[str, str, int, str] | tuple[str, str, int, str, dict[str, Any]],
) -> list[TagCodec]:
    out = []
    for spec in specs:
        name, table, address, type_ = spec[:4]
        extra = spec[4] if len(spec) == 5 else {}
        tag = ModbusTag.model_validate(
            {"name": name, "table": table, "address": address, "type": type_, **extra}
        )
        out.append(TagCodec(tag, ByteOrder.BIG, WordOrder.BIG))
    return out


def spans(requests: list[Any]) -> list[tuple[str, int, int, list[str]]]:
    return [(r.table.value, r.address, r.count, [c.tag.name for c in r.tags]) for r in requests]


def test_neighbours_share_one_request() -> None:
    plan = plan_requests(
        tags(
            ("a", "holding_register", 0, "float32"),
            ("b", "holding_register", 2, "uint16"),
            ("c", "holding_register", 3, "int64"),
        )
    )
    assert spans(plan) == [("holding_register", 0, 7, ["a", "b", "c"])]


def test_gap_up_to_the_limit_is_bridged_and_a_larger_one_splits() -> None:
    t = tags(
        ("a", "holding_register", 0, "uint16"),
        ("b", "holding_register", 5, "uint16"),
        ("c", "holding_register", 20, "uint16"),
    )
    # a ends at 1, b starts at 5: gap of 4 registers; b ends at 6, c starts at 20: gap 14.
    assert spans(plan_requests(t, max_gap_registers=4)) == [
        ("holding_register", 0, 6, ["a", "b"]),
        ("holding_register", 20, 1, ["c"]),
    ]
    assert spans(plan_requests(t, max_gap_registers=3)) == [
        ("holding_register", 0, 1, ["a"]),
        ("holding_register", 5, 1, ["b"]),
        ("holding_register", 20, 1, ["c"]),
    ]
    assert spans(plan_requests(t, max_gap_registers=14)) == [
        ("holding_register", 0, 21, ["a", "b", "c"])
    ]


def test_request_never_exceeds_125_registers() -> None:
    t = tags(*[(f"r{i}", "input_register", i * 2, "float32") for i in range(100)])  # 200 regs
    plan = plan_requests(t)
    assert [(r.address, r.count) for r in plan] == [(0, 124), (124, 76)]
    assert all(r.count <= 125 for r in plan)
    assert sum(len(r.tags) for r in plan) == 100


def test_a_multi_register_value_is_never_split_across_requests() -> None:
    t = tags(("a", "holding_register", 0, "uint16"), ("b", "holding_register", 124, "float32"))
    plan = plan_requests(t, max_gap_registers=200)
    assert spans(plan) == [("holding_register", 0, 1, ["a"]), ("holding_register", 124, 2, ["b"])]


def test_bits_coalesce_up_to_2000() -> None:
    t = tags(*[(f"c{i}", "coil", i * 10, "bool") for i in range(250)])  # coils 0..2490
    plan = plan_requests(t, max_gap_bits=10)
    assert [(r.address, r.count) for r in plan] == [(0, 1991), (2000, 491)]


def test_tables_are_never_mixed_and_order_is_stable() -> None:
    t = tags(
        ("h", "holding_register", 0, "uint16"),
        ("i", "input_register", 0, "uint16"),
        ("c", "coil", 0, "bool"),
        ("d", "discrete_input", 0, "bool"),
    )
    assert [r.table.value for r in plan_requests(t)] == [
        "coil",
        "discrete_input",
        "input_register",
        "holding_register",
    ]


def test_overlapping_tags_share_registers() -> None:
    t = tags(
        ("word", "holding_register", 10, "uint16"),
        ("flag", "holding_register", 10, "bool", {"bit": 2}),
        ("serial", "holding_register", 8, "string", {"count": 4}),
    )
    assert spans(plan_requests(t)) == [("holding_register", 8, 4, ["serial", "word", "flag"])]


def test_device_workaround_lowers_the_limit() -> None:
    t = tags(*[(f"r{i}", "holding_register", i, "uint16") for i in range(30)])
    assert [(r.address, r.count) for r in plan_requests(t, max_registers=10)] == [
        (0, 10),
        (10, 10),
        (20, 10),
    ]
