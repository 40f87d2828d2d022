"""Local verification of Cognito access tokens against the pool's JWKS.

The signature alone proves little: every pool of an emulator (moto) signs
with one shared key, and a tenant's pool could be misconfigured to share one.
What ties a token to *this* project is its issuer (the pool) and its
client_id (the app client), so both are always checked, with token_use,
exp and iat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from providers.base import Unauthenticated
from providers.cognito_settings import CognitoSettings
from providers.jwks import JwksCache

# Cognito signs with RS256 only; anything else is not one of its tokens.
ALGORITHM = "RS256"
# Access tokens are 1-2 KB; longer input is refused before any parsing.
MAX_TOKEN_LEN = 8192
# Clock skew tolerated between this host and Cognito.
LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    # Cognito's username: the one SECRET_HASH and USERNAME take. With email
    # as the pool's sign-in attribute it is a UUID, not the email.
    username: str
    iat: int
    exp: int


class AccessTokenVerifier:
    def __init__(self, settings: CognitoSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._jwks = JwksCache(http, self._jwks_url, timeout=settings.timeout)

    async def _jwks_url(self) -> str:
        return self._settings.jwks_url

    async def verify(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        """Claims of a token this project's pool issued to this project's app
        client, or Unauthenticated. `allow_expired` only skips `exp`: it is
        for learning who a refresh belongs to, never for granting access."""
        if len(token) > MAX_TOKEN_LEN:
            raise _invalid("the access token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid("the access token is not a JWT") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not kid:
            raise _invalid("the access token is not signed by a Cognito user pool")
        key = await self._jwks.key_for(kid)
        if key.alg not in (None, ALGORITHM):
            raise _invalid("the access token is not signed by a Cognito user pool")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,  # type: ignore[arg-type]
                algorithms=[ALGORITHM],
                issuer=self._settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={
                    "require": ["exp", "iat", "iss", "sub"],
                    "verify_exp": not allow_expired,
                    # Access tokens carry client_id, not aud; checked below.
                    "verify_aud": False,
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "TOKEN_EXPIRED",
                "the access token has expired; refresh the session",
                metadata={"provider": "awsCognito"},
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid("the access token was issued by another user pool") from None
        except jwt.InvalidTokenError:
            raise _invalid("the access token is invalid") from None
        if claims.get("token_use") != "access":
            raise _invalid("an access token is required (not an ID token)")
        if claims.get("client_id") != self._settings.client_id:
            raise _invalid("the access token was issued to another app client")
        sub, username = claims.get("sub"), claims.get("username")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(sub, str) or not sub or not isinstance(username, str) or not username:
            raise _invalid("the access token lacks sub or username")
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise _invalid("the access token's iat and exp must be whole seconds")
        return AccessClaims(sub=sub, username=username, iat=iat, exp=exp)


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated("INVALID_TOKEN", message, metadata={"provider": "awsCognito"})
