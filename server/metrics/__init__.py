"""The servers' own metrics (Prometheus): what the request path reports
(record.py), every metric's name and meaning (catalog.py), the shared HTTP
client's metered transport (upstream.py), and where it is all read
(exposition.py, the ops side: the supervisor's scrape endpoint)."""

from server.metrics.record import (
    cache_lookup,
    disable,
    enable,
    enabled,
    finished,
    lockout_event,
    rate_limit_counter_error,
    rate_limited,
    store_error,
    webhook_delivery,
)

__all__ = [
    "cache_lookup",
    "disable",
    "enable",
    "enabled",
    "finished",
    "lockout_event",
    "rate_limit_counter_error",
    "rate_limited",
    "store_error",
    "webhook_delivery",
]
