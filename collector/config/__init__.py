"""Typed configuration: one declaration per option (type, default, description), validated once.

Split by section: :mod:`~collector.config.base` (``collector``, ``buffer``, ``mqtt``,
``health``, ``tagging``), :mod:`~collector.config.stations`, :mod:`~collector.config.model` (the
whole file and its device union, built from drivers.registry; each protocol's device models live
in its package, drivers/<protocol>/config.py) and :mod:`~collector.config.loader` (YAML with
line numbers, CSV register maps, the machine's secrets). docs/configuration.md documents every
option.
"""

from __future__ import annotations

from collector.config.base import (
    BufferConfig,
    HealthConfig,
    Identity,
    MqttConfig,
    MqttVersion,
    Synchronous,
    TaggingConfig,
    TlsConfig,
    ValueKeys,
)
from collector.config.loader import load_config, parse_config
from collector.config.model import Config, DeviceConfig, FieldError
from collector.config.stations import (
    StationConfig,
    TagRef,
    UnitEnd,
    Verdict,
    VerdictSource,
    verdict_key,
)

__all__ = [
    "BufferConfig",
    "Config",
    "DeviceConfig",
    "FieldError",
    "HealthConfig",
    "Identity",
    "MqttConfig",
    "MqttVersion",
    "StationConfig",
    "Synchronous",
    "TagRef",
    "TaggingConfig",
    "TlsConfig",
    "UnitEnd",
    "ValueKeys",
    "Verdict",
    "VerdictSource",
    "load_config",
    "parse_config",
    "verdict_key",
]
