"""`google`: `GET /user/check/nonstandard` with a Google ID token.

The app signs its user in with Google (Sign-In for Android/iOS/Web) and
sends us the ID token it got. We verify it offline against Google's
published keys with the shared verifier: signature (RS256), issuer
(`accounts.google.com` in either spelling Google uses), audience = one of the
project's OAuth client ids, expiry. The user hangs on Google's `sub`, never
on the email, which is passed on only when Google verified it.

    google:
      clientIds: [1234-abc.apps.googleusercontent.com]
      certsUrl: https://www.googleapis.com/oauth2/v3/certs   # the default
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import Provider, ProviderContext, Reply, Request
from providers.jwtverify import JwtVerifier, VerifierConfig, str_list_setting, url_setting
from providers.social import check_user_id, social_check, social_token
from providers.upstream import reject_unknown

CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
KNOWN_SETTINGS = {
    "clientIds",
    "certsUrl",
    "leeway",
    "jwksCacheTtl",
    "jwksRefetchInterval",
    "timeoutSeconds",
}


class GoogleProvider(Provider):
    name: ClassVar[str] = "google"
    strategies: ClassVar[tuple[str, ...]] = ("email",)

    def __init__(self, settings: Mapping[str, Any], ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self.verifier = JwtVerifier(self.verifier_config(settings), ctx.http, now=ctx.now)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        cls.verifier_config(settings)

    @classmethod
    def verifier_config(cls, settings: Mapping[str, Any]) -> VerifierConfig:
        reject_unknown(settings, KNOWN_SETTINGS, cls.name)
        return VerifierConfig.from_settings(
            settings,
            issuers=ISSUERS,
            jwks_uri=url_setting(settings, "certsUrl") or CERTS_URL,
            audiences=str_list_setting(settings, "clientIds", required=True),
            # Google signs ID tokens with RS256 only; nothing else is accepted.
            default_algorithms=("RS256",),
        )

    async def check_user_nonstandard(self, req: Request) -> Reply:
        token = social_token(req, provider=self.name)
        claims = await self.verifier.verify(token)
        subject: str = claims["sub"]
        check_user_id(req, subject, provider=self.name)
        return await social_check(
            self.ctx,
            req,
            subject=subject,
            attributes={
                "name": claims.get("name") or claims.get("given_name"),
                "email": claims.get("email") if claims.get("email_verified") is True else None,
                "picture": claims.get("picture"),
            },
            issued_at=int(claims["iat"]),
        )
