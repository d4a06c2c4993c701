"""Shop-floor edge data collector.

Data flow, one module each: driver (drivers/*) -> reading (collector.reading) ->
context (collector.context) -> buffer (collector.buffer) -> forwarder (collector.forwarder).
The JSON that the buffer stores and the forwarder publishes is collector.message.
"""

__version__ = "0.1.0"
