"""`authZero`: the oidc provider with Auth0's conventions.

What differs from a generic issuer:
- `domain` derives the issuer (`https://{domain}/`), the JWKS URL and the
  Management API URLs; explicit settings still win (custom domains issue
  tokens under their own name while the Management API keeps the tenant's).
- Auth0 keeps a username on its user: with Management API credentials a
  changed username is written there too (PATCH /api/v2/users/{id}).
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
from typing import Any, ClassVar

from providers.auth0_management import Auth0Management, ManagementConfig
from providers.base import ProviderContext, Unauthenticated
from providers.jwtverify import Claims, url_setting
from providers.oidc import OidcProvider, OidcSettings
from providers.upstream import timeout_setting

_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::\d{1,5})?$")


class AuthZeroProvider(OidcProvider):
    name: ClassVar[str] = "authZero"
    known_settings: ClassVar[frozenset[str]] = OidcProvider.known_settings | {
        "domain",
        "tokenUrl",
        "managementApiUrl",
        "managementAudience",
        "managementClientId",
        "managementClientSecret",
        "managementConnection",
    }
    # Auth0 ID tokens and /userinfo carry `nickname` (and `username` for
    # database connections that use one); access tokens carry neither.
    default_claims: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "username": ("username", "nickname"),
        "email": ("email",),
        "nickname": ("nickname",),
    }

    def __init__(self, settings: Mapping[str, Any], ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        management = self.management_config(settings)
        self.management = Auth0Management(management, ctx.http) if management else None

    @classmethod
    def parse_settings(cls, settings: Mapping[str, Any]) -> OidcSettings:
        parsed = super().parse_settings(_with_domain_defaults(settings))
        cls.management_config(settings)
        return parsed

    @classmethod
    def management_config(cls, settings: Mapping[str, Any]) -> ManagementConfig | None:
        client_id = settings.get("managementClientId")
        secret = settings.get("managementClientSecret")
        if client_id is None and secret is None:
            return None
        if not (isinstance(client_id, str) and client_id and isinstance(secret, str) and secret):
            raise ValueError("managementClientId and managementClientSecret go together")
        full = _with_domain_defaults(settings)
        token_url = url_setting(full, "tokenUrl")
        api_url = url_setting(full, "managementApiUrl")
        if token_url is None or api_url is None:
            raise ValueError(
                "Management API credentials need domain (or tokenUrl and managementApiUrl)"
            )
        api_url = api_url if api_url.endswith("/") else api_url + "/"
        audience = full.get("managementAudience", api_url)
        connection = settings.get("managementConnection")
        if not isinstance(audience, str) or not audience:
            raise ValueError("managementAudience must be a string")
        if connection is not None and (not isinstance(connection, str) or not connection):
            raise ValueError("managementConnection must be a connection name")
        return ManagementConfig(
            token_url=token_url,
            api_url=api_url,
            audience=audience,
            client_id=client_id,
            client_secret=secret,
            connection=connection,
            timeout=timeout_setting(settings),
        )

    def refuse_claims(self, claims: Claims) -> None:
        if claims.get("gty") == "client-credentials":
            raise Unauthenticated(
                "NOT_A_USER_TOKEN", "the token was issued to an application, not to a user"
            )

    async def push_username(self, claims: Claims, username: str) -> None:
        if self.management is not None:
            await self.management.set_username(claims["sub"], username)


def _with_domain_defaults(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    domain = settings.get("domain")
    if domain is None:
        return settings
    if not isinstance(domain, str) or not _DOMAIN.match(domain):
        raise ValueError("domain must be a host name such as my-tenant.eu.auth0.com")
    base = f"https://{domain}/"
    derived = {
        "issuer": base,
        "jwksUri": base + ".well-known/jwks.json",
        "tokenUrl": base + "oauth/token",
        "managementApiUrl": base + "api/v2/",
    }
    return {**derived, **settings}
