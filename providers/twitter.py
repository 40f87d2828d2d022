"""Twitter / X: checks an OAuth 2.0 user access token (scopes `users.read`
and `tweet.read`) the app obtained with "Sign in with X".

X offers no introspection for a client without a secret, so the token is
proven by using it: `GET /2/users/me` answers only for the token's owner,
and that owner's id must be the `userId` the app sent. The user is keyed on
the X user id (handles can be renamed; ids cannot)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from providers.kit.http import UpstreamReply, get_json, rate_limited, retry_after, upstream_error
from providers.kit.settings import SettingsReader
from providers.kit.social import SocialIdentity, SocialProvider
from providers.values import JSON, PermissionDenied, ProviderError, Unauthenticated

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.x.com"
# When X sends a 429 without a usable reset time.
_DEFAULT_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class TwitterSettings:
    api_url: str
    timeout: float


class TwitterProvider(SocialProvider[TwitterSettings]):
    name = "twitter"
    requires_user_id = True

    @classmethod
    def read_settings(cls, s: SettingsReader) -> TwitterSettings:
        return TwitterSettings(
            api_url=s.url("apiUrl", default=DEFAULT_API_URL, base=True), timeout=s.timeout()
        )

    async def identify(self, token: str, *, user_id: str | None) -> SocialIdentity:
        """Whose token this is: X answers /2/users/me only for the token's
        owner (who must be the `userId` the app sent; the base checks it)."""
        me = await self._users_me(token)
        x_id = str(me["id"])
        return SocialIdentity(
            subject=x_id,
            attributes={"name": me.get("name"), "username": me.get("username")},
            username=me.get("username"),
        )

    async def _users_me(self, token: str) -> JSON:
        reply = await get_json(
            self.ctx.http,
            f"{self.settings.api_url}/2/users/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout_s=self.settings.timeout,
        )
        if reply.status != 200:
            raise self._error(reply)
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise upstream_error(self.name, reply.status)
        return data

    def _error(self, reply: UpstreamReply) -> ProviderError:
        if reply.status == 401:
            # X does not say whether the token expired or was never valid.
            return Unauthenticated(
                "INVALID_SOCIAL_TOKEN",
                "the twitter access token is not valid or has expired",
                metadata={"provider": self.name},
            )
        if reply.status == 403:
            # The token is genuine but may not read the profile (missing
            # users.read scope, suspended account, app not enrolled).
            return PermissionDenied(
                "SOCIAL_TOKEN_FORBIDDEN",
                "the twitter access token may not read the user's profile",
                metadata={"provider": self.name},
            )
        if reply.status == 429:
            return rate_limited(self.name, self._retry_after(reply))
        log.warning("twitter /2/users/me answered HTTP %s", reply.status)
        return upstream_error(self.name, reply.status)

    def _retry_after(self, reply: UpstreamReply) -> float:
        # x-rate-limit-reset is the Unix second at which the window reopens.
        return retry_after(
            reply.headers,
            now=self.ctx.now(),
            default=_DEFAULT_RETRY_AFTER,
            reset_header="x-rate-limit-reset",
        )
