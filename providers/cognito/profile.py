"""Cognito user attributes in and out: which keys a client may write, and the
documented profile reply built from GetUser's attributes and our store."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from providers.kit.inputs import require_str, text_arg
from providers.values import JSON, InvalidArgument, ProfileView

# Standard attributes a user may set on self sign-up or UpdateUserAttributes.
# `email_verified`/`phone_number_verified` are left out on purpose: only the
# pool (or an admin) may vouch for those.
STANDARD_ATTRIBUTES = frozenset(
    {
        "address",
        "birthdate",
        "email",
        "family_name",
        "gender",
        "given_name",
        "locale",
        "middle_name",
        "name",
        "nickname",
        "phone_number",
        "picture",
        "preferred_username",
        "profile",
        "updated_at",
        "website",
        "zoneinfo",
    }
)
_CUSTOM = re.compile(r"custom:[\w.-]{1,20}")
# Cognito caps attribute values at 2048 characters.
MAX_VALUE_LEN = 2048
MAX_EMAIL_LEN = 254
# Never shown in a profile: `sub` is Cognito's id of the person, and this
# service hands out the pseudonymous externalId instead.
HIDDEN_ATTRIBUTES = frozenset({"sub"})


def email_of(data: Mapping[str, Any]) -> str:
    email = require_str(data, "email", max_len=MAX_EMAIL_LEN)
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in email):
        raise InvalidArgument(
            "INVALID_EMAIL", "data.email must be an email address", metadata={"field": "email"}
        )
    return email


def writable_attributes(data: Mapping[str, Any], *, skip: Iterable[str]) -> dict[str, str]:
    """The Cognito attributes in a request's `data`, as strings. Keys in
    `skip` are the operation's own fields (password, deviceId, ...)."""
    skipped = set(skip)
    out: dict[str, str] = {}
    for key, value in data.items():
        if key in skipped:
            continue
        if key not in STANDARD_ATTRIBUTES and not _CUSTOM.fullmatch(key):
            raise InvalidArgument(
                "UNKNOWN_ATTRIBUTE",
                "data may carry standard Cognito attributes and custom:* attributes only",
                metadata={"field": key[:64]},
            )
        out[key] = _as_text(key, value)
    return out


def _as_text(key: str, value: Any) -> str:
    # JSON numbers arrive as floats through the transcoder's Struct: 1 -> 1.0.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(
            "INVALID_ATTRIBUTE_VALUE",
            f"data.{key[:64]} must be a string",
            metadata={"field": key[:64]},
        )
    text = str(value)
    if len(text) > MAX_VALUE_LEN:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"data.{key[:64]} is longer than {MAX_VALUE_LEN}",
            metadata={"field": key[:64]},
        )
    return text_arg(text, key[:64])


def attributes_of(get_user_reply: Mapping[str, Any]) -> dict[str, str]:
    """GetUser's UserAttributes as a dict, without the hidden ones."""
    out: dict[str, str] = {}
    for item in get_user_reply.get("UserAttributes") or []:
        name, value = item.get("Name"), item.get("Value")
        if isinstance(name, str) and isinstance(value, str) and name not in HIDDEN_ATTRIBUTES:
            out[name] = value
    return out


def stored_attributes(attributes: Mapping[str, Any]) -> dict[str, str]:
    """Our synced copy (an identity's attributes) as GetUser would show it."""
    return {
        k: v for k, v in attributes.items() if isinstance(v, str) and k not in HIDDEN_ATTRIBUTES
    }


def profile_data(view: ProfileView, *, username: str, attributes: Mapping[str, str]) -> JSON:
    """The documented GET /user and GET /user/check `data`: the attributes at
    the top level and again, with username, userId and loginHistory, in a
    nested `data`; updatedAt as a string; the devices; and the user's linked
    identities (beside the documented fields)."""
    return {
        "data": {
            "username": username,
            **attributes,
            "userId": view.user.user_id,
            "loginHistory": list(view.login_history),
        },
        **attributes,
        "updatedAt": str(view.user.updated_at),
        "devices": view.devices_json(),
        "linkedIdentities": view.identities_json(),
    }
