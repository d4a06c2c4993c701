"""Operations: what technicians and monitoring see of a running collector. The HTTP server
(/health, /status, /metrics, the unit endpoint), the live page and its event feed, the
Prometheus metrics and the advice shown beside each device error code."""
