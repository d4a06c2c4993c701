"""Each device error code in words a technician acts on: what happened, and what to check.

The live page (collector/operations/page/) shows these beside a device's error counts and last
error; it fetches them once from ``GET /page/advice.json``. One entry per :class:`ErrorCode` (a test
checks that none is missing), so a new code cannot reach the page without an explanation.
"""

from __future__ import annotations

from typing import NamedTuple

from contract.codes import ErrorCode


class Advice(NamedTuple):
    #: What happened, in plain words.
    what: str
    #: What to check first, at the device or in the config.
    check: str


ADVICE: dict[ErrorCode, Advice] = {
    ErrorCode.CONNECTION: Advice(
        "Cannot reach the device.",
        "Is the device powered on and its network or serial cable plugged in? Are the host/port "
        "(or serial port) in the config right?",
    ),
    ErrorCode.TIMEOUT: Advice(
        "The device did not answer in time.",
        "Is the device on and not busy? For Modbus: is the unit id right, and for RS-485 the "
        "wiring (A/B) and baud rate? A slow device may need a longer timeout_ms.",
    ),
    ErrorCode.BAD_REPLY: Advice(
        "The device answered something that does not fit the request.",
        "Is this the device the config expects (model, firmware)? Are two masters sharing "
        "the line?",
    ),
    ErrorCode.BAD_INPUT: Advice(
        "A line from the instrument does not match the configured pattern.",
        "Look at the recent lines on /status (details.recent_lines) and compare them with the "
        "pattern; is the instrument in the right output mode?",
    ),
    ErrorCode.OVERLONG_LINES: Advice(
        "A line from the serial device was longer than max_line_bytes and was discarded.",
        "Is the baud rate right (noise makes endless lines) and the terminator the one the "
        "device sends? A device with long lines needs a larger max_line_bytes.",
    ),
    ErrorCode.DROPPED_LINES: Advice(
        "The serial device sent more lines between two polls than the collector keeps.",
        "Is the device in a streaming mode it should not be in? Poll it more often "
        "(poll_interval_ms) or set it to send less.",
    ),
    ErrorCode.BAD_FRAME: Advice(
        "Bytes arrived, but garbled (a checksum or framing error).",
        "Check the serial cable, termination and grounding, and that baud rate, parity and "
        "stop bits match the device.",
    ),
    ErrorCode.DECODE: Advice(
        "A value could not be decoded (for example not a finite number).",
        "Check the tag's type, byte order and word order against the device manual "
        "(collector probe shows every decoding).",
    ),
    ErrorCode.ILLEGAL_FUNCTION: Advice(
        "The device does not support this kind of read.",
        "Check the tag's table (holding, input, coil, discrete input) against the device manual.",
    ),
    ErrorCode.ILLEGAL_DATA_ADDRESS: Advice(
        "The device has no data at this address.",
        "Check the tag's address: addresses are 0-based (40001 is holding register 0), and "
        "the count must not run past the device's last register.",
    ),
    ErrorCode.ILLEGAL_DATA_VALUE: Advice(
        "The device refused the request's values (often too many registers at once).",
        "Check the tag's count and address; the device may need smaller reads.",
    ),
    ErrorCode.DEVICE_FAILURE: Advice(
        "The device reported an internal failure.",
        "Look at the device's own display or log; it may need a restart.",
    ),
    ErrorCode.ACKNOWLEDGE: Advice(
        "The device accepted the request but is still working on it.",
        "Usually passes by itself; if it lasts, the device is overloaded.",
    ),
    ErrorCode.DEVICE_BUSY: Advice(
        "The device is busy.",
        "Usually passes by itself; if it lasts, poll less often or check what else talks to it.",
    ),
    ErrorCode.GATEWAY_PATH_UNAVAILABLE: Advice(
        "The Modbus gateway has no path to this device.",
        "Check the gateway's configuration and the unit id.",
    ),
    ErrorCode.GATEWAY_TARGET_NO_RESPONSE: Advice(
        "The gateway is reachable, but the device behind it does not answer.",
        "Is the device behind the gateway powered and wired (RS-485)? Is the unit id right?",
    ),
    ErrorCode.EXCEPTION_OTHER: Advice(
        "The device answered with an error code this collector does not know.",
        "Look up the exception code in the device manual (it is in the log).",
    ),
    ErrorCode.BAD_STATUS: Advice(
        "The device marked the value as bad.",
        "Look at the device: the sensor or channel behind this tag may be disconnected or faulty.",
    ),
    ErrorCode.SECURITY: Advice(
        "A certificate or user login was refused.",
        "Does the server trust this collector's certificate (and we its)? Are the user name and "
        "password right? See docs/opcua.md, security.",
    ),
    ErrorCode.INTERNAL: Advice(
        "An unexpected error inside the collector.",
        "Note the time and send the collector's log to whoever maintains it.",
    ),
}


def advice_json() -> dict[str, dict[str, str]]:
    """Code -> {"what", "check"}: what the page fetches."""
    return {code.value: a._asdict() for code, a in ADVICE.items()}
