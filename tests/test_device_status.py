"""What /status shows of a device's tags (pure logic: the live page's tests cover the rest
against real devices)."""

from __future__ import annotations

import json

from collector.acquisition.poller import DeviceStatus
from collector.operations.live import encode_status
from contract.codes import ErrorCode
from contract.records import Quality, Reading


def test_each_tags_last_reading_as_json_with_non_finite_numbers_as_text() -> None:
    status = DeviceStatus("tester-1", "modbus_tcp", "ft-1")
    for reading in (
        Reading(1.0, "voltage", 12.5, "V"),
        Reading(1.0, "serial", "SN-1"),
        Reading(2.0, "voltage", 12.75, "V"),  # a later poll replaces the value
        Reading(2.0, "temp", float("nan"), "degC", Quality.UNCERTAIN),
        Reading(2.0, "flow", float("-inf"), "l/min"),
        Reading.bad(2.0, "pressure", ErrorCode.ILLEGAL_DATA_ADDRESS, "bar"),
    ):
        status.last_readings[reading.tag] = reading
    tags = json.loads(encode_status({"devices": {"tester-1": status.snapshot()}}))["devices"][
        "tester-1"
    ]["tags"]
    assert tags == {
        "voltage": {"value": 12.75, "unit": "V", "quality": "good", "error": None, "ts": 2.0},
        "serial": {"value": "SN-1", "unit": None, "quality": "good", "error": None, "ts": 1.0},
        "temp": {"value": "nan", "unit": "degC", "quality": "uncertain", "error": None, "ts": 2.0},
        "flow": {"value": "-inf", "unit": "l/min", "quality": "good", "error": None, "ts": 2.0},
        "pressure": {
            "value": None,
            "unit": "bar",
            "quality": "bad",
            "error": "illegal_data_address",
            "ts": 2.0,
        },
    }
