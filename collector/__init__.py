"""Shop-floor edge data collector.

Data flow, one module each: driver (drivers/*) -> reading (collector.reading) ->
context (collector.context) -> buffer (collector.buffer) -> forwarder (collector.forwarder).
"""

__version__ = "0.1.0"
