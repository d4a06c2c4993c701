"""OPC-UA: config models (config), certificates (certificates), the driver (driver, the only
asyncua client importer) and the parts it uses that speak asyncua's types: values as readings
(values), the subscription handler (subscription), browsing (browse); the technician tools
browse and opcua-cert (tools) and a simulated burn-in rack (sim).

Nothing is imported here: the registry imports drivers.opcua.config without loading asyncua.
"""
