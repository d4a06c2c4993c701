"""The one check every unit serial passes, whatever its source (a scanner, a device's string
register, POST /stations/{name}/unit).

A serial with a control or format character (Unicode Cc/Cf: NUL, ESC, a bidi override, a
zero-width space) is line noise or an attack, never a unit: it is rejected, counted per station
(shown on /status and /metrics) and logged once per episode, escaped, never raw (an ESC would
drive the technician's terminal; a bidi override would make the log lie).
"""

from __future__ import annotations

import logging
from collections import Counter

from collector.yamlmodel import is_control

log = logging.getLogger(__name__)

#: Longest serial taken (a label's code is a few tens of characters).
MAX_SERIAL_CHARS = 128

#: Rejected serials per station (or per source where no station is known), since the start.
rejected: Counter[str] = Counter()
_logged: set[str] = set()


def serial_problem(serial: str) -> str | None:
    """Why ``serial`` cannot be a unit's serial, or None when it can."""
    if len(serial) > MAX_SERIAL_CHARS:
        return f"longer than {MAX_SERIAL_CHARS} characters ({len(serial)})"
    for char in serial:
        if is_control(char):
            return f"contains the control or format character U+{ord(char):04X}"
    return None


def escaped(text: str, limit: int = 80) -> str:
    """``text`` safe for a log line: every non-printable character escaped, cut to ``limit``."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} chars)"


def accepted(value: object, where: str) -> bool:
    """Whether a serial value may reach the station context. Non-text values (None: the unit
    left) pass; a rejected text is counted against ``where`` and logged once per episode (until
    a serial is accepted there again)."""
    if not isinstance(value, str):
        return True
    problem = serial_problem(value)
    if problem is None:
        _logged.discard(where)
        return True
    rejected[where] += 1
    if where not in _logged:
        _logged.add(where)
        log.warning(
            "%s: serial %s rejected: %s (further ones counted until a good one)",
            where,
            escaped(value),
            problem,
        )
    return False
