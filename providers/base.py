"""What a provider is, what it may raise, and what the core hands it.

Providers return domain values (`Reply`, `Session`) or raise `ProviderError`
subclasses; they never build gRPC replies or statuses. The server maps each
error class to one canonical status in one place (server/errors.py).

A provider sees the store and the token helpers only through `ProviderContext`
and `Accounts` below, never through `server.*` imports.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import httpx

JSON = dict[str, Any]
T = TypeVar("T")


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


@dataclass(frozen=True)
class User:
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
class ProfileView:
    user: User
    devices: Sequence[Device]
    # Unix seconds of the most recent logins, oldest first (at most 50).
    login_history: Sequence[int]

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


# --------------------------------------------------------------------------
# What the core offers a provider.
# --------------------------------------------------------------------------
class Accounts(Protocol):
    """Users and devices of one project and one provider. Every method is
    scoped: nothing here can reach another project's rows."""

    def external_id(self, subject: str) -> str: ...

    async def ensure_user(
        self, subject: str, *, attributes: JSON | None = None, username: str | None = None
    ) -> tuple[User, bool]:
        """Find or create the user for `subject`; True when it was created.
        Safe under concurrency: racing callers get the same user."""
        ...

    async def find_user(self, subject: str) -> User | None: ...

    async def find_by_external_id(self, external_id: str) -> User | None: ...

    async def find_by_user_id(self, user_id: str) -> User | None: ...

    async def sign_in(
        self,
        user: User,
        *,
        device_id: str | None,
        upstream: UpstreamTokens | None = None,
    ) -> Session:
        """Record the device and the login, and mint the session (signature,
        profileToken). A missing device_id gets a fresh UUID."""
        ...

    async def record_login(self, user: User, device_id: str) -> Device:
        """Record the device and a login without minting a session (check)."""
        ...

    async def profile(self, user: User) -> ProfileView: ...

    async def update_user(
        self,
        user: User,
        *,
        attributes: JSON | None = None,
        merge_attributes: bool = True,
        app_profile: JSON | None = None,
        username: str | None = None,
    ) -> User:
        """Atomic update; only the arguments given are written."""
        ...

    async def revoke_sessions(self, user: User, *, before: int) -> User:
        """Refuse every token of this user issued before `before` (Unix s)."""
        ...

    async def revoke_token(self, token: str, *, expires_at: int) -> None:
        """Refuse this exact opaque token (e.g. a refresh token) until it
        would have expired anyway. Stored as a hash, never in clear."""
        ...

    async def is_token_revoked(self, token: str) -> bool: ...

    async def remember_token(self, token: str, *, expires_at: int) -> None:
        """Record that we handed out this opaque token (e.g. a refresh token,
        possibly bound to other values in the string), until `expires_at`.
        Stored as a hash."""
        ...

    async def is_token_remembered(self, token: str) -> bool: ...


class ProviderContext(Protocol):
    accounts: Accounts
    # Shared pooled client; providers set per-call timeouts.
    http: httpx.AsyncClient

    def now(self) -> int:
        """Unix seconds."""
        ...

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (boto3) off the event loop."""
        ...

    def mint_profile_token(self, user: User, *, device_id: str | None = None) -> str: ...


ProviderFactory = Callable[[Mapping[str, Any], ProviderContext], "Provider"]


class Provider:
    """Base class for identity providers. Override what the provider supports;
    everything else answers UNIMPLEMENTED with reason OPERATION_NOT_SUPPORTED.

    One instance exists per (project, provider settings); it may keep caches
    (JWKS, clients) and must be safe for concurrent calls.
    """

    # The provider's name as written in the API and the config (`awsCognito`).
    name: ClassVar[str] = ""
    # Strategies this provider accepts; the first is used when none is sent.
    strategies: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Mapping[str, Any], ctx: ProviderContext) -> None:
        self.settings = settings
        self.ctx = ctx

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise ValueError with a readable message if settings are wrong.
        Called when the config is loaded, so mistakes stop the start."""

    async def aclose(self) -> None:
        """Release what the instance holds (clients, tasks)."""

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(
            "OPERATION_NOT_SUPPORTED",
            f"provider {self.name} does not support {what}",
            metadata={"provider": self.name, "operation": what},
        )

    async def create_user(self, req: Request) -> Reply:
        raise self._unsupported("register")

    async def get_user(self, req: Request) -> Reply:
        raise self._unsupported("get user")

    async def update_user(self, req: Request) -> Reply:
        raise self._unsupported("update user")

    async def login(self, req: Request) -> Session:
        raise self._unsupported("login")

    async def check_user(self, req: Request) -> Reply:
        raise self._unsupported("check user")

    async def check_user_nonstandard(self, req: Request) -> Reply:
        raise self._unsupported("check user (non standard)")

    async def change_password(self, req: Request) -> Session:
        raise self._unsupported("change password")

    async def forgot_password(self, req: Request) -> Reply:
        raise self._unsupported("forgot password")

    async def confirm_forgot_password(self, req: Request) -> Reply:
        raise self._unsupported("confirm forgot password")

    async def refresh_session(self, req: Request) -> Session:
        raise self._unsupported("refresh")

    async def logout(self, req: Request) -> Reply:
        raise self._unsupported("logout")


# --------------------------------------------------------------------------
# Small shared checks providers use on their input.
# --------------------------------------------------------------------------
def require_bearer(req: Request) -> str:
    if not req.bearer:
        raise Unauthenticated(
            "MISSING_BEARER_TOKEN", "an Authorization: Bearer <token> header is required"
        )
    return req.bearer


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


def canonical_uuid(value: str, *, field_name: str, reason: str = "INVALID_UUID") -> str:
    """Lowercase canonical form of a UUID, or INVALID_ARGUMENT."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(
            reason, f"{field_name} must be a UUID", metadata={"field": field_name}
        ) from None


APP_PROFILE_MAX_BYTES = 16 * 1024


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


async def guarded(awaitable: Awaitable[T]) -> T:
    """Await an upstream call, turning transport failures into UNAVAILABLE."""
    try:
        return await awaitable
    except httpx.TimeoutException:
        raise Unavailable(
            "UPSTREAM_TIMEOUT", "the identity provider did not answer in time", retry_after=1.0
        ) from None
    except httpx.TransportError:
        raise Unavailable(
            "UPSTREAM_UNAVAILABLE", "the identity provider cannot be reached", retry_after=1.0
        ) from None
