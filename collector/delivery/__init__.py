"""Delivery: from the buffer to the broker. The forwarder (delivery policy: lanes, window,
splitting, quarantine, acks) over the streams of readings and unit records, through the
publisher seam, which paho-mqtt implements in :mod:`~collector.delivery.mqtt` (the only
importer of paho)."""
