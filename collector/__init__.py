"""Shop-floor edge data collector: the service on each line PC.

Data flow, one role folder each: driver (drivers/<protocol>, contract drivers.base) ->
reading (contract.records) -> acquisition (collector.acquisition.poller) -> context
(collector.context) -> buffer (collector.buffer) -> delivery (collector.delivery) -> broker.
What a technician sees of it: collector.operations. The JSON that the buffer stores and the
forwarder publishes is the message contract's (contract.encode).
"""

__version__ = "0.1.0"
