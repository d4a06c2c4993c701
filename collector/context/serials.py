"""Serials rejected on their way into the station context: counted per station (shown on
/status and /metrics) and logged once per episode. The check itself is the contract's
(contract.text.serial_problem), one for every source (a scanner, a device's string register,
POST /stations/{name}/unit).

A serial with a control or format character (Unicode Cc/Cf: NUL, ESC, a bidi override, a
zero-width space) is line noise or an attack, never a unit: it is rejected, counted per station
(shown on /status and /metrics) and logged once per episode, escaped, never raw (an ESC would
drive the technician's terminal; a bidi override would make the log lie).
"""

from __future__ import annotations

import logging
from collections import Counter

from contract.text import escaped, serial_problem

log = logging.getLogger(__name__)

#: Rejected serials per station (or per source where no station is known), since the start.
rejected: Counter[str] = Counter()
_logged: set[str] = set()


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
