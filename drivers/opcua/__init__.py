"""OPC-UA: config models (config), certificates (certificates), the driver (driver, the only
asyncua client importer), the technician tools browse and opcua-cert (tools) and a simulated
burn-in rack (sim).

Nothing is imported here: the registry imports drivers.opcua.config without loading asyncua.
"""
