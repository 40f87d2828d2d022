"""Facebook: checks a user access token the app obtained with Facebook Login.

Two Graph API calls: `debug_token` (with the app token `appId|appSecret`)
proves the token is valid, belongs to this project's app and is not expired;
`/me` (with `appsecret_proof`, so a stolen token alone is useless to anyone
without our secret) gives the profile. The user is keyed on the app-scoped
Facebook user id."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any

from providers.base import ProviderContext
from providers.kit.http import (
    UpstreamReply,
    get_json,
    keep_queries_out_of_logs,
    misconfigured,
    rate_limited,
    upstream_error,
)
from providers.kit.settings import SettingsReader
from providers.kit.social import SocialIdentity, SocialProvider, ensure_same_user
from providers.values import JSON, ProviderError, Unauthenticated

log = logging.getLogger(__name__)

DEFAULT_GRAPH_URL = "https://graph.facebook.com/v23.0"
_APP_ID = re.compile(r"[0-9]+")

# Graph error codes (developers.facebook.com/docs/graph-api/guides/error-handling).
_TOKEN_ERROR = 190
_SUBCODE_EXPIRED = 463
_THROTTLE_CODES = {4, 17, 32, 613}
_TRANSIENT_CODES = {1, 2}
# Business use-case rate limits are 80000-80014.
_BUC_THROTTLE = range(80000, 80100)


@dataclass(frozen=True)
class FacebookSettings:
    app_id: str
    app_secret: str
    graph_url: str
    timeout: float


def appsecret_proof(app_secret: str, token: str) -> str:
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


class FacebookProvider(SocialProvider[FacebookSettings]):
    name = "facebook"

    def __init__(self, settings: FacebookSettings, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        keep_queries_out_of_logs()

    @classmethod
    def read_settings(cls, s: SettingsReader) -> FacebookSettings:
        return FacebookSettings(
            # YAML reads an unquoted id as a number; both spellings mean the same app.
            app_id=s.required_string(
                "appId", pattern=_APP_ID, hint="the numeric app id", numbers=True
            ),
            app_secret=s.required_string("appSecret"),
            graph_url=s.url("graphUrl", default=DEFAULT_GRAPH_URL, base=True),
            timeout=s.timeout(),
        )

    async def identify(self, token: str, *, user_id: str | None) -> SocialIdentity:
        """Whose token this is, once Graph vouched that it is valid, issued
        to this project's app, unexpired, and (when given) `user_id`'s."""
        info = await self._debug_token(token)
        facebook_id = str(info["user_id"])
        ensure_same_user(user_id, facebook_id, provider=self.name)
        me = await self._me(token)
        if str(me.get("id")) != facebook_id:
            # debug_token and /me disagree about whose token this is.
            raise self._invalid("INVALID_SOCIAL_TOKEN")
        issued_at = info.get("issued_at")
        expires_at = info.get("expires_at")
        return SocialIdentity(
            subject=facebook_id,
            # Graph only returns an email the user confirmed with Facebook.
            attributes={"name": me.get("name"), "email": me.get("email")},
            issued_at=issued_at if isinstance(issued_at, int) else None,
            # 0 (or absent): a token that does not expire.
            expires_at=expires_at if isinstance(expires_at, int) and expires_at > 0 else None,
        )

    async def _debug_token(self, token: str) -> JSON:
        reply = await get_json(
            self.ctx.http,
            f"{self.settings.graph_url}/debug_token",
            params={
                "input_token": token,
                "access_token": f"{self.settings.app_id}|{self.settings.app_secret}",
            },
            timeout_s=self.settings.timeout,
        )
        if reply.status != 200 or not isinstance(reply.body, dict):
            # A top-level error from debug_token is about the app token (our
            # credentials); problems of the inspected token come in data.error.
            raise self._graph_error(reply, about_app=True)
        data = reply.body.get("data")
        if not isinstance(data, dict):
            raise upstream_error(self.name, reply.status)
        if not data.get("is_valid"):
            reason = self._token_reason(data.get("error"))
            raise self._invalid("TOKEN_EXPIRED" if self._expired(data) else reason)
        if str(data.get("app_id")) != self.settings.app_id:
            raise self._invalid("WRONG_APP")
        if data.get("type", "USER") != "USER" or not data.get("user_id"):
            # Page, app and system-user tokens do not identify a person.
            raise self._invalid("INVALID_SOCIAL_TOKEN")
        if self._expired(data):
            raise self._invalid("TOKEN_EXPIRED")
        return data

    async def _me(self, token: str) -> JSON:
        reply = await get_json(
            self.ctx.http,
            f"{self.settings.graph_url}/me",
            params={
                "fields": "id,name,email",
                "access_token": token,
                "appsecret_proof": appsecret_proof(self.settings.app_secret, token),
            },
            timeout_s=self.settings.timeout,
        )
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise self._graph_error(reply, about_app=False)
        if not reply.body.get("id"):
            raise upstream_error(self.name, reply.status)
        return reply.body

    def _expired(self, data: JSON) -> bool:
        expires_at = data.get("expires_at")
        # 0 (or absent) means a token that does not expire.
        return isinstance(expires_at, int) and 0 < expires_at <= self.ctx.now()

    @staticmethod
    def _token_reason(error: Any) -> str:
        # Top-level Graph errors name it error_subcode, debug_token's data.error subcode.
        if isinstance(error, dict) and _SUBCODE_EXPIRED in (
            error.get("error_subcode"),
            error.get("subcode"),
        ):
            return "TOKEN_EXPIRED"
        return "INVALID_SOCIAL_TOKEN"

    def _graph_error(self, reply: UpstreamReply, *, about_app: bool) -> ProviderError:
        error = reply.body.get("error") if isinstance(reply.body, dict) else None
        if reply.status >= 500 or not isinstance(error, dict):
            return upstream_error(self.name, reply.status)
        code = error.get("code")
        if code in _THROTTLE_CODES or code in _BUC_THROTTLE:
            return rate_limited(self.name, 60.0)
        if code in _TRANSIENT_CODES:
            return upstream_error(self.name, reply.status)
        if about_app:
            log.error(
                "facebook Graph refused the app credentials of app %s (code %s, fbtrace_id %s)",
                self.settings.app_id,
                code,
                error.get("fbtrace_id"),
            )
            return misconfigured(self.name, "this project's app credentials")
        if code == 100 and "appsecret_proof" in str(error.get("message", "")):
            # debug_token already matched the app id, so the secret is wrong.
            log.error("facebook Graph refused appsecret_proof for app %s", self.settings.app_id)
            return misconfigured(self.name, "this project's app secret")
        if code == _TOKEN_ERROR or reply.status in (400, 401, 403):
            return self._invalid(self._token_reason(error))
        return upstream_error(self.name, reply.status)

    def _invalid(self, reason: str) -> Unauthenticated:
        messages = {
            "TOKEN_EXPIRED": "the facebook access token has expired",
            "WRONG_APP": "the facebook access token was issued to another app",
        }
        return Unauthenticated(
            reason,
            messages.get(reason, "the facebook access token is not valid"),
            metadata={"provider": self.name},
        )
