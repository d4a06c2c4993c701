"""Serial ASCII instruments and barcode scanners: config models (config, also the serial line
settings Modbus RTU uses), line assembly and parsing (lines), the drivers (driver, the only
pyserial importer), the probe tool (tools) and a simulated scanner (sim).

Nothing is imported here: the registry imports drivers.serial.config without loading pyserial.
"""
