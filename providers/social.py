"""What the social providers (google, facebook, twitter) share for
`GET /user/check/nonstandard`: reading the token the app sends, and turning a
verified social identity into our user and the documented profile reply.

A social provider only writes how it verifies a token upstream; then it calls

    token = social_token(req, provider=self.name)
    ... verify upstream, get the network's stable user id ...
    check_user_id(req, upstream_id, provider=self.name)
    return await social_check(self.ctx, req, subject=..., attributes=..., username=...)

(or builds a SocialIdentity `who` and calls social_check(self.ctx, req, **who.as_kwargs())).

Users are keyed on the network's stable id (`subject`), never on email: an
email can change hands or be shared across networks, the id cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.base import (
    JSON,
    InvalidArgument,
    ProfileView,
    ProviderContext,
    Reply,
    Request,
    Unauthenticated,
    canonical_uuid,
)

# Upstream tokens are well below this (Google ID tokens ~1-2 KB, Graph and X
# tokens ~200 B); anything longer is refused before it is sent anywhere.
MAX_TOKEN_LEN = 4096

# Attribute keys a provider may pass to `social_check`. Values must be what
# the network vouches for (e.g. `email` only when the network verified it).
ATTRIBUTE_KEYS = ("name", "email", "username", "picture")


@dataclass(frozen=True)
class SocialIdentity:
    """Who a verified social token belongs to; the arguments of social_check,
    so a provider's verification step can be tested without a store."""

    subject: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    username: str | None = None
    issued_at: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "attributes": self.attributes,
            "username": self.username,
            "issued_at": self.issued_at,
        }


def social_token(req: Request, *, provider: str) -> str:
    """The social token of a check call: the `accessToken` query parameter,
    else the `Authorization: Bearer` header (the spec documents both; the
    query parameter wins when both are sent).

    Raises Unauthenticated MISSING_ACCESS_TOKEN when neither is present, and
    InvalidArgument FIELD_TOO_LONG for an absurdly long token."""
    token = req.access_token or req.bearer
    if not token:
        raise Unauthenticated(
            "MISSING_ACCESS_TOKEN",
            "an accessToken query parameter or an Authorization: Bearer header is required",
            metadata={"provider": provider},
        )
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"accessToken is longer than {MAX_TOKEN_LEN}",
            metadata={"field": "accessToken", "provider": provider},
        )
    return token


def check_user_id(req: Request, upstream_id: str, *, provider: str) -> None:
    """When the app sent `userId`, it must name the token's owner: the app
    asserts who it thinks signed in, and a token of someone else is refused."""
    ensure_same_user(req.user_id, upstream_id, provider=provider)


def ensure_same_user(expected: str | None, upstream_id: str, *, provider: str) -> None:
    """check_user_id for callers that hold the expected id, not the Request."""
    if expected and expected != upstream_id:
        raise Unauthenticated(
            "USER_ID_MISMATCH",
            "the token does not belong to the given userId",
            metadata={"provider": provider},
        )


def require_user_id(req: Request, *, provider: str) -> str:
    if not req.user_id:
        raise InvalidArgument(
            "MISSING_FIELD",
            f"userId is required for provider {provider}",
            metadata={"field": "userId", "provider": provider},
        )
    return req.user_id


async def social_check(
    ctx: ProviderContext,
    req: Request,
    *,
    subject: str,
    attributes: Mapping[str, Any],
    username: str | None = None,
    issued_at: int | None = None,
) -> Reply:
    """Map a verified social identity to our user and build the profile reply.

    subject     the network's stable user id (Google `sub`, Facebook app-scoped
                id, X user id); the user and its externalId hang on it.
    attributes  what the network told us, keys from ATTRIBUTE_KEYS; values
                that are not non-empty strings (None, "", wrong types from
                a sloppy upstream) are dropped, so raw upstream values can be
                passed as they come. They replace the stored ones, since the
                network is the source of truth (a withdrawn email permission
                must not leave a stale email behind).
    username    the network's handle, if it has one (X `username`).
    issued_at   the token's issue time when the network reports it; a token
                issued before the user's `valid_after` (revoked sessions) is
                refused with TOKEN_REVOKED.

    Records a login for `req.device_id` when the app sent one (a check does
    not invent devices). Returns data with updatedAt (Unix seconds as a
    string, as documented), nickname, email, devices, userId, externalId and
    loginHistory.
    """
    attrs: JSON = {k: v for k, v in attributes.items() if _text(v)}
    username = username if _text(username) else None
    user, created = await ctx.accounts.ensure_user(subject, attributes=attrs, username=username)
    if issued_at is not None and issued_at < user.valid_after:
        raise Unauthenticated(
            "TOKEN_REVOKED",
            "the token was issued before the user's sessions were revoked",
            metadata={"provider": req.provider},
        )
    if not created and (user.attributes != attrs or (username and user.username != username)):
        user = await ctx.accounts.update_user(
            user, attributes=attrs, merge_attributes=False, username=username
        )
    if req.device_id:
        device_id = canonical_uuid(req.device_id, field_name="deviceId")
        await ctx.accounts.record_login(user, device_id)
    view = await ctx.accounts.profile(user)
    return Reply(message="OK", data=profile_data(view))


def profile_data(view: ProfileView) -> JSON:
    """The documented check reply body for one user."""
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
    }


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
