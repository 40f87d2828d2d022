"""Our own token material: the ES256 keys that sign profileToken, the JWKS
that publishes them, and the HMACs behind externalId and signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.clock import now

PROFILE_TOKEN_TTL = 15 * 60
# A process may keep signing with a just-retired key until its next key
# refresh; publish retired keys that much longer than a token lives.
RETIRED_KEY_GRACE = 5 * 60
ALGORITHM = "ES256"


def external_id(secret: str, provider: str, subject: str) -> str:
    """Stable and pseudonymous: lowercase hex HMAC-SHA256 of provider:subject."""
    return hmac.new(secret.encode(), f"{provider}:{subject}".encode(), hashlib.sha256).hexdigest()


def signature(secret: str, user_id: str, device_id: str, time_stamp: int) -> str:
    """Uppercase hex HMAC-SHA1 of userId:deviceId:timeStamp (40 characters),
    the documented format downstream services verify."""
    message = f"{user_id}:{device_id}:{time_stamp}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha1).hexdigest().upper()


def signature_matches(
    secret: str, user_id: str, device_id: str, time_stamp: int, given: str
) -> bool:
    expected = signature(secret, user_id, device_id, time_stamp)
    # Bytes: compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(expected.encode(), given.upper().encode())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_project_secret() -> str:
    return secrets.token_hex(32)


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: int
    retired_at: int | None = None

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(uuid.uuid4().hex, ec.generate_private_key(ec.SECP256R1()), now())

    @classmethod
    def from_pem(cls, kid: str, pem: str, created_at: int, retired_at: int | None) -> SigningKey:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {kid} is not an EC key")
        return cls(kid, key, created_at, retired_at)

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x),
            "y": _b64(numbers.y),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


class TokenSigner:
    """Mints profileTokens with the newest active key; publishes every key
    that may still verify a live token."""

    def __init__(self, keys: list[SigningKey], issuer: str) -> None:
        active = [k for k in keys if k.retired_at is None]
        if not active:
            raise ValueError("no active signing key")
        self._active = max(active, key=lambda k: k.created_at)
        self._keys = keys
        self.issuer = issuer

    def mint(self, *, audience: str, subject: str, claims: dict[str, Any], now: int) -> str:
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + PROFILE_TOKEN_TTL,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(
            payload,
            self._active.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._active.kid},
        )

    def knows(self, token: str) -> bool:
        """Whether the key that signed `token` (its `kid`) is one of ours."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return True  # malformed: verify() says so
        return any(k.kid == kid for k in self._keys)

    def verify(self, token: str, *, audience: str) -> dict[str, Any]:
        """The claims of a profileToken we minted for `audience` (a project),
        or jwt.PyJWTError saying why not (bad signature, expired, another
        project's, not ours)."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = next((k for k in self._keys if k.kid == kid), None)
        if key is None:
            raise jwt.InvalidKeyError("signed by a key that is not ours")
        return jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            leeway=0,
        )

    def jwks(self, now: int) -> list[dict[str, str]]:
        live = [
            k
            for k in self._keys
            if k.retired_at is None or k.retired_at + PROFILE_TOKEN_TTL + RETIRED_KEY_GRACE > now
        ]
        return [k.jwk() for k in sorted(live, key=lambda k: k.created_at)]
