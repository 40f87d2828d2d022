"""The awsCognito settings of one project, read once when the config loads.

A region/pool mismatch or a typo in a key would otherwise surface as a 503 or
a 401 on the first user's request; here it stops the start instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from providers.kit.jwt import VerifierConfig
from providers.kit.settings import SettingsError, SettingsReader

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
_POOL_ID = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+_[0-9A-Za-z]+")
_CLIENT_ID = re.compile(r"[0-9A-Za-z_+]+")

DEFAULT_REFRESH_TOKEN_VALIDITY = 30 * 24 * 3600  # Cognito's own default
MAX_REFRESH_TOKEN_VALIDITY = 10 * 365 * 24 * 3600  # Cognito's maximum
# How long a profile read may be served from our copy of a user's attributes
# before GetUser is asked again: GetUser counts against a per-account quota
# (120 requests/s by default), which would otherwise cap every profile read.
DEFAULT_PROFILE_REFRESH = 60
MAX_PROFILE_REFRESH = 24 * 3600
# Cognito signs with RS256 only; anything else is not one of its tokens.
ALGORITHMS = ("RS256",)


@dataclass(frozen=True)
class CognitoSettings:
    region: str
    user_pool_id: str
    client_id: str
    client_secret: str | None
    endpoint_url: str | None
    auto_confirm: bool
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    refresh_token_validity: int
    # Seconds; 0 asks Cognito on every profile read and check.
    profile_refresh: int
    timeout: float
    # Access tokens: issuer = the pool, audience = the app client (its
    # `client_id` claim), token_use = access.
    verifier: VerifierConfig

    @property
    def issuer(self) -> str:
        return self.verifier.issuers[0]

    @property
    def jwks_url(self) -> str:
        assert self.verifier.jwks_uri is not None
        return self.verifier.jwks_uri


def read(s: SettingsReader) -> CognitoSettings:
    region = s.required_string("region", pattern=_REGION, hint="an AWS region, e.g. eu-west-1")
    pool = s.required_string(
        "userPoolId", pattern=_POOL_ID, hint="<region>_<id>, e.g. eu-west-1_AbC123"
    )
    if not pool.startswith(region + "_"):
        # Cognito pool ids carry their region; a mismatch means tokens
        # could never verify (the issuer is built from both).
        raise SettingsError(f"userPoolId {pool} does not belong to region {region}")
    client_id = s.required_string(
        "clientId", pattern=_CLIENT_ID, hint="the app client id, letters and digits"
    )
    endpoint = s.url("endpointUrl", base=True)
    issuer = f"https://cognito-idp.{region}.amazonaws.com/{pool}"
    # Emulators (moto, LocalStack, cognito-local) serve the pool's keys under
    # their endpoint while `iss` stays the AWS URL; behind a VPC endpoint the
    # keys stay at the public issuer, which is the default without endpointUrl.
    jwks = s.url("jwksUrl") or (
        f"{endpoint}/{pool}/.well-known/jwks.json"
        if endpoint
        else f"{issuer}/.well-known/jwks.json"
    )
    key_id = s.string("accessKeyId")
    secret_key = s.string("secretAccessKey")
    if (key_id is None) != (secret_key is None):
        raise SettingsError("accessKeyId and secretAccessKey go together (or both left out)")
    session_token = s.string("sessionToken")
    if session_token is not None and key_id is None:
        raise SettingsError("sessionToken needs accessKeyId and secretAccessKey")
    return CognitoSettings(
        region=region,
        user_pool_id=pool,
        client_id=client_id,
        client_secret=s.string("clientSecret"),
        endpoint_url=endpoint,
        auto_confirm=s.flag("autoConfirm", default=False),
        access_key_id=key_id,
        secret_access_key=secret_key,
        session_token=session_token,
        refresh_token_validity=s.integer(
            "refreshTokenValiditySeconds",
            default=DEFAULT_REFRESH_TOKEN_VALIDITY,
            low=60,
            high=MAX_REFRESH_TOKEN_VALIDITY,
            hint="the app client's refresh token expiration",
        ),
        profile_refresh=s.integer(
            "profileRefreshSeconds",
            default=DEFAULT_PROFILE_REFRESH,
            low=0,
            high=MAX_PROFILE_REFRESH,
            hint="how long profile reads are served from the synced copy; 0: ask Cognito each time",
        ),
        timeout=s.timeout(),
        verifier=VerifierConfig.read(
            s,
            issuers=(issuer,),
            jwks_uri=jwks,
            audiences=(client_id,),
            algorithms=ALGORITHMS,
            audience_claim="client_id",
            fixed_claims={"token_use": "access"},
        ),
    )
