"""The values providers and the core hand each other, and the domain errors.

Providers return these values or raise these errors; they never build gRPC
replies or statuses. `server/errors.py` turns each error class into one
canonical status (AIP-193), in one place. The store and the core import
values from here, not the plug-in contract (providers/base.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

JSON = dict[str, Any]


# --------------------------------------------------------------------------
# Domain errors. `code` is a grpc.StatusCode name; `reason` is the stable
# UPPER_SNAKE_CASE ErrorInfo reason clients branch on; `message` is for humans
# and must never carry upstream error text, tokens or secrets.
# --------------------------------------------------------------------------
class ProviderError(Exception):
    code: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after


class InvalidArgument(ProviderError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(ProviderError):
    code = "FAILED_PRECONDITION"


class NotFound(ProviderError):
    code = "NOT_FOUND"


class AlreadyExists(ProviderError):
    code = "ALREADY_EXISTS"


class Unauthenticated(ProviderError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ProviderError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(ProviderError):
    """Throttled; set `retry_after` (seconds) so clients get RetryInfo."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ProviderError):
    """The upstream identity provider or the store cannot be reached."""

    code = "UNAVAILABLE"


class NotSupported(ProviderError):
    code = "UNIMPLEMENTED"


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    id: str
    name: str


@dataclass(frozen=True)
class Request:
    """One call as the provider sees it, already validated for the common
    fields (project exists, provider enabled, strategy fits)."""

    project: Project
    provider: str
    strategy: str
    data: JSON = field(default_factory=dict)
    # The raw bearer token from the Authorization header, if any.
    bearer: str | None = None
    device_id: str | None = None
    external_id: str | None = None
    user_id: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    request_id: str = ""
    # The client's IP as the edge decided it (behind trusted proxies), or the
    # gRPC peer's for direct callers; what per-IP limits count.
    client_ip: str = ""


@dataclass(frozen=True)
class User:
    """A user as one of its identities found it: `provider`, `subject` and
    `external_id` are that identity's (a user may hold several, e.g. an
    anonymous device and the permanent account it was upgraded to)."""

    user_id: str
    project_id: str
    provider: str
    subject: str
    external_id: str
    created_at: int
    updated_at: int
    username: str | None = None
    attributes: JSON = field(default_factory=dict)
    app_profile: JSON | None = None
    # Tokens issued (iat) before this Unix time are refused (logout).
    valid_after: int = 0


@dataclass(frozen=True)
class Device:
    device_id: str
    sign_up: int
    last_login: int
    time_stamp: int
    signature: str


@dataclass(frozen=True)
class Identity:
    """One way a user signs in: a provider and that provider's id for them."""

    provider: str
    subject: str
    external_id: str
    # Unix seconds: when it became this user's (its sign-up, or the link).
    linked_at: int
    # What this provider says of the person (not shown to clients here).
    attributes: JSON = field(default_factory=dict)

    def json(self) -> JSON:
        # The subject stays ours: externalId names the identity to clients.
        return {
            "provider": self.provider,
            "externalId": self.external_id,
            "linkedAt": self.linked_at,
        }


@dataclass(frozen=True)
class ProfileView:
    user: User
    devices: Sequence[Device]
    # Unix seconds of the most recent logins, oldest first (at most 50).
    login_history: Sequence[int]
    # Every identity of the user, oldest first.
    identities: Sequence[Identity] = ()

    def identities_json(self) -> list[JSON]:
        return [identity.json() for identity in self.identities]

    def devices_json(self) -> list[JSON]:
        return [
            {
                "deviceId": d.device_id,
                "lastLogin": d.last_login,
                "signUp": d.sign_up,
                "userId": self.user.user_id,
                "timeStamp": d.time_stamp,
                "signature": d.signature,
            }
            for d in self.devices
        ]


@dataclass(frozen=True)
class UpstreamTokens:
    access_token: str | None = None
    refresh_token: str | None = None


@dataclass(frozen=True)
class Session:
    device_id: str
    time_stamp: int
    signature: str
    external_id: str
    user_id: str
    sign_up: int
    profile_token: str
    access_token: str | None = None
    refresh_token: str | None = None


@dataclass(frozen=True)
class Reply:
    """What a non-session call returns. `data` becomes the envelope's `data`.

    `flat=True` asks for the flat noLogin shape instead: strategy, provider,
    projectId, externalId, appProfile beside result/message, no `data`."""

    message: str = "OK"
    data: JSON | None = None
    flat: bool = False
    external_id: str | None = None
    app_profile: JSON | None = None


class Action(StrEnum):
    """What abuse protection counts; the keys of a project's `limits:`."""

    # A new account without credentials: an anonymous device, a noLogin user.
    ANONYMOUS_SIGN_UP = "anonymousSignUp"
    # A new account with credentials (awsCognito registration).
    SIGN_UP = "signUp"
    PASSWORD_LOGIN = "passwordLogin"
    SOCIAL_CHECK = "socialCheck"
