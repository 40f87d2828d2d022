"""`oidc`: any OpenID Connect issuer that publishes a JWKS — the documented
"custom providers or implementations" (Okta, Keycloak, Azure AD B2C, Gigya...).

The app signs its user in with the issuer and sends us the issuer's JWT as
a Bearer token. We verify it (providers/jwtverify.py), key the user on the
token's `sub`, seed the profile from the token (and /userinfo) on first sight,
and keep the app's own profile data (`username`, `appProfile`) in our store.

authZero is this provider with Auth0's defaults and the Management API on
top; it writes only how it differs.

    oidc:
      issuer: https://login.example.com/
      jwksUri: https://login.example.com/keys     # optional: else discovery
      audience: my-api                            # or a list
      userinfoUrl: https://login.example.com/userinfo   # optional
      claims: {username: preferred_username, email: email, nickname: nickname}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from providers.base import (
    JSON,
    InvalidArgument,
    ProfileView,
    Provider,
    ProviderContext,
    Reply,
    Request,
    User,
    app_profile_arg,
    canonical_uuid,
    guarded,
    optional_str,
    require_bearer,
)
from providers.jwtverify import (
    Claims,
    JwtVerifier,
    VerifierConfig,
    refuse_if_revoked,
    url_setting,
)
from providers.upstream import rate_limited, reject_unknown, upstream_error

log = logging.getLogger(__name__)

USERNAME_MAX_CHARS = 128
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_:.-]{0,63}$")

VERIFIER_SETTINGS = frozenset(
    {
        "issuer",
        "jwksUri",
        "audience",
        "algorithms",
        "leeway",
        "jwksCacheTtl",
        "jwksRefetchInterval",
        "timeoutSeconds",
    }
)


@dataclass(frozen=True)
class OidcSettings:
    verifier: VerifierConfig
    userinfo_url: str | None
    # Our attribute name -> the claims it is read from, first present wins.
    # "username" fills the user's username; the others go to attributes.
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class OidcProvider(Provider):
    name: ClassVar[str] = "oidc"
    strategies: ClassVar[tuple[str, ...]] = ("email",)
    known_settings: ClassVar[frozenset[str]] = VERIFIER_SETTINGS | {"userinfoUrl", "claims"}
    default_claims: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "username": ("preferred_username",),
        "email": ("email",),
        "nickname": ("nickname",),
    }

    def __init__(self, settings: Mapping[str, Any], ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self.config = self.parse_settings(settings)
        self.verifier = JwtVerifier(self.config.verifier, ctx.http, now=ctx.now)

    # ------------------------------------------------------------ settings
    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        cls.parse_settings(settings)

    @classmethod
    def parse_settings(cls, settings: Mapping[str, Any]) -> OidcSettings:
        reject_unknown(settings, set(cls.known_settings), cls.name)
        return OidcSettings(
            verifier=VerifierConfig.from_settings(settings),
            userinfo_url=url_setting(settings, "userinfoUrl"),
            claims=cls._claims_setting(settings),
        )

    @classmethod
    def _claims_setting(cls, settings: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        given = settings.get("claims", {})
        if not isinstance(given, Mapping):
            raise ValueError("claims must map attribute names to claim names")
        merged: dict[str, tuple[str, ...]] = dict(cls.default_claims)
        for attr, source in given.items():
            if not isinstance(attr, str) or not _ATTRIBUTE_NAME.match(attr):
                raise ValueError(f"claims: {attr!r} is not a valid attribute name")
            if source is None:  # switches a default mapping off
                merged.pop(attr, None)
                continue
            names = [source] if isinstance(source, str) else source
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise ValueError(f"claims.{attr} must be a claim name or a list of claim names")
            merged[attr] = tuple(names)
        return merged

    # ---------------------------------------------------------- operations
    async def get_user(self, req: Request) -> Reply:
        user, _ = await self.authenticate(req)
        return Reply(message="OK", data=self.profile_data(await self.ctx.accounts.profile(user)))

    async def check_user(self, req: Request) -> Reply:
        if not req.device_id:
            raise InvalidArgument(
                "MISSING_FIELD", "deviceId is required", metadata={"field": "deviceId"}
            )
        device_id = canonical_uuid(req.device_id, field_name="deviceId")
        user, _ = await self.authenticate(req)
        await self.ctx.accounts.record_login(user, device_id)
        return Reply(message="OK", data=self.profile_data(await self.ctx.accounts.profile(user)))

    async def update_user(self, req: Request) -> Reply:
        username = optional_str(req.data, "username", max_len=USERNAME_MAX_CHARS)
        app_profile = app_profile_arg(req.data)
        if username is None and app_profile is None:
            raise InvalidArgument(
                "NOTHING_TO_UPDATE",
                "send data.username and/or data.appProfile",
                metadata={"field": "data"},
            )
        user, claims = await self.authenticate(req)
        if username is not None and username != user.username:
            # Upstream first: if it refuses, nothing has changed on our side.
            await self.push_username(claims, username)
        user = await self.ctx.accounts.update_user(user, username=username, app_profile=app_profile)
        return Reply(
            message="User is Correctly Created",
            data={
                "externalId": user.external_id,
                "projectId": req.project.id,
                # Our profileToken (ES256, aud = projectId): the upstream's
                # own token is the app's already.
                "accessToken": self.ctx.mint_profile_token(user),
                "appProfile": user.app_profile or {},
            },
        )

    # --------------------------------------------------------------- hooks
    async def push_username(self, claims: Claims, username: str) -> None:
        """Write a changed username upstream too; a generic issuer has no API
        for that, so it is kept in our store only."""

    def refuse_claims(self, claims: Claims) -> None:
        """Refuse tokens that verify but must not sign a user in."""

    def profile_data(self, view: ProfileView) -> JSON:
        return {
            "username": view.user.username,
            "appProfile": view.user.app_profile or {},
            "loginHistory": list(view.login_history),
        }

    # ------------------------------------------------------------- helpers
    async def authenticate(self, req: Request) -> tuple[User, Claims]:
        token = require_bearer(req)
        claims = await self.verifier.verify(token)
        self.refuse_claims(claims)
        subject: str = claims["sub"]
        user = await self.ctx.accounts.find_user(subject)
        if user is None:
            username, attributes = self.seed(await self.userinfo(token, claims))
            user, _ = await self.ctx.accounts.ensure_user(
                subject, attributes=attributes, username=username
            )
        refuse_if_revoked(claims, user)
        return user, claims

    def seed(self, source: Claims) -> tuple[str | None, JSON]:
        """The username and attributes a new user starts with."""
        found: dict[str, str] = {}
        for attr, names in self.config.claims.items():
            value = next((source[n] for n in names if _text(source.get(n))), None)
            if value is not None:
                found[attr] = value[:USERNAME_MAX_CHARS] if attr == "username" else value
        return found.pop("username", None), dict(found)

    async def userinfo(self, token: str, claims: Claims) -> Claims:
        """The token's claims, completed by /userinfo when it is configured
        (access tokens often carry no profile claims at all)."""
        url = self.config.userinfo_url
        if url is None:
            return claims
        resp = await guarded(
            self.ctx.http.get(
                url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=self.config.verifier.timeout,
            )
        )
        if resp.status_code in (401, 403):
            # This token is not one userinfo takes (an ID token, a token
            # without the openid scope): the token's own claims will do.
            log.info("%s userinfo refused the token (HTTP %d)", self.name, resp.status_code)
            return claims
        if resp.status_code == 429:
            raise rate_limited(self.name, retry_after_header(resp.headers))
        try:
            info = resp.json() if resp.status_code == 200 else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            # Failing here, before the user exists, lets the next call seed it.
            raise upstream_error(self.name, resp.status_code)
        if info.get("sub") != claims["sub"]:
            # OpenID Connect Core §5.3.2: a userinfo answer about someone
            # else must not be used.
            log.warning("%s userinfo answered for another subject; ignored", self.name)
            return claims
        return {**claims, **info}


def retry_after_header(headers: Mapping[str, str]) -> float:
    try:
        return float(headers.get("retry-after", "1"))
    except ValueError:
        return 1.0


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
