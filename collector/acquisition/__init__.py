"""Acquisition: one poller per device drives its driver (drivers.base.Driver) on schedule,
bounds each read in time, reconnects with backoff and counts errors by code; its readings go to
the station context (collector.context)."""
