"""Checks on what a client sends in a request, one rule per kind of value.

- every id: at most 512 characters. Ids are ASCII by construction (UUIDs,
  hex, the networks' numeric ids), so a look-alike digit, a space or a
  control character is never part of one; each id's characters are checked
  by its format:
  - UUIDs (projectId, deviceId): one of the ASCII textual forms only, read
    case-insensitively, returned canonical (lowercase, dashed);
  - externalId: exactly 64 lowercase hex characters;
  - ids without a format of their own (userId, signature): visible ASCII;
- text in `data` (passwords, emails, names, attributes, appProfile): any
  Unicode except NUL, which no store can keep (PostgreSQL refuses it in
  text). Line breaks and non-ASCII letters are data, not attacks.

Each refusal is INVALID_ARGUMENT with a reason clients can branch on and the
field's name in the metadata. Tokens have their own rule (kit/tokens.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from providers.values import JSON, InvalidArgument, Request

APP_PROFILE_MAX_BYTES = 16 * 1024
MAX_ID_CHARS = 512

# fullmatch, never match: `$` also matches before a trailing newline.
_ID = re.compile(r"[\x21-\x7e]+")
_HEX = "[0-9a-fA-F]"
# What uuid.UUID reads, without what it reads too (any Unicode digit, `_`,
# spaces): 8-4-4-4-12 or 32 hex digits, optionally braced or urn:uuid:.
_UUID = re.compile(
    rf"(?:urn:uuid:)?(?P<brace>\{{)?"
    rf"(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})"
    rf"(?(brace)\}})"
)
# The form canonical_uuid gives, which it may return as it is.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EXTERNAL_ID = re.compile(r"[0-9a-f]{64}")


def _invalid_characters(field: str, what: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_CHARACTERS", f"{field} may hold {what} only", metadata={"field": field}
    )


def bounded_id(value: str, field: str) -> str | None:
    """An id as sent, None when empty; FIELD_TOO_LONG past 512 characters.
    Its characters are its format's to check (canonical_uuid,
    require_external_id), or id_arg's."""
    if not value:
        return None
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument("FIELD_TOO_LONG", f"{field} is too long", metadata={"field": field})
    return value


def id_arg(value: str, field: str) -> str | None:
    """An id without a format of its own (userId, signature): bounded_id,
    and INVALID_CHARACTERS unless visible ASCII."""
    if bounded_id(value, field) is None:
        return None
    if not _ID.fullmatch(value):
        raise _invalid_characters(field, "visible ASCII characters")
    return value


def text_arg(value: str, field: str) -> str:
    """Text that will be kept or passed on: refused if it holds a NUL."""
    if "\x00" in value:
        raise _invalid_characters(field, "characters other than NUL")
    return value


def storable(value: Any) -> bool:
    """Whether an upstream's value can be kept as text: non-empty, no NUL.
    Values that cannot are left out, not refused: they are not the client's."""
    return isinstance(value, str) and bool(value) and "\x00" not in value


def require_str(data: Mapping[str, Any], key: str, *, max_len: int = 2048) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(
            "MISSING_FIELD", f"data.{key} is required and must be a string", metadata={"field": key}
        )
    if len(value) > max_len:
        raise InvalidArgument(
            "FIELD_TOO_LONG", f"data.{key} is longer than {max_len}", metadata={"field": key}
        )
    return text_arg(value, key)


def optional_str(data: Mapping[str, Any], key: str, *, max_len: int = 2048) -> str | None:
    if data.get(key) in (None, ""):
        return None
    return require_str(data, key, max_len=max_len)


def canonical_uuid(value: Any, *, field_name: str, reason: str) -> str:
    """Lowercase canonical form of a UUID, or INVALID_ARGUMENT `reason`."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or not _UUID.fullmatch(value):
        raise InvalidArgument(
            reason, f"{field_name} must be a UUID", metadata={"field": field_name}
        )
    return str(uuid.UUID(value))


def device_id_arg(req: Request, *, required: bool) -> str | None:
    """The call's deviceId (in `data` for body calls, a query parameter for
    the others), canonical, or None when absent and not required. The same
    rule and reasons for every provider: MISSING_DEVICE_ID, INVALID_DEVICE_ID."""
    raw: Any = req.data.get("deviceId")
    if raw in (None, ""):
        raw = req.device_id
    if raw in (None, ""):
        if required:
            raise InvalidArgument(
                "MISSING_DEVICE_ID", "deviceId is required", metadata={"field": "deviceId"}
            )
        return None
    return canonical_uuid(raw, field_name="deviceId", reason="INVALID_DEVICE_ID")


def require_device_id(req: Request) -> str:
    device_id = device_id_arg(req, required=True)
    assert device_id is not None
    return device_id


def require_external_id(req: Request) -> str:
    """The call's externalId (top level, or in `data`): 64 lowercase hex
    characters; MISSING_EXTERNAL_ID, INVALID_EXTERNAL_ID."""
    raw: Any = req.external_id or req.data.get("externalId")
    if not raw:
        raise InvalidArgument(
            "MISSING_EXTERNAL_ID", "externalId is required", metadata={"field": "externalId"}
        )
    if not isinstance(raw, str) or not _EXTERNAL_ID.fullmatch(raw):
        raise InvalidArgument(
            "INVALID_EXTERNAL_ID",
            "externalId must be 64 lowercase hex characters",
            metadata={"field": "externalId"},
        )
    return raw


def app_profile_arg(data: Mapping[str, Any]) -> JSON | None:
    """data.appProfile: a JSON object of at most 16 KiB (compact UTF-8 JSON)
    whose keys and strings hold no NUL, or None when absent. The same rule
    for every provider that stores one."""
    if data.get("appProfile") is None:
        return None
    profile = data["appProfile"]
    if not isinstance(profile, dict):
        raise InvalidArgument(
            "APP_PROFILE_NOT_OBJECT",
            "data.appProfile must be a JSON object",
            metadata={"field": "appProfile"},
        )
    size = len(json.dumps(profile, separators=(",", ":"), ensure_ascii=False).encode())
    if size > APP_PROFILE_MAX_BYTES:
        raise InvalidArgument(
            "APP_PROFILE_TOO_LARGE",
            f"data.appProfile is {size} bytes; the limit is {APP_PROFILE_MAX_BYTES}",
            metadata={"field": "appProfile", "limit": str(APP_PROFILE_MAX_BYTES)},
        )
    _no_nul_inside(profile, "appProfile")
    return profile


def _no_nul_inside(value: Any, field: str) -> None:
    # A loop, not recursion: the depth is the client's to choose.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            text_arg(item, field)
        elif isinstance(item, dict):
            for key, inner in item.items():
                text_arg(key, field)
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)
