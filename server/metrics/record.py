"""What the request path reports, and the switch that makes it count: off
until enable() (`identify up` turns it on in every server process unless
`--metrics-port 0`), so a server without metrics pays one test per report.

The interceptor reports each call once, when it ends (finished); the rest
report where the thing happens. Labels come from the call being served
(server/requestctx.Call), never from a caller's text."""

from __future__ import annotations

import time
from typing import Any

from providers.kit import meter as kit_meter
from server.metrics import catalog
from server.requestctx import Call, call_var

LOGIN = "/identify.v1.Identify/Login"
CREATE_USER = "/identify.v1.Identify/CreateUser"
OK = "OK"

_on = False


def enable() -> None:
    global _on
    _on = True
    kit_meter.install(_KitMeter())


def disable() -> None:
    global _on
    _on = False
    kit_meter.install(None)


def enabled() -> bool:
    return _on


# "/pkg.Service/Method" -> ("pkg.Service", "Method"); the interceptor sees
# only methods a servicer registered, so this stays as small as the API.
_names: dict[str, tuple[str, str]] = {}


def _split(method: str) -> tuple[str, str]:
    found = _names.get(method)
    if found is None:
        service, _, name = method.lstrip("/").partition("/")
        found = _names[method] = (service, name)
    return found


# (metric, *label values) -> its child: prometheus-client's own lookup takes
# a lock and checks the values on every call. As bounded as the labels.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def finished(code: str, started: float) -> None:
    """One call answered with `code` (a grpc.StatusCode name); `started` is
    its time.perf_counter() on arrival."""
    if not _on:
        return
    call = call_var.get()
    if call is None:
        return
    seconds = time.perf_counter() - started
    service, name = _split(call.method)
    _child(catalog.RPCS, service, name, code).inc()
    _child(catalog.RPC_SECONDS, service, name).observe(seconds)
    result = OK if code == OK else (call.reason or code)
    if call.method == LOGIN:
        _child(catalog.LOGINS, call.project, call.provider, result).inc()
    elif call.method == CREATE_USER:
        _child(catalog.SIGN_UPS, call.project, call.provider, result).inc()
    if call.reason:
        _child(catalog.REFUSALS, call.project, call.provider, name, call.reason).inc()


def cache_lookup(cache: str, hit: bool) -> None:
    if _on:
        _child(catalog.CACHE_LOOKUPS, cache, "hit" if hit else "miss").inc()


def store_error(kind: str) -> None:
    if _on:
        _child(catalog.STORE_ERRORS, kind).inc()


def rate_limited(project: str, action: str, scope: str) -> None:
    if _on:
        _child(catalog.RATE_LIMITED, project, action, scope).inc()


def rate_limit_counter_error() -> None:
    if _on:
        catalog.RATE_LIMIT_COUNTER_ERRORS.inc()


def lockout_event(project: str, event: str) -> None:
    if _on:
        _child(catalog.LOCKOUT_EVENTS, project, event).inc()


def webhook_delivery(project: str, outcome: str) -> None:
    if _on:
        _child(catalog.WEBHOOK_DELIVERIES, project, outcome).inc()


def upstream_call(outcome: str, seconds: float) -> None:
    """One request to an identity provider, for the provider of the call
    being served ("none" outside any call)."""
    if not _on:
        return
    provider = _provider(call_var.get())
    _child(catalog.UPSTREAM_REQUESTS, provider, outcome).inc()
    _child(catalog.UPSTREAM_SECONDS, provider, outcome).observe(seconds)


def _provider(call: Call | None) -> str:
    return (call.provider if call is not None else "") or "none"


class _KitMeter:
    """providers/kit/meter.py's seam, filled in with these counters."""

    def upstream_call(self, outcome: str, seconds: float) -> None:
        upstream_call(outcome, seconds)

    def jwks_fetch(self, ok: bool) -> None:
        _child(catalog.JWKS_FETCHES, _provider(call_var.get()), "ok" if ok else "failed").inc()

    def token_cache(self, hit: bool) -> None:
        cache_lookup("verified_token", hit)
