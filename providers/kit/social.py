"""The social-provider base (google, facebook, twitter): the whole
`GET /user/check/nonstandard` flow, written once.

    token -> upstream identity -> our user (created or refreshed) ->
    revocation rule -> device and login -> the documented profile reply

A social provider writes only how it verifies a token and reads whose it is
(`identify`); everything else happens here. Users are keyed on the network's
stable id (`subject`), never on email: an email can change hands or be shared
across networks, the id cannot.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from providers.base import Provider, ProviderContext
from providers.kit.inputs import device_id_arg, storable
from providers.kit.tokens import refuse_if_revoked
from providers.values import (
    JSON,
    Action,
    InvalidArgument,
    ProfileView,
    Reply,
    Request,
    Unauthenticated,
)

S = TypeVar("S")

# Attribute keys an identity may carry. Values must be what the network
# vouches for (e.g. `email` only when the network verified it).
ATTRIBUTE_KEYS = ("name", "email", "username", "picture")

# How long a token the network vouched for is taken at its word without
# asking again, so a hot client does not cost an upstream call per request.
# Never past the token's own expiry when the network reports one. The price:
# a token revoked at the network (logout there, password change) keeps
# working here for at most this long, per process. Revocations through
# Identify (valid_after) are checked on every call regardless.
VERIFICATION_CACHE_SECONDS = 60.0
# Tokens kept per provider instance (so per project), least recently used
# dropped first; an identity is a few hundred bytes.
VERIFICATION_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class SocialIdentity:
    """Who a verified social token belongs to.

    subject     the network's stable user id (Google `sub`, Facebook app-scoped
                id, X user id); the user and its externalId hang on it.
    attributes  what the network told us, keys from ATTRIBUTE_KEYS; values
                that are not non-empty strings a store can keep (no NUL) are
                dropped, so raw upstream values can be passed as they come. They replace the stored
                ones: the network is the source of truth (a withdrawn email
                permission must not leave a stale email behind).
    username    the network's handle, if it has one (X `username`).
    issued_at   the token's issue time when the network reports it, for the
                revocation rule.
    expires_at  the token's expiry (Unix seconds) when the network reports
                it: the identity is not reused from the cache past it."""

    subject: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    username: str | None = None
    issued_at: float | None = None
    expires_at: float | None = None


class SocialProvider(Provider[S]):
    strategies: ClassVar[tuple[str, ...]] = ("email",)
    # X cannot introspect a token: the app must say whose it claims it is.
    requires_user_id: ClassVar[bool] = False
    # 0 turns the cache of verified tokens off for a provider.
    verification_cache_seconds: ClassVar[float] = VERIFICATION_CACHE_SECONDS

    def __init__(self, settings: S, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        # SHA-256 of (userId, token) -> (identity, monotonic deadline). A
        # digest, so no bearer token is held past its call.
        self._verified: OrderedDict[bytes, tuple[SocialIdentity, float]] = OrderedDict()

    async def identify(self, token: str, *, user_id: str | None) -> SocialIdentity:
        """Verify `token` upstream and say whose it is. `user_id`, when the
        app sent one, may be checked early (before a second upstream call)
        with `ensure_same_user`; the base checks it again afterwards."""
        raise NotImplementedError

    async def check_user_nonstandard(self, req: Request) -> Reply:
        token = social_token(req)
        user_id = self._user_id(req)
        # Checked before any upstream call: a bad deviceId costs nothing.
        device_id = device_id_arg(req, required=False)
        await self.ctx.abuse.admit(Action.SOCIAL_CHECK, req)
        who = await self.verified_identity(token, user_id=user_id)
        ensure_same_user(user_id, who.subject, provider=self.name)
        attrs: JSON = {k: v for k, v in who.attributes.items() if storable(v)}
        username = who.username if storable(who.username) else None
        accounts = self.ctx.accounts
        user, created = await accounts.ensure_user(who.subject, attributes=attrs, username=username)
        refuse_if_revoked(user, who.issued_at)
        if not created and (user.attributes != attrs or (username and user.username != username)):
            user = await accounts.update_user(
                user, attributes=attrs, merge_attributes=False, username=username
            )
        # A check does not invent devices: a login is recorded only for the
        # device the app named.
        if device_id is not None:
            await accounts.record_login(user, device_id)
        return Reply(message="OK", data=profile_data(await accounts.profile(user)))

    async def link(self, req: Request) -> Reply:
        return await self.check_user_nonstandard(req)

    async def verified_identity(self, token: str, *, user_id: str | None) -> SocialIdentity:
        """`identify`, remembered for `verification_cache_seconds` and never
        past the token's own expiry. Only successes are kept: a refused
        token, or an outage, is asked about again on the next call."""
        ttl = self.verification_cache_seconds
        if ttl <= 0:
            return await self.identify(token, user_id=user_id)
        key = _cache_key(token, user_id)
        hit = self._verified.get(key)
        if hit is not None:
            who, deadline = hit
            if time.monotonic() < deadline and not _expired(who, self.ctx.now()):
                self._verified.move_to_end(key)
                return who
            del self._verified[key]
        who = await self.identify(token, user_id=user_id)
        if not _expired(who, self.ctx.now()):
            self._verified[key] = (who, time.monotonic() + ttl)
            self._verified.move_to_end(key)
            while len(self._verified) > VERIFICATION_CACHE_SIZE:
                self._verified.popitem(last=False)
        return who

    def _user_id(self, req: Request) -> str | None:
        if self.requires_user_id and not req.user_id:
            raise InvalidArgument(
                "MISSING_FIELD",
                f"userId is required for provider {self.name}",
                metadata={"field": "userId", "provider": self.name},
            )
        return req.user_id


def _cache_key(token: str, user_id: str | None) -> bytes:
    # Length-prefixed, so no (userId, token) pair can spell another one.
    uid = (user_id or "").encode()
    return hashlib.sha256(b"%d:" % len(uid) + uid + token.encode()).digest()


def _expired(who: SocialIdentity, now: float) -> bool:
    return who.expires_at is not None and who.expires_at <= now


def social_token(req: Request) -> str:
    """The social token of a check call: the `accessToken` query parameter,
    else the `Authorization: Bearer` header (the API documents both; the
    query parameter wins when both are sent). Its length was bounded where
    it was read (providers/kit/tokens.py)."""
    token = req.access_token or req.bearer
    if not token:
        raise Unauthenticated(
            "MISSING_ACCESS_TOKEN",
            "an accessToken query parameter or an Authorization: Bearer header is required",
            metadata={"provider": req.provider},
        )
    return token


def ensure_same_user(expected: str | None, upstream_id: str, *, provider: str) -> None:
    """When the app sent `userId`, it must name the token's owner: the app
    asserts who it thinks signed in, and a token of someone else is refused."""
    if expected and expected != upstream_id:
        raise Unauthenticated(
            "USER_ID_MISMATCH",
            "the token does not belong to the given userId",
            metadata={"provider": provider},
        )


def profile_data(view: ProfileView) -> JSON:
    """The documented check reply body for one user: updatedAt (Unix seconds
    as a string, as documented), nickname, email, devices, userId,
    externalId and loginHistory; and the user's linked identities."""
    user = view.user
    attrs = user.attributes
    return {
        "updatedAt": str(user.updated_at),
        "nickname": user.username or attrs.get("username") or attrs.get("name") or "",
        "email": attrs.get("email") or "",
        "devices": view.devices_json(),
        "userId": user.user_id,
        "externalId": user.external_id,
        "loginHistory": list(view.login_history),
        "linkedIdentities": view.identities_json(),
    }
