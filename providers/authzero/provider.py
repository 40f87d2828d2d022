"""`authZero`: the oidc provider with Auth0's conventions.

What differs from a generic issuer:
- `domain` derives the issuer (`https://{domain}/`), the JWKS URL and the
  Management API URLs; explicit settings still win (custom domains issue
  tokens under their own name while the Management API keeps the tenant's).
- Auth0 keeps a username on its user: with Management API credentials a
  changed username is written there too (PATCH /api/v2/users/{id}).
- With Management API credentials the admin API's erasure can delete the
  Auth0 user too (DELETE /api/v2/users/{id}, scope delete:users).
- Machine-to-machine tokens (`gty: client-credentials`) verify but name no
  user, so they are refused.

    authZero:
      domain: my-tenant.eu.auth0.com
      audience: https://api.my-app.example
      managementClientId: ...        # optional, with managementClientSecret
      managementClientSecret: ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from providers.authzero.management import Auth0Management, ManagementConfig
from providers.base import ProviderContext
from providers.kit.jwt import Claims, VerifierConfig
from providers.kit.settings import SettingsError, SettingsReader
from providers.oidc import OidcProvider, OidcSettings
from providers.values import Unauthenticated, User

_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class AuthZeroSettings(OidcSettings):
    management: ManagementConfig | None = None


class AuthZeroProvider(OidcProvider):
    name: ClassVar[str] = "authZero"
    # Auth0 ID tokens and /userinfo carry `nickname` (and `username` for
    # database connections that use one); access tokens carry neither.
    default_claims: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "username": ("username", "nickname"),
        "email": ("email",),
        "nickname": ("nickname",),
    }

    def __init__(self, settings: OidcSettings, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        management = settings.management if isinstance(settings, AuthZeroSettings) else None
        self.management = Auth0Management(management, ctx.http, now=ctx.now) if management else None

    @classmethod
    def read_settings(cls, s: SettingsReader) -> AuthZeroSettings:
        common = super().read_settings(s)
        return AuthZeroSettings(
            verifier=common.verifier,
            userinfo_url=common.userinfo_url,
            claims=common.claims,
            management=_management(s, _domain_base(s)),
        )

    @classmethod
    def read_verifier(cls, s: SettingsReader) -> VerifierConfig:
        base = _domain_base(s)
        issuer = s.string("issuer") or base
        if issuer is None:
            raise SettingsError("issuer is required (or domain)")
        jwks_uri = s.url("jwksUri") or (base + ".well-known/jwks.json" if base else None)
        return VerifierConfig.read(s, issuers=(issuer,), jwks_uri=jwks_uri)

    def refuse_claims(self, claims: Claims) -> None:
        if claims.get("gty") == "client-credentials":
            raise Unauthenticated(
                "NOT_A_USER_TOKEN", "the token was issued to an application, not to a user"
            )

    async def push_username(self, claims: Claims, username: str) -> None:
        if self.management is not None:
            await self.management.set_username(claims["sub"], username)

    async def delete_account(self, user: User) -> None:
        if self.management is None:
            raise self._unsupported(
                "deleting the account upstream without Management API credentials"
                " (managementClientId, managementClientSecret)"
            )
        # The token's `sub` is the Auth0 user id (`auth0|…`, `google-oauth2|…`).
        await self.management.delete_user(user.subject)


def _domain_base(s: SettingsReader) -> str | None:
    domain = s.string("domain", pattern=_DOMAIN, hint="a host name such as my-tenant.eu.auth0.com")
    return f"https://{domain}/" if domain else None


def _management(s: SettingsReader, base: str | None) -> ManagementConfig | None:
    client_id = s.string("managementClientId")
    secret = s.string("managementClientSecret")
    token_url = s.url("tokenUrl") or (base + "oauth/token" if base else None)
    api_url = s.url("managementApiUrl") or (base + "api/v2/" if base else None)
    audience = s.string("managementAudience")
    connection = s.string("managementConnection")
    timeout = s.timeout()
    if client_id is None and secret is None:
        return None
    if client_id is None or secret is None:
        raise SettingsError("managementClientId and managementClientSecret go together")
    if token_url is None or api_url is None:
        raise SettingsError(
            "Management API credentials need domain (or tokenUrl and managementApiUrl)"
        )
    api_url = api_url if api_url.endswith("/") else api_url + "/"
    return ManagementConfig(
        token_url=token_url,
        api_url=api_url,
        audience=audience or api_url,
        client_id=client_id,
        client_secret=secret,
        connection=connection,
        timeout=timeout,
    )
