"""THE JWT verifier: every upstream token that is a JWT (authZero, oidc,
google, awsCognito access tokens) is checked here, the same way.

Each refusal is UNAUTHENTICATED with its own reason, so clients and
operators can tell an expired token from a forged one; an issuer that cannot
be reached is UNAVAILABLE, never a refusal of the user. A provider differs
only in its `VerifierConfig`: which issuers and audiences, which claim holds
the audience (Cognito access tokens carry `client_id`, not `aud`), which
claims must hold fixed values (`token_use: access`), which algorithms.

The order matters: the signature is checked before any claim, so an
unsigned or forged token learns nothing about which claims would pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from providers.kit.http import guarded, json_object
from providers.kit.jwks import JwksCache, VerificationKey
from providers.kit.meter import meter
from providers.kit.settings import SettingsError, SettingsReader, check_url
from providers.kit.tokens import MAX_TOKEN_CHARS
from providers.values import Unauthenticated, Unavailable

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "ES256")
# Only asymmetric algorithms exist here: an HMAC algorithm would let anyone
# holding the issuer's *public* key sign tokens with it as the shared secret.
_KEY_FOR_ALG: dict[str, tuple[type[Any], type[ec.EllipticCurve] | None]] = {
    "RS256": (rsa.RSAPublicKey, None),
    "RS384": (rsa.RSAPublicKey, None),
    "RS512": (rsa.RSAPublicKey, None),
    "PS256": (rsa.RSAPublicKey, None),
    "PS384": (rsa.RSAPublicKey, None),
    "PS512": (rsa.RSAPublicKey, None),
    "ES256": (ec.EllipticCurvePublicKey, ec.SECP256R1),
    "ES384": (ec.EllipticCurvePublicKey, ec.SECP384R1),
    "ES512": (ec.EllipticCurvePublicKey, ec.SECP521R1),
    "EdDSA": (ed25519.Ed25519PublicKey, None),
}
SUPPORTED_ALGORITHMS = tuple(_KEY_FOR_ALG)
MAX_LEEWAY = 300
# Verified tokens kept per verifier (so per project and provider), least
# recently used dropped first: at ~1 KB of claims each, about 10 MB at most.
CLAIMS_CACHE_SIZE = 10_000

Claims = Mapping[str, Any]


@dataclass(frozen=True)
class VerifierConfig:
    # Accepted `iss` values (Google uses two spellings of one issuer).
    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    # None: discovered from {issuer}/.well-known/openid-configuration.
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # The claim the audiences are matched against.
    audience_claim: str = "aud"
    # Claims that must hold exactly these values (Cognito: token_use=access).
    fixed_claims: Mapping[str, str] = field(default_factory=dict)
    leeway: float = 30.0
    jwks_ttl: float = 600.0
    refetch_interval: float = 30.0
    refetch_burst: int = 3
    failure_backoff: float = 2.0
    timeout: float = 5.0

    @classmethod
    def read(
        cls,
        s: SettingsReader,
        *,
        issuers: Sequence[str] | None = None,
        jwks_uri: str | None = None,
        audiences: Sequence[str] | None = None,
        algorithms: Sequence[str] | None = None,
        audience_claim: str = "aud",
        fixed_claims: Mapping[str, str] | None = None,
    ) -> VerifierConfig:
        """Reads the verifier's settings (`issuer`, `jwksUri`, `audience`,
        `algorithms`, `leeway`, `jwksCacheTtl`, `jwksRefetchInterval`,
        `timeoutSeconds`); what a provider passes in (derived from `domain`,
        Google's fixed issuers, Cognito's pool...) is not read from the block."""
        if issuers is None:
            issuers = (s.required_string("issuer"),)
        if jwks_uri is None:
            jwks_uri = s.url("jwksUri")
            if jwks_uri is None:
                # Discovery is fetched from the issuer, so it must be a URL we trust.
                check_url(issuers[0], "issuer")
        if audiences is None:
            audiences = s.strings("audience", required=True)
        if algorithms is None:
            algorithms = s.strings("algorithms", default=DEFAULT_ALGORITHMS)
            refused = [a for a in algorithms if a not in _KEY_FOR_ALG]
            if refused:
                raise SettingsError(
                    f"algorithms {refused} are not allowed; use asymmetric ones: "
                    + ", ".join(SUPPORTED_ALGORITHMS)
                )
        return cls(
            issuers=tuple(issuers),
            audiences=tuple(audiences),
            jwks_uri=jwks_uri,
            algorithms=tuple(algorithms),
            audience_claim=audience_claim,
            fixed_claims=dict(fixed_claims or {}),
            leeway=s.number("leeway", default=30, low=0, high=MAX_LEEWAY),
            jwks_ttl=s.number("jwksCacheTtl", default=600, low=1, high=86400),
            refetch_interval=s.number("jwksRefetchInterval", default=30, low=0.1, high=3600),
            timeout=s.timeout(),
        )


class JwtVerifier:
    """One per provider instance (so per project): its caches never serve
    another project's issuer or audience. Safe for concurrent calls on one
    event loop."""

    def __init__(
        self,
        config: VerifierConfig,
        http: httpx.AsyncClient,
        *,
        now: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: int = CLAIMS_CACHE_SIZE,
    ) -> None:
        self.config = config
        self._cache_size = cache_size
        self._http = http
        self._now = now
        self._discovered_jwks_uri: str | None = None
        self._keys = JwksCache(
            http,
            self._jwks_uri,
            ttl=config.jwks_ttl,
            refetch_interval=config.refetch_interval,
            refetch_burst=config.refetch_burst,
            failure_backoff=config.failure_backoff,
            timeout=config.timeout,
            monotonic=monotonic,
            on_keys_removed=self._forget_verified,
        )
        self._jws = jwt.PyJWS()
        # SHA-256(token) -> (claims, exp): a token verified once is not
        # verified again until it expires (the leeway included, as a
        # verification would), unless its key leaves the set. Keyed on the
        # digest so the process holds no bearer token past its call and a
        # 16 KiB token costs a 32-byte key.
        self._verified: OrderedDict[bytes, tuple[Claims, float]] = OrderedDict()

    @property
    def jwks_fetches(self) -> int:
        return self._keys.fetches

    async def verify(self, token: str, *, allow_expired: bool = False) -> Claims:
        """The claims of a token that passes every check, or Unauthenticated.
        `allow_expired` skips only `exp`: it is for learning whose session a
        refresh continues, never for granting access."""
        now = self._now()
        digest = hashlib.sha256(token.encode()).digest() if isinstance(token, str) else b""
        hit = self._verified.get(digest)
        if hit is not None:
            claims, exp = hit
            if now <= exp + self.config.leeway:
                self._verified.move_to_end(digest)
                meter().token_cache(hit=True)
                return claims
            # Expired since it was verified: what a verification would say
            # now (its signature and claims passed then), without the work.
            del self._verified[digest]
            if not allow_expired:
                meter().token_cache(hit=True)
                raise _refuse("TOKEN_EXPIRED", "the token has expired")
        meter().token_cache(hit=False)

        header = self._header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's signing algorithm is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refuse("MISSING_KEY_ID", "the token names no signing key (kid)")
        key = await self._keys.key_for(kid)
        _check_key_fits(key, alg)
        try:
            payload = self._jws.decode_complete(token, key=key.key, algorithms=[alg])["payload"]
        except jwt.InvalidSignatureError:
            raise _refuse("BAD_SIGNATURE", "the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise _malformed() from None
        try:
            claims = json.loads(payload)
        except (ValueError, RecursionError):
            raise _malformed() from None
        if not isinstance(claims, dict):
            raise _malformed()
        exp = self._check_claims(claims, now, allow_expired=allow_expired)
        if now <= exp + self.config.leeway:
            self._remember(digest, claims, exp)
        return claims

    def _header(self, token: str) -> Mapping[str, Any]:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise _malformed()
        try:
            return self._jws.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _malformed() from None

    def _check_claims(self, claims: Mapping[str, Any], now: float, *, allow_expired: bool) -> float:
        cfg = self.config
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss not in cfg.issuers:
            raise _refuse("WRONG_ISSUER", "the token was issued by another issuer")
        aud = claims.get(cfg.audience_claim)
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not any(
            isinstance(a, str) and a in cfg.audiences for a in auds
        ):
            raise _refuse("WRONG_AUDIENCE", "the token is meant for another audience")
        for name, expected in cfg.fixed_claims.items():
            if claims.get(name) != expected:
                raise _refuse(
                    "WRONG_TOKEN_TYPE", f"the token's {name} must be {expected}", claim=name
                )
        exp = _time_claim(claims, "exp", required=True)
        assert exp is not None
        if now > exp + cfg.leeway and not allow_expired:
            raise _refuse("TOKEN_EXPIRED", "the token has expired")
        nbf = _time_claim(claims, "nbf", required=False)
        if nbf is not None and now + cfg.leeway < nbf:
            raise _refuse("TOKEN_NOT_YET_VALID", "the token is not valid yet")
        iat = _time_claim(claims, "iat", required=True)
        assert iat is not None
        if now + cfg.leeway < iat:
            raise _refuse("TOKEN_NOT_YET_VALID", "the token claims to be issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > 255:
            raise _refuse("MISSING_SUBJECT", "the token names no subject (sub)")
        return exp

    def _remember(self, digest: bytes, claims: Claims, exp: float) -> None:
        self._verified[digest] = (claims, exp)
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)

    def _forget_verified(self) -> None:
        # A key left the set (rotated out or revoked): tokens it signed must
        # be checked again rather than served from the cache.
        self._verified.clear()

    async def _jwks_uri(self) -> str:
        if self.config.jwks_uri is not None:
            return self.config.jwks_uri
        if self._discovered_jwks_uri is None:
            self._discovered_jwks_uri = await self._discover()
        return self._discovered_jwks_uri

    async def _discover(self) -> str:
        issuer = self.config.issuers[0]
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        resp = await guarded(self._http.get(url, timeout=self.config.timeout))
        doc = json_object(resp) if resp.status_code == 200 else None
        if doc is None:
            log.warning("OIDC discovery answered HTTP %d without a document", resp.status_code)
            raise Unavailable(
                "UPSTREAM_UNAVAILABLE", "the identity provider cannot be reached", retry_after=1.0
            )
        # OpenID Connect Discovery 1.0 §4.3: the document must name the very
        # issuer it was fetched for, or it may be an impostor's. Its jwks_uri
        # obeys the same URL rule as a configured one.
        try:
            if doc.get("issuer") != issuer:
                raise SettingsError("issuer mismatch")
            return check_url(doc.get("jwks_uri"), "jwks_uri")
        except SettingsError:
            log.error("OIDC discovery document does not match the configured issuer")
            raise Unavailable(
                "UPSTREAM_MISCONFIGURED",
                "the identity provider's discovery document does not match its configuration",
                retry_after=30.0,
            ) from None


def require_claim(claims: Claims, name: str) -> str:
    """A string claim a provider needs beyond the verified ones (Cognito's
    `username`), refused as MISSING_CLAIM when absent."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _refuse("MISSING_CLAIM", f"the token has no {name} claim", claim=name)
    return value


def _check_key_fits(key: VerificationKey, alg: str) -> None:
    # The header's alg is attacker-chosen: it must match the key actually
    # named, or an RSA key could be used with an algorithm it was not made for.
    if key.alg is not None and key.alg != alg:
        raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's algorithm does not match its key")
    key_type, curve = _KEY_FOR_ALG[alg]
    if not isinstance(key.key, key_type) or (
        curve is not None
        and not (
            isinstance(key.key, ec.EllipticCurvePublicKey) and isinstance(key.key.curve, curve)
        )
    ):
        raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's algorithm does not match its key")


def _time_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _refuse("MISSING_CLAIM", f"the token has no {name} claim", claim=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed()
    return float(value)


def _refuse(reason: str, message: str, *, claim: str | None = None) -> Unauthenticated:
    return Unauthenticated(reason, message, metadata={"claim": claim} if claim else None)


def _malformed() -> Unauthenticated:
    return Unauthenticated("MALFORMED_TOKEN", "the token is not a well-formed signed JWT")
