"""The errors every component raises on purpose, and the exit codes of the command lines.

    ShopfloorError
    ├── ConfigError          a config file is invalid (start-up stops; ``check`` prints it)
    ├── StartupError         a resource the service needs cannot be had (buffer file, port)
    └── DeviceError          (drivers.base) something went wrong talking to a device

The original library exception is kept as ``__cause__``.
"""

from __future__ import annotations


class ShopfloorError(Exception):
    """Base of every error the collector and the store raise on purpose."""


class ConfigError(ShopfloorError):
    """The configuration is invalid. ``problems`` holds one ``FILE:LINE: path: message`` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StartupError(ShopfloorError):
    """The service cannot start: e.g. the buffer cannot be opened or a port is taken."""


# Exit codes of the command line (collector.cli and the protocols' technician tools).
EXIT_STARTUP = 1  # a start-up failure, e.g. the buffer cannot be opened or a device not reached
EXIT_CONFIG = 2  # an invalid config or command line
