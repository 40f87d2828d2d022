"""Calling an identity provider over HTTP: transport failures turned into
UNAVAILABLE, bodies read as "JSON or None", Retry-After understood, the
upstream errors every provider reports the same way, and query strings kept
out of logs.

The shared pooled client comes from the provider context; every call sets
its own timeout (the provider's `timeoutSeconds`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from providers.values import FailedPrecondition, ResourceExhausted, Unavailable

T = TypeVar("T")

# Bounds on what an upstream may ask us to wait: at least a second (a 0 would
# invite a hot retry loop), at most 15 minutes (a bogus far-future reset).
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 900.0


async def guarded(awaitable: Awaitable[T]) -> T:
    """Await an upstream call, turning transport failures into UNAVAILABLE."""
    try:
        return await awaitable
    except httpx.TimeoutException:
        raise Unavailable(
            "UPSTREAM_TIMEOUT", "the identity provider did not answer in time", retry_after=1.0
        ) from None
    except httpx.TransportError:
        raise Unavailable(
            "UPSTREAM_UNAVAILABLE", "the identity provider cannot be reached", retry_after=1.0
        ) from None


def json_or_none(resp: httpx.Response) -> Any:
    """The parsed body, or None when it is not JSON (proxies, outages)."""
    try:
        return resp.json()
    except ValueError:
        return None


def json_object(resp: httpx.Response) -> dict[str, Any] | None:
    body = json_or_none(resp)
    return body if isinstance(body, dict) else None


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    headers: httpx.Headers
    # Parsed JSON, or None when the body was not JSON.
    body: Any


async def get_json(
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout_s: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> UpstreamReply:
    """One GET, never following redirects, the body read whatever the status."""
    resp = await guarded(
        http.get(
            url,
            params=params,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=timeout_s,
            follow_redirects=False,
        )
    )
    return UpstreamReply(resp.status_code, resp.headers, json_or_none(resp))


def retry_after(
    headers: Mapping[str, str],
    *,
    now: float,
    default: float = MIN_RETRY_AFTER,
    reset_header: str | None = None,
) -> float:
    """Seconds to wait before retrying: from `reset_header` (a Unix time, as
    X and Auth0 send it) when given and present, else Retry-After (seconds
    or an HTTP date, RFC 9110 §10.2.3), else `default`; always within
    [MIN_RETRY_AFTER, MAX_RETRY_AFTER]."""
    seconds: float | None = None
    if reset_header is not None:
        reset = _number(headers.get(reset_header))
        if reset is not None:
            seconds = reset - now
    if seconds is None:
        value = headers.get("retry-after")
        seconds = _number(value)
        if seconds is None and value:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = None
    if seconds is None:
        seconds = default
    return float(min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


# --------------------------------------------------------------------------
# How every provider reports what went wrong upstream.
# --------------------------------------------------------------------------
def upstream_error(provider: str, status: int) -> Unavailable:
    # The status goes to metadata (operators correlate outages with it); the
    # upstream's own text never does.
    return Unavailable(
        "UPSTREAM_ERROR",
        f"{provider} did not answer as expected; try again later",
        metadata={"provider": provider, "upstreamStatus": str(status)},
        retry_after=1.0,
    )


def rate_limited(provider: str, wait: float) -> ResourceExhausted:
    return ResourceExhausted(
        "UPSTREAM_RATE_LIMITED",
        f"{provider} is throttling this service; try again later",
        metadata={"provider": provider},
        retry_after=max(MIN_RETRY_AFTER, wait),
    )


def misconfigured(provider: str, what: str = "this project's settings") -> FailedPrecondition:
    """The upstream refused *our* side (app credentials, pool, client): not
    the client's fault, and retrying will not help until an operator fixes
    the project. FAILED_PRECONDITION (HTTP 400) everywhere, no RetryInfo;
    operators see the cause in the server's log."""
    return FailedPrecondition(
        "PROVIDER_MISCONFIGURED",
        f"{provider} refused {what}; contact the operator",
        metadata={"provider": provider},
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
