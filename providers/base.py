"""The plug-in contract: what a provider is and what the core hands it.

A provider subclasses `Provider`, declares its settings in `read_settings`,
returns domain values (`Reply`, `Session`) or raises domain errors
(providers/values.py), and sees the store and the token helpers only through
`ProviderContext` and `Accounts` below, never through `server.*` imports.

What a plug-in needs besides the contract is re-exported here, so a
third-party package imports one module; the kit (providers/kit/) has the
rest (HTTP helpers, the JWT verifier, the social base).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import httpx

from providers.kit.inputs import (
    app_profile_arg,
    canonical_uuid,
    device_id_arg,
    optional_str,
    require_device_id,
    require_external_id,
    require_str,
)
from providers.kit.settings import SettingsError, SettingsReader
from providers.kit.tokens import require_bearer
from providers.values import (
    JSON,
    Action,
    AlreadyExists,
    Device,
    FailedPrecondition,
    Identity,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    ProfileView,
    Project,
    ProviderError,
    Reply,
    Request,
    ResourceExhausted,
    Session,
    Unauthenticated,
    Unavailable,
    UpstreamTokens,
    User,
)

__all__ = [
    "JSON",
    "Abuse",
    "Accounts",
    "Action",
    "AlreadyExists",
    "Device",
    "FailedPrecondition",
    "Identity",
    "InvalidArgument",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "ProfileView",
    "Project",
    "Provider",
    "ProviderContext",
    "ProviderError",
    "Reply",
    "Request",
    "ResourceExhausted",
    "Session",
    "SettingsError",
    "SettingsReader",
    "Unauthenticated",
    "Unavailable",
    "UpstreamTokens",
    "User",
    "app_profile_arg",
    "canonical_uuid",
    "device_id_arg",
    "optional_str",
    "require_bearer",
    "require_device_id",
    "require_external_id",
    "require_str",
]

S = TypeVar("S")
T = TypeVar("T")


class Accounts(Protocol):
    """Users and devices of one project and one provider. Every method is
    scoped: nothing here can reach another project's rows."""

    def external_id(self, subject: str) -> str: ...

    async def ensure_user(
        self,
        subject: str,
        *,
        attributes: JSON | None = None,
        username: str | None = None,
        app_profile: JSON | None = None,
    ) -> tuple[User, bool]:
        """Find or create the user for `subject`; True when it was created.
        A new user is written in one statement with the given `attributes`,
        `username` and `app_profile`; an existing one is returned unchanged.
        Safe under concurrency: racing callers get the same user."""
        ...

    async def find_user(self, subject: str) -> User | None:
        """The user `subject` signs in as. During an upgrade (Provider.link)
        this may raise AlreadyExists IDENTITY_ALREADY_LINKED, or merge the
        anonymous user into the one found; providers need do nothing."""
        ...

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

    async def identities(self, user: User) -> Sequence[Identity]:
        """Every identity of the user (this provider's and others'), oldest
        first: an anonymous user upgraded to a permanent account has two."""
        ...

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


class Abuse(Protocol):
    """Abuse protection, for the calls that create accounts or check
    credentials (and only those: other calls pay nothing for it)."""

    async def admit(self, action: Action, req: Request) -> None:
        """Count one `action` for the project and the caller's IP; raises
        ResourceExhausted RATE_LIMITED (with RetryInfo) past a limit."""
        ...

    async def credential_check(
        self, account: str, check: Callable[[], Awaitable[T]], *, failures: Collection[str]
    ) -> T:
        """Run `check`, a credential check against `account` (an email, say),
        unless the account is locked (ResourceExhausted
        TOO_MANY_FAILED_ATTEMPTS). A domain error whose reason is in
        `failures` counts as one failure; success forgets the count. Accounts
        that do not exist lock the same way, so the answer reveals nothing."""
        ...


class ProviderContext(Protocol):
    accounts: Accounts
    abuse: Abuse
    # Shared pooled client; providers set per-call timeouts.
    http: httpx.AsyncClient

    def now(self) -> int:
        """Unix seconds."""
        ...

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (boto3) off the event loop."""
        ...

    def mint_profile_token(self, user: User, *, device_id: str | None = None) -> str: ...


class Provider(Generic[S]):
    """Base class for identity providers, generic over the provider's parsed
    settings. Override what the provider supports; everything else answers
    INVALID_ARGUMENT with reason OPERATION_NOT_SUPPORTED: the client asked a
    provider for what it does not offer, which is the request's fault, not
    an outage (no input a client can send gives a 5xx).

    One instance exists per (project, provider settings); it may keep caches
    (JWKS, clients) and must be safe for concurrent calls.
    """

    # The provider's name as written in the API and the config (`awsCognito`).
    name: ClassVar[str] = ""
    # Strategies this provider accepts; the first is used when none is sent.
    strategies: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: S, ctx: ProviderContext) -> None:
        self.settings = settings
        self.ctx = ctx

    @classmethod
    def read_settings(cls, s: SettingsReader) -> S:
        """Declare the provider's settings by reading each of them once, and
        return them parsed (a frozen dataclass, say). Keys not read here are
        refused by name. The default: a provider without settings."""
        return cast(S, None)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> S:
        """THE parse of a settings block: the typed settings, or ValueError
        (SettingsError) naming the bad setting. Called when the config is
        loaded, so mistakes stop the start, and again when an instance is
        built, whose settings are what it returns."""
        reader = SettingsReader(settings, owner=cls.name)
        parsed = cls.read_settings(reader)
        reader.finish()
        return parsed

    async def aclose(self) -> None:
        """Release what the instance holds (clients, tasks)."""

    def _unsupported(self, what: str) -> InvalidArgument:
        return InvalidArgument(
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

    async def link(self, req: Request) -> Reply | Session:
        """Sign the caller in with this provider's own credential, as the
        provider's usual call would (a login, a token read), for linking that
        identity to an anonymous user (POST /v1/user:link, :merge). The core
        decides whose the identity becomes; the provider only checks the
        credential exactly as it always does. Default: not linkable."""
        raise self._unsupported("linking to an anonymous user")

    async def delete_account(self, user: User) -> None:
        """Delete `user`'s account at the upstream identity provider (the
        admin API's erasure with delete_upstream). Called before our rows
        are erased, and only they depend on it: raise a domain error and
        nothing of ours is erased. An account already gone upstream counts
        as deleted (return normally), so a retried erasure completes."""
        raise self._unsupported("deleting the account upstream")
