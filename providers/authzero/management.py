"""The slice of the Auth0 Management API that authZero uses: a
client-credentials token (cached until shortly before it expires, fetched by
one caller at a time), `PATCH /api/v2/users/{id}` (scope `update:users`) and
`DELETE /api/v2/users/{id}` (scope `delete:users`, the admin API's erasure).

Auth0 rate-limits both endpoints per tenant, so the token is reused across
calls and a 401 refetches it once, never in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from providers.kit.http import (
    guarded,
    json_object,
    misconfigured,
    rate_limited,
    retry_after,
    upstream_error,
)
from providers.values import AlreadyExists, InvalidArgument, NotFound, ProviderError

log = logging.getLogger(__name__)

PROVIDER = "authZero"
# Refetch this long before the token's stated expiry, so a request never
# leaves with a token that expires on the way.
EXPIRY_MARGIN = 60.0


@dataclass(frozen=True)
class ManagementConfig:
    token_url: str
    api_url: str  # ends with "/"
    audience: str
    client_id: str
    client_secret: str
    connection: str | None
    timeout: float


class Auth0Management:
    def __init__(
        self,
        config: ManagementConfig,
        http: httpx.AsyncClient,
        *,
        now: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._http = http
        self._now = now
        self._mono = monotonic
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def set_username(self, user_id: str, username: str) -> None:
        body: dict[str, Any] = {"username": username}
        if self._cfg.connection:
            body["connection"] = self._cfg.connection
        self._raise_for_patch(await self._send("PATCH", user_id, json=body))

    async def delete_user(self, user_id: str) -> None:
        """Delete the Auth0 user; one that no longer exists counts as deleted."""
        resp = await self._send("DELETE", user_id)
        status = resp.status_code
        if status in (200, 204, 404):
            return
        if status in (401, 403):
            log.error(
                "Auth0 Management API refused to delete a user (HTTP %d); the application"
                " needs the delete:users scope",
                status,
            )
            raise misconfigured(PROVIDER, "the Management API token (scope delete:users)")
        if status == 429:
            raise rate_limited(PROVIDER, self._retry_after(resp))
        raise upstream_error(PROVIDER, status)

    async def _send(self, method: str, user_id: str, **kwargs: Any) -> httpx.Response:
        url = self._cfg.api_url + "users/" + quote(user_id, safe="")
        token: str | None = None
        for attempt in (1, 2):
            token = await self._access_token(stale=token)
            resp = await guarded(
                self._http.request(
                    method,
                    url,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._cfg.timeout,
                    **kwargs,
                )
            )
            if resp.status_code == 401 and attempt == 1:
                continue  # revoked or rotated upstream: one fresh token, one retry
            return resp
        raise AssertionError("unreachable: the second attempt returns")

    async def _access_token(self, *, stale: str | None) -> str:
        async with self._lock:
            if self._token and self._token != stale and self._mono() < self._expires_at:
                return self._token
            self._token = None
            resp = await guarded(
                self._http.post(
                    self._cfg.token_url,
                    json={
                        "grant_type": "client_credentials",
                        "client_id": self._cfg.client_id,
                        "client_secret": self._cfg.client_secret,
                        "audience": self._cfg.audience,
                    },
                    timeout=self._cfg.timeout,
                )
            )
            if resp.status_code in (400, 401, 403):
                log.error(
                    "Auth0 refused the Management API client credentials (HTTP %d)",
                    resp.status_code,
                )
                raise misconfigured(PROVIDER, "the Management API client credentials")
            if resp.status_code == 429:
                raise rate_limited(PROVIDER, self._retry_after(resp))
            body = json_object(resp) if resp.status_code == 200 else None
            token = body.get("access_token") if body else None
            lifetime = body.get("expires_in") if body else None
            if not isinstance(token, str) or not isinstance(lifetime, int | float):
                raise upstream_error(PROVIDER, resp.status_code)
            self._token = token
            self._expires_at = self._mono() + max(0.0, float(lifetime) - EXPIRY_MARGIN)
            return token

    def _raise_for_patch(self, resp: httpx.Response) -> None:
        status = resp.status_code
        if status == 200:
            return
        error: ProviderError
        if status == 400:
            error = InvalidArgument(
                "USERNAME_REJECTED",
                "Auth0 does not accept this username for this user",
                metadata={"field": "username", "provider": PROVIDER},
            )
        elif status == 404:
            error = NotFound(
                "UPSTREAM_USER_NOT_FOUND",
                "the user no longer exists at Auth0",
                metadata={"provider": PROVIDER},
            )
        elif status == 409:
            error = AlreadyExists(
                "USERNAME_TAKEN",
                "another Auth0 user has this username",
                metadata={"field": "username", "provider": PROVIDER},
            )
        elif status in (401, 403):
            log.error("Auth0 Management API refused our token (HTTP %d); check its scopes", status)
            error = misconfigured(PROVIDER, "the Management API token")
        elif status == 429:
            error = rate_limited(PROVIDER, self._retry_after(resp))
        else:
            error = upstream_error(PROVIDER, status)
        raise error

    def _retry_after(self, resp: httpx.Response) -> float:
        # Auth0 sends x-ratelimit-reset (a Unix time) on its 429s.
        return retry_after(resp.headers, now=self._now(), reset_header="x-ratelimit-reset")
