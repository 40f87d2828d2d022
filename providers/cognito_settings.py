"""The awsCognito settings of one project, checked once when the config loads.

A region/pool mismatch or a typo in a key would otherwise surface as a 503 or
a 401 on the first user's request; here it stops the start instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_POOL_ID = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+_[0-9A-Za-z]+$")
_CLIENT_ID = re.compile(r"^[\w+]+$")

DEFAULT_REFRESH_TOKEN_VALIDITY = 30 * 24 * 3600  # Cognito's own default
MAX_REFRESH_TOKEN_VALIDITY = 10 * 365 * 24 * 3600  # Cognito's maximum
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0

KNOWN_KEYS = frozenset(
    {
        "region",
        "userPoolId",
        "clientId",
        "clientSecret",
        "endpointUrl",
        "jwksUrl",
        "autoConfirm",
        "accessKeyId",
        "secretAccessKey",
        "sessionToken",
        "refreshTokenValiditySeconds",
        "timeoutSeconds",
    }
)


@dataclass(frozen=True)
class CognitoSettings:
    region: str
    user_pool_id: str
    client_id: str
    client_secret: str | None
    endpoint_url: str | None
    jwks_url: str
    issuer: str
    auto_confirm: bool
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    refresh_token_validity: int
    timeout: float

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> CognitoSettings:
        """Raises ValueError naming the first bad setting."""
        unknown = sorted(set(settings) - KNOWN_KEYS)
        if unknown:
            raise ValueError(
                f"unknown awsCognito setting(s): {', '.join(unknown)};"
                f" known: {', '.join(sorted(KNOWN_KEYS))}"
            )
        region = _required(settings, "region")
        if not _REGION.match(region):
            raise ValueError("region must look like an AWS region, e.g. eu-west-1")
        pool = _required(settings, "userPoolId")
        if not _POOL_ID.match(pool):
            raise ValueError("userPoolId must look like <region>_<id>, e.g. eu-west-1_AbC123")
        if not pool.startswith(region + "_"):
            # Cognito pool ids carry their region; a mismatch means tokens
            # could never verify (the issuer is built from both).
            raise ValueError(f"userPoolId {pool} does not belong to region {region}")
        client_id = _required(settings, "clientId")
        if not _CLIENT_ID.match(client_id):
            raise ValueError("clientId must be the app client id (letters and digits)")
        client_secret = _optional(settings, "clientSecret")
        endpoint = _optional_url(settings, "endpointUrl")
        issuer = f"https://cognito-idp.{region}.amazonaws.com/{pool}"
        jwks = _optional_url(settings, "jwksUrl") or f"{issuer}/.well-known/jwks.json"
        auto_confirm = settings.get("autoConfirm", False)
        if not isinstance(auto_confirm, bool):
            raise ValueError("autoConfirm must be true or false")
        key_id = _optional(settings, "accessKeyId")
        secret_key = _optional(settings, "secretAccessKey")
        if (key_id is None) != (secret_key is None):
            raise ValueError("accessKeyId and secretAccessKey go together (or both left out)")
        session_token = _optional(settings, "sessionToken")
        if session_token is not None and key_id is None:
            raise ValueError("sessionToken needs accessKeyId and secretAccessKey")
        validity = settings.get("refreshTokenValiditySeconds", DEFAULT_REFRESH_TOKEN_VALIDITY)
        if (
            isinstance(validity, bool)
            or not isinstance(validity, int)
            or not 60 <= validity <= MAX_REFRESH_TOKEN_VALIDITY
        ):
            raise ValueError(
                "refreshTokenValiditySeconds must be a whole number of seconds between 60"
                " and 10 years (use the app client's refresh token expiration)"
            )
        timeout = settings.get("timeoutSeconds", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValueError("timeoutSeconds must be a number")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeoutSeconds must be > 0 and <= {MAX_TIMEOUT}")
        return cls(
            region=region,
            user_pool_id=pool,
            client_id=client_id,
            client_secret=client_secret,
            endpoint_url=endpoint,
            jwks_url=jwks,
            issuer=issuer,
            auto_confirm=auto_confirm,
            access_key_id=key_id,
            secret_access_key=secret_key,
            session_token=session_token,
            refresh_token_validity=validity,
            timeout=float(timeout),
        )


def _required(settings: Mapping[str, Any], key: str) -> str:
    value = settings.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} is required and must be a non-empty string")
    return value.strip()


def _optional(settings: Mapping[str, Any], key: str) -> str | None:
    if settings.get(key) in (None, ""):
        return None
    return _required(settings, key)


def _optional_url(settings: Mapping[str, Any], key: str) -> str | None:
    value = _optional(settings, key)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} must be an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{key} must not carry a query or fragment")
    return value.rstrip("/")
