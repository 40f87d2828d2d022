"""A JSON Web Key Set fetched from an issuer, cached, and refetched carefully.

Refetching on an unknown `kid` is how key rotation is picked up, but the
`kid` comes from an unauthenticated token: without a bound, a flood of forged
tokens would turn into a flood of requests to the issuer. So refetches are
single-flight (concurrent callers share one request) and drawn from a small
budget, a token bucket: `refetch_burst` refetches at once, then one more per
`refetch_interval`. A token signed with a key the issuer published a second
ago is accepted at once (the budget is full), while any number of forged
`kid`s costs the issuer at most `refetch_burst` fetches, then one per
interval. After a failed fetch, callers get UNAVAILABLE at once for
`failure_backoff` seconds instead of each trying again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from providers.kit.http import guarded, json_or_none
from providers.kit.meter import meter
from providers.values import Unauthenticated, Unavailable

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 512 * 1024
# Keys whose refresh keeps failing stay usable this long past their TTL, so a
# short issuer outage does not lock every user out.
MAX_STALE_SECONDS = 3600.0


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    key: PublicKey
    # The JWK's own `alg`, when it pins one; tokens must then use exactly it.
    alg: str | None
    jwk: Mapping[str, Any]


def parse_jwk(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """The public key of one JWK, or None when it must not verify signatures
    (symmetric, private, encryption-only, too weak, or unreadable)."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        return None
    if jwk.get("use") not in (None, "sig"):
        return None
    if "d" in jwk:
        # A published private key is a broken issuer; trusting it would let
        # anyone who read the JWKS sign tokens.
        log.error("JWKS key %.64r carries private material; ignored", kid)
        return None
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        return None
    kty = jwk.get("kty")
    key: Any
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(jwk))
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
        elif kty == "OKP":
            key = OKPAlgorithm.from_jwk(dict(jwk))
        else:
            # "oct" (HMAC) keys are never accepted from a published set.
            return None
    except Exception:  # any unreadable key is skipped, the others still work
        log.warning("JWKS key %.64r could not be parsed; ignored", kid)
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            log.warning("JWKS key %.64r is a %d-bit RSA key; ignored", kid, key.key_size)
            return None
    elif not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return None
    return VerificationKey(kid=kid, key=key, alg=alg, jwk=dict(jwk))


class RefetchBudget:
    """A token bucket: `burst` fetches at once, refilled at one per
    `interval` seconds. Every fetch a token causes spends from it; only a
    refetch for an unknown `kid` waits for it (a first fetch, or one after
    the TTL, goes ahead regardless: the keys are needed either way)."""

    def __init__(self, burst: int, interval: float, monotonic: Callable[[], float]) -> None:
        self._burst = float(max(1, burst))
        self._interval = interval
        self._mono = monotonic
        self._tokens = self._burst
        self._at = monotonic()

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def spend(self) -> None:
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)

    def _refill(self) -> None:
        now = self._mono()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
        self._at = now


class JwksCache:
    def __init__(
        self,
        http: httpx.AsyncClient,
        jwks_uri: Callable[[], Awaitable[str]],
        *,
        ttl: float = 600.0,
        refetch_interval: float = 30.0,
        refetch_burst: int = 3,
        failure_backoff: float = 2.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_keys_removed: Callable[[], None] | None = None,
    ) -> None:
        self._http = http
        self._jwks_uri = jwks_uri
        self._ttl = ttl
        self._budget = RefetchBudget(refetch_burst, refetch_interval, monotonic)
        self._failure_backoff = failure_backoff
        self._timeout = timeout
        self._mono = monotonic
        self._on_keys_removed = on_keys_removed
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt = -math.inf
        self._last_failed = False
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0

    async def key_for(self, kid: str) -> VerificationKey:
        if self._inflight is not None:
            # A fetch is already on its way: share it rather than refuse a
            # token signed with a key that fetch may bring.
            await self._join(kid)
            return self._lookup_after_fetch(kid)

        now = self._mono()
        since_attempt = now - self._last_attempt
        if self._fetched_at is not None and now - self._fetched_at < self._ttl:
            if kid in self._keys:
                return self._keys[kid]
            # An unknown kid within the TTL: a rotation, or a forgery.
            if not self._budget.available():
                raise _unknown_key()
        elif self._last_failed and since_attempt < self._failure_backoff:
            stale = self._stale_key(kid, now)
            if stale is not None:
                return stale
            raise _unavailable(retry_after=self._failure_backoff - since_attempt)

        await self._join(kid)
        return self._lookup_after_fetch(kid)

    def _lookup_after_fetch(self, kid: str) -> VerificationKey:
        key = self._keys.get(kid)
        if key is not None:
            return key
        raise _unknown_key()

    async def _join(self, kid: str) -> None:
        if self._inflight is None:
            self._budget.spend()
            self._last_attempt = self._mono()
            task = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        try:
            # shield: a caller that goes away must not cancel everyone's fetch.
            await asyncio.shield(self._inflight)
        except Unavailable:
            stale = self._stale_key(kid, self._mono())
            if stale is None:
                raise

    def _fetch_done(self, task: asyncio.Future[None]) -> None:
        self._inflight = None
        # Marks the exception as seen when every waiter was cancelled.
        if not task.cancelled():
            task.exception()

    def _stale_key(self, kid: str, now: float) -> VerificationKey | None:
        if self._fetched_at is None or now - self._fetched_at > self._ttl + MAX_STALE_SECONDS:
            return None
        key = self._keys.get(kid)
        if key is not None:
            log.warning("JWKS refresh failing; using a cached key past its TTL")
        return key

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            uri = await self._jwks_uri()
            resp = await guarded(self._http.get(uri, timeout=self._timeout))
            keys = _parse_set(resp)
        except Unavailable:
            self._last_failed = True
            meter().jwks_fetch(ok=False)
            raise
        self._last_failed = False
        meter().jwks_fetch(ok=True)
        # Keys already parsed keep their objects: parsing costs more than comparing.
        merged = {
            kid: (self._keys[kid] if kid in self._keys and self._keys[kid].jwk == k.jwk else k)
            for kid, k in keys.items()
        }
        removed = set(self._keys) - set(merged)
        self._keys = merged
        self._fetched_at = self._mono()
        if removed and self._on_keys_removed is not None:
            self._on_keys_removed()


def _parse_set(resp: httpx.Response) -> dict[str, VerificationKey]:
    if resp.status_code != 200:
        log.warning("JWKS fetch answered HTTP %d", resp.status_code)
        raise _unavailable()
    if len(resp.content) > MAX_JWKS_BYTES:
        log.warning("JWKS document is larger than %d bytes", MAX_JWKS_BYTES)
        raise _unavailable(reason="UPSTREAM_BAD_RESPONSE")
    body = json_or_none(resp)
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        log.warning("JWKS document is not a key set")
        raise _unavailable(reason="UPSTREAM_BAD_RESPONSE")
    keys: dict[str, VerificationKey] = {}
    for jwk in body["keys"]:
        if isinstance(jwk, dict):
            parsed = parse_jwk(jwk)
            if parsed is not None:
                keys[parsed.kid] = parsed
    return keys


def _unknown_key() -> Unauthenticated:
    return Unauthenticated(
        "UNKNOWN_SIGNING_KEY", "the token is signed with a key the issuer does not publish"
    )


def _unavailable(*, retry_after: float = 1.0, reason: str = "UPSTREAM_UNAVAILABLE") -> Unavailable:
    return Unavailable(
        reason,
        "the identity provider's signing keys cannot be fetched",
        retry_after=max(retry_after, 1.0),
    )
