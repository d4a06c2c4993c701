"""OPC-UA subscriptions: the handler asyncua calls with data changes, and the deadband filter
of a monitored item. The driver creates the subscription (drivers.opcua.driver)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif

from contract.records import Reading
from drivers.opcua.config import Deadband, OpcUaTag
from drivers.opcua.values import source_ts, to_readings


class Changes:
    """asyncua's subscription handler: data changes into a bounded deque, and a wake-up."""

    def __init__(
        self, tags: dict[int, OpcUaTag], limit: int, on_change: Callable[[], None]
    ) -> None:
        self.tags = tags  # client handle -> tag
        self.queue: deque[Reading] = deque()
        self.limit = limit
        self.dropped = 0
        self.lost: str | None = None
        self.on_change = on_change

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        tag = self.tags.get(data.subscription_data.client_handle or -1)
        if tag is None:
            return
        value = data.monitored_item.Value
        for reading in to_readings(tag, value, source_ts(value, time.time())):
            if len(self.queue) >= self.limit:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(reading)
        # asyncua calls this once per item of a notification, in one loop step: the poller
        # wakes once for all of them.
        self.on_change()

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        # e.g. BadShutdown / BadTimeout: the subscription is gone; reconnect.
        if status.Status.is_bad():
            self.lost = f"subscription ended by the server: {status.Status.name}"


def deadband_filter(deadband: Deadband | None) -> ua.DataChangeFilter | None:
    """The monitored item's filter for a tag's deadband (None: every change)."""
    if deadband is None:
        return None
    flt = ua.DataChangeFilter()
    flt.Trigger = ua.DataChangeTrigger.StatusValue
    flt.DeadbandType = (
        ua.DeadbandType.Absolute if deadband.type == "absolute" else ua.DeadbandType.Percent
    )
    flt.DeadbandValue = deadband.value
    return flt
