"""What the collector and the central store share, and nothing that is either's alone:
config and start-up errors (:mod:`common.errors`), the hardened YAML loader with line numbers
(:mod:`common.yamlmodel`), config primitives and secrets (:mod:`common.config`), the HTTP
server with a connection bound (:mod:`common.httpserver`), systemd notify and watchdog
(:mod:`common.systemd`), reconnect backoff with a reachability probe (:mod:`common.backoff`),
and a fixed-bucket histogram (:mod:`common.histogram`).

Nothing is imported here: each service takes the modules it needs.
"""
