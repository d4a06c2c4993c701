"""Modbus TCP and RTU: config models (config), register codec (codec), request planning and reply
checks (plan), the driver (driver, the only pymodbus client importer), the technician tools
probe and scan (tools) and a simulated device (sim).

Nothing is imported here: the registry imports drivers.modbus.config without loading pymodbus.
"""
