"""Checks on what a client sends in a request, one rule per field kind.

Each refusal is INVALID_ARGUMENT with a reason clients can branch on and the
field's name in the metadata."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from providers.values import JSON, InvalidArgument, Request

APP_PROFILE_MAX_BYTES = 16 * 1024


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
    return value


def optional_str(data: Mapping[str, Any], key: str, *, max_len: int = 2048) -> str | None:
    if data.get(key) in (None, ""):
        return None
    return require_str(data, key, max_len=max_len)


def canonical_uuid(value: Any, *, field_name: str, reason: str) -> str:
    """Lowercase canonical form of a UUID, or INVALID_ARGUMENT `reason`."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(
            reason, f"{field_name} must be a UUID", metadata={"field": field_name}
        ) from None


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


def app_profile_arg(data: Mapping[str, Any]) -> JSON | None:
    """data.appProfile: a JSON object of at most 16 KiB (compact UTF-8 JSON),
    or None when absent. The same rule for every provider that stores one."""
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
    return profile
