"""`oidc`: any OpenID Connect issuer that publishes a JWKS — the documented
"custom providers or implementations" (Okta, Keycloak, Azure AD B2C, Gigya...).

The app signs its user in with the issuer and sends us the issuer's JWT as
a Bearer token. We verify it (providers/kit/jwt.py), key the user on the
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

from providers.base import Provider, ProviderContext
from providers.kit.http import guarded, json_object, rate_limited, retry_after, upstream_error
from providers.kit.inputs import app_profile_arg, optional_str, require_device_id, storable
from providers.kit.jwt import Claims, JwtVerifier, VerifierConfig
from providers.kit.settings import SettingsError, SettingsReader, string_list
from providers.kit.tokens import refuse_if_revoked, require_bearer
from providers.values import JSON, InvalidArgument, ProfileView, Reply, Request, User

log = logging.getLogger(__name__)

USERNAME_MAX_CHARS = 128
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]{0,63}")


@dataclass(frozen=True)
class OidcSettings:
    verifier: VerifierConfig
    userinfo_url: str | None
    # Our attribute name -> the claims it is read from, first present wins.
    # "username" fills the user's username; the others go to attributes.
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class OidcProvider(Provider[OidcSettings]):
    name: ClassVar[str] = "oidc"
    strategies: ClassVar[tuple[str, ...]] = ("email",)
    default_claims: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "username": ("preferred_username",),
        "email": ("email",),
        "nickname": ("nickname",),
    }

    def __init__(self, settings: OidcSettings, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self.verifier = JwtVerifier(settings.verifier, ctx.http, now=ctx.now)

    # ------------------------------------------------------------ settings
    @classmethod
    def read_settings(cls, s: SettingsReader) -> OidcSettings:
        return OidcSettings(
            verifier=cls.read_verifier(s),
            userinfo_url=s.url("userinfoUrl"),
            claims=cls._claims_setting(s.mapping("claims")),
        )

    @classmethod
    def read_verifier(cls, s: SettingsReader) -> VerifierConfig:
        return VerifierConfig.read(s)

    @classmethod
    def _claims_setting(cls, given: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        merged: dict[str, tuple[str, ...]] = dict(cls.default_claims)
        for attr, source in given.items():
            if not isinstance(attr, str) or not _ATTRIBUTE_NAME.fullmatch(attr):
                raise SettingsError(f"claims: {attr!r} is not a valid attribute name")
            if source is None:  # switches a default mapping off
                merged.pop(attr, None)
                continue
            names = string_list(source)
            if names is None:
                raise SettingsError(f"claims.{attr} must be a claim name or a list of claim names")
            merged[attr] = names
        return merged

    # ---------------------------------------------------------- operations
    async def get_user(self, req: Request) -> Reply:
        user, _ = await self.authenticate(req)
        return Reply(message="OK", data=self.profile_data(await self.ctx.accounts.profile(user)))

    async def link(self, req: Request) -> Reply:
        return await self.get_user(req)

    async def check_user(self, req: Request) -> Reply:
        device_id = require_device_id(req)
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
            "linkedIdentities": view.identities_json(),
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
        refuse_if_revoked(user, claims["iat"])
        return user, claims

    def seed(self, source: Claims) -> tuple[str | None, JSON]:
        """The username and attributes a new user starts with."""
        found: dict[str, str] = {}
        for attr, names in self.settings.claims.items():
            value = next((source[n] for n in names if _text(source.get(n))), None)
            if value is not None:
                found[attr] = value[:USERNAME_MAX_CHARS] if attr == "username" else value
        return found.pop("username", None), dict(found)

    async def userinfo(self, token: str, claims: Claims) -> Claims:
        """The token's claims, completed by /userinfo when it is configured
        (access tokens often carry no profile claims at all)."""
        url = self.settings.userinfo_url
        if url is None:
            return claims
        resp = await guarded(
            self.ctx.http.get(
                url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=self.settings.verifier.timeout,
            )
        )
        if resp.status_code in (401, 403):
            # This token is not one userinfo takes (an ID token, a token
            # without the openid scope): the token's own claims will do.
            log.info("%s userinfo refused the token (HTTP %d)", self.name, resp.status_code)
            return claims
        if resp.status_code == 429:
            raise rate_limited(self.name, retry_after(resp.headers, now=self.ctx.now()))
        info = json_object(resp) if resp.status_code == 200 else None
        if info is None:
            # Failing here, before the user exists, lets the next call seed it.
            raise upstream_error(self.name, resp.status_code)
        if info.get("sub") != claims["sub"]:
            # OpenID Connect Core §5.3.2: a userinfo answer about someone
            # else must not be used.
            log.warning("%s userinfo answered for another subject; ignored", self.name)
            return claims
        return {**claims, **info}


def _text(value: Any) -> bool:
    return storable(value) and bool(value.strip())
