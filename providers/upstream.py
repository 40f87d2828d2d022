"""Calling a social network's HTTP API: one GET with a hard timeout on the
shared pooled client, transport failures turned into UNAVAILABLE, the body
read as JSON whatever the status, and query strings kept out of logs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from providers.base import ResourceExhausted, Unavailable, guarded

DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    headers: httpx.Headers
    # Parsed JSON, or None when the body was not JSON (proxies, outages).
    body: Any


async def get_json(
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout_s: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> UpstreamReply:
    resp = await guarded(
        http.get(
            url,
            params=params,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=timeout_s,
            follow_redirects=False,
        )
    )
    try:
        body = resp.json()
    except ValueError:
        body = None
    return UpstreamReply(resp.status_code, resp.headers, body)


def upstream_error(provider: str, status: int) -> Unavailable:
    # The status goes to metadata (operators correlate outages with it); the
    # upstream's own text never does.
    return Unavailable(
        "UPSTREAM_ERROR",
        f"{provider} did not answer as expected; try again later",
        metadata={"provider": provider, "upstreamStatus": str(status)},
        retry_after=1.0,
    )


def rate_limited(provider: str, retry_after: float) -> ResourceExhausted:
    return ResourceExhausted(
        "UPSTREAM_RATE_LIMITED",
        f"{provider} is throttling this service; try again later",
        metadata={"provider": provider},
        retry_after=max(1.0, retry_after),
    )


def misconfigured(provider: str) -> Unavailable:
    """The upstream refused *our* credentials (app id/secret): nothing the
    client can fix, so not a 401; operators see it in the log."""
    return Unavailable(
        "PROVIDER_MISCONFIGURED",
        f"{provider} rejected this project's app credentials",
        metadata={"provider": provider},
        retry_after=60.0,
    )


def timeout_setting(settings: Mapping[str, Any]) -> float:
    value = settings.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("timeoutSeconds must be a number")
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"timeoutSeconds must be > 0 and <= {MAX_TIMEOUT}")
    return float(value)


def url_setting(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{key} must be an http(s) URL")
    if url.query or url.fragment:
        raise ValueError(f"{key} must not carry a query or fragment")
    return value.rstrip("/")


def reject_unknown(settings: Mapping[str, Any], known: set[str], provider: str) -> None:
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"{provider}: unknown setting(s) {', '.join(unknown)};"
            f" known: {', '.join(sorted(known))}"
        )


class _DropQuery(logging.Filter):
    """httpx logs every request URL at INFO, query string included. Graph
    API calls carry the user's token and the app token there, so the query
    is cut from any URL argument before the record is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, httpx.URL) and a.query for a in record.args
        ):
            record.args = tuple(
                a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def keep_queries_out_of_logs() -> None:
    """Idempotent; called by every provider that puts secrets in a query."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _DropQuery) for f in logger.filters):
        logger.addFilter(_DropQuery())
