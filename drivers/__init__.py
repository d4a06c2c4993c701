"""Protocol drivers, one package per protocol: drivers/modbus, drivers/opcua, drivers/serial.

Each package holds its config models (``config.py``), its pure parts, the driver (the package's
only importer of its protocol library), its technician tools and its simulator (``sim.py``).
drivers.registry maps a config's ``protocol`` to (config model, driver); adding a protocol is
one folder and one line there.

Nothing is imported here: importing a package's config models must not load its library.
"""
