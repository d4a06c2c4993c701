"""The collector's small error hierarchy. Drivers translate library errors into these.

    CollectorError
    ├── ConfigError          the config is invalid (start-up stops; `collector check` prints it)
    ├── StartupError         a resource the service needs cannot be had (buffer file, port)
    └── DeviceError          something went wrong talking to a device; carries a bounded `code`
        ├── NotConnectedError    the link is down: the poller closes the driver and reconnects
        │                        with backoff
        └── RequestError         one request failed (timeout, exception reply, bad reply): the
                                 tags it covered become bad-quality readings; the link stays up

The original library exception is kept as ``__cause__``.
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


class CollectorError(Exception):
    """Base of every error the collector raises on purpose."""


class ConfigError(CollectorError):
    """The configuration is invalid. ``problems`` holds one ``FILE:LINE: path: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StartupError(CollectorError):
    """The service cannot start: e.g. the buffer cannot be opened or a port is taken."""


class DeviceError(CollectorError):
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


# Exit codes of the command line (collector.cli and the protocols' technician tools).
EXIT_STARTUP = 1  # a start-up failure, e.g. the buffer cannot be opened or a device not reached
EXIT_CONFIG = 2  # an invalid config or command line
