"""Context: which unit, operation, attempt, slot and phase each reading belongs to.

- :mod:`~collector.context.tagging`: :class:`StationContext`, the signals (serial, start,
  verdict, cycle complete, operation) and the tagging of every reading by its own time.
- :mod:`~collector.context.units`: one station's units, their intervals and live figures.
- :mod:`~collector.context.serials`: serials rejected on their way in, counted and logged.
"""
