"""What text a record's fields may hold: the one check every unit serial passes, whatever its
source (a scanner, a device's string register, POST /stations/{name}/unit), and the character
classes a config or an HTTP body refuses.

A serial with a control or format character (Unicode Cc/Cf: NUL, ESC, a bidi override, a
zero-width space) or a line or paragraph separator (Zl/Zp: U+2028, U+2029) is line noise or an
attack, never a unit. Where it is shown in a log, it is
escaped, never raw (an ESC would drive the technician's terminal; a bidi override would make
the log lie).
"""

from __future__ import annotations

import unicodedata

#: Longest serial taken (a label's code is a few tens of characters).
MAX_SERIAL_CHARS = 128
#: Unicode's line (Zl) and paragraph (Zp) separators: never in a serial.
_SEPARATORS = ("Zl", "Zp")


def is_control(char: str) -> bool:
    """A control (Cc) or format (Cf) character: NUL, ESC, bidi overrides, zero-width ones."""
    return unicodedata.category(char) in ("Cc", "Cf")


def serial_problem(serial: str) -> str | None:
    """Why ``serial`` cannot be a unit's serial, or None when it can."""
    if len(serial) > MAX_SERIAL_CHARS:
        return f"longer than {MAX_SERIAL_CHARS} characters ({len(serial)})"
    for char in serial:
        if is_control(char):
            return f"contains the control or format character U+{ord(char):04X}"
        if unicodedata.category(char) in _SEPARATORS:
            # U+2028/U+2029 end a line in a log viewer, a JSON-in-JS page or an editor: a
            # serial holding one would forge a second log line.
            return f"contains the line or paragraph separator U+{ord(char):04X}"
    return None


def escaped(text: str, limit: int = 80) -> str:
    """``text`` safe for a log line: every non-printable character escaped, cut to ``limit``."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} chars)"
