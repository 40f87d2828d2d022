"""Twitter / X: checks an OAuth 2.0 user access token (scopes `users.read`
and `tweet.read`) the app obtained with "Sign in with X".

X offers no introspection for a client without a secret, so the token is
proven by using it: `GET /2/users/me` answers only for the token's owner,
and that owner's id must be the `userId` the app sent. The user is keyed on
the X user id (handles can be renamed; ids cannot)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from providers.base import (
    JSON,
    PermissionDenied,
    Provider,
    ProviderContext,
    ProviderError,
    Reply,
    Request,
    Unauthenticated,
)
from providers.social import (
    SocialIdentity,
    ensure_same_user,
    require_user_id,
    social_check,
    social_token,
)
from providers.upstream import (
    UpstreamReply,
    get_json,
    rate_limited,
    reject_unknown,
    timeout_setting,
    upstream_error,
    url_setting,
)

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.x.com"
SETTINGS = {"apiUrl", "timeoutSeconds"}
# When X sends a 429 without a usable reset time.
_DEFAULT_RETRY_AFTER = 60.0


class TwitterProvider(Provider):
    name = "twitter"
    strategies = ("email",)

    def __init__(self, settings: Mapping[str, Any], ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self.validate_settings(settings)
        self._api = url_setting(settings, "apiUrl", DEFAULT_API_URL)
        self._timeout = timeout_setting(settings)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown(settings, SETTINGS, cls.name)
        url_setting(settings, "apiUrl", DEFAULT_API_URL)
        timeout_setting(settings)

    async def check_user_nonstandard(self, req: Request) -> Reply:
        token = social_token(req, provider=self.name)
        user_id = require_user_id(req, provider=self.name)
        who = await self.identify(token, user_id=user_id)
        return await social_check(self.ctx, req, **who.as_kwargs())

    async def identify(self, token: str, *, user_id: str) -> SocialIdentity:
        """Whose token this is: X answers /2/users/me only for the token's
        owner, who must be `user_id`."""
        me = await self._users_me(token)
        x_id = str(me["id"])
        ensure_same_user(user_id, x_id, provider=self.name)
        return SocialIdentity(
            subject=x_id,
            attributes={"name": me.get("name"), "username": me.get("username")},
            username=me.get("username"),
        )

    async def _users_me(self, token: str) -> JSON:
        reply = await get_json(
            self.ctx.http,
            f"{self._api}/2/users/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout_s=self._timeout,
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
        try:
            reset = int(reply.headers.get("x-rate-limit-reset", ""))
        except ValueError:
            return _DEFAULT_RETRY_AFTER
        return float(min(max(reset - self.ctx.now(), 1), 900))
