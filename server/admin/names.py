"""Resource names (AIP-122): `projects/{project}`,
`projects/{project}/users/{user}`, `.../devices/{device}`,
`projects/{project}/webhooks/{webhook}`, `adminKeys/{key}`. Ids are checked
like every id of the public API (providers/kit/inputs.py), so a name can
never smuggle a character no id has."""

from __future__ import annotations

from dataclasses import dataclass

from providers.kit.inputs import canonical_uuid, id_arg
from providers.values import InvalidArgument


def _invalid(field: str, pattern: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_NAME", f"{field} must look like {pattern}", metadata={"field": field}
    )


def _parts(value: str, field: str, pattern: str) -> list[str]:
    literal = pattern.split("/")
    parts = value.split("/")
    if not value or len(parts) != len(literal):
        raise _invalid(field, pattern)
    for part, expected in zip(parts, literal, strict=True):
        if not part or (not expected.startswith("{") and part != expected):
            raise _invalid(field, pattern)
    return [p for p, e in zip(parts, literal, strict=True) if e.startswith("{")]


def _id(value: str, field: str) -> str:
    checked = id_arg(value, field)
    if checked is None:
        raise InvalidArgument("MISSING_FIELD", f"{field} is required", metadata={"field": field})
    return checked


def project_id(value: str, field: str = "projectId") -> str:
    """A projectId as the public API takes it (any UUID form, answered in
    the lowercase dashed one)."""
    return canonical_uuid(value, field_name=field, reason="INVALID_PROJECT_ID")


def project(value: str, field: str = "name") -> str:
    [pid] = _parts(value, field, "projects/{project}")
    return project_id(pid, field)


@dataclass(frozen=True)
class UserName:
    project_id: str
    user_id: str

    def __str__(self) -> str:
        return f"projects/{self.project_id}/users/{self.user_id}"


def user(value: str, field: str = "name") -> UserName:
    pid, uid = _parts(value, field, "projects/{project}/users/{user}")
    return UserName(project_id(pid, field), _id(uid, field))


@dataclass(frozen=True)
class DeviceName:
    user: UserName
    device_id: str


def device(value: str, field: str = "name") -> DeviceName:
    pid, uid, did = _parts(value, field, "projects/{project}/users/{user}/devices/{device}")
    return DeviceName(
        UserName(project_id(pid, field), _id(uid, field)),
        canonical_uuid(did, field_name=field, reason="INVALID_DEVICE_ID"),
    )


@dataclass(frozen=True)
class WebhookName:
    project_id: str
    webhook_id: str


def webhook(value: str, field: str = "name") -> WebhookName:
    pid, wid = _parts(value, field, "projects/{project}/webhooks/{webhook}")
    return WebhookName(project_id(pid, field), _id(wid, field))


def admin_key(value: str, field: str = "name") -> str:
    [kid] = _parts(value, field, "adminKeys/{key}")
    return _id(kid, field)
