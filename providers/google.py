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

from providers.base import ProviderContext
from providers.kit.jwt import JwtVerifier, VerifierConfig
from providers.kit.settings import SettingsReader
from providers.kit.social import SocialIdentity, SocialProvider

CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# Google signs ID tokens with RS256 only; nothing else is accepted.
ALGORITHMS = ("RS256",)


class GoogleProvider(SocialProvider[VerifierConfig]):
    name = "google"

    def __init__(self, settings: VerifierConfig, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self.verifier = JwtVerifier(settings, ctx.http, now=ctx.now)

    @classmethod
    def read_settings(cls, s: SettingsReader) -> VerifierConfig:
        return VerifierConfig.read(
            s,
            issuers=ISSUERS,
            jwks_uri=s.url("certsUrl", default=CERTS_URL),
            audiences=s.strings("clientIds", required=True),
            algorithms=ALGORITHMS,
        )

    async def identify(self, token: str, *, user_id: str | None) -> SocialIdentity:
        claims = await self.verifier.verify(token)
        return SocialIdentity(
            subject=claims["sub"],
            attributes={
                "name": claims.get("name") or claims.get("given_name"),
                "email": claims.get("email") if claims.get("email_verified") is True else None,
                "picture": claims.get("picture"),
            },
            issued_at=claims["iat"],
            expires_at=claims["exp"],
        )
