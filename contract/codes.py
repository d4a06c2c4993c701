"""The error codes a reading can carry: a fixed, bounded set (a consumer can switch on them).

Counted per device and shown on the collector's /status, written into bad-quality readings
(``error``), explained to technicians on the live page (collector.operations.advice).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The fixed set of error codes counted per device and shown on /status and in readings."""

    CONNECTION = "connection"
    TIMEOUT = "timeout"
    BAD_REPLY = "bad_reply"
    BAD_INPUT = "bad_input"  # a serial line that does not match the configured pattern
    BAD_FRAME = "bad_frame"  # bytes arrived but no valid frame: a CRC error on a serial line
    OVERLONG_LINES = "overlong_lines"  # a serial line longer than max_line_bytes, discarded
    DROPPED_LINES = "dropped_lines"  # lines beyond the driver's pending bound (a burst)
    DECODE = "decode"
    ILLEGAL_FUNCTION = "illegal_function"
    ILLEGAL_DATA_ADDRESS = "illegal_data_address"
    ILLEGAL_DATA_VALUE = "illegal_data_value"
    DEVICE_FAILURE = "device_failure"
    ACKNOWLEDGE = "acknowledge"
    DEVICE_BUSY = "device_busy"
    GATEWAY_PATH_UNAVAILABLE = "gateway_path_unavailable"
    GATEWAY_TARGET_NO_RESPONSE = "gateway_target_no_response"
    EXCEPTION_OTHER = "exception_other"
    BAD_STATUS = "bad_status"  # the device itself marked the value bad (an OPC-UA StatusCode)
    SECURITY = "security"  # a certificate or user identity was rejected (either side)
    INTERNAL = "internal"  # a driver raised something it should have translated: a bug
