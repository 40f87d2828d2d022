"""awsCognito: the email lifecycle of an AWS Cognito user pool.

Cognito owns passwords and attributes; this service owns users (keyed on
the pool's `sub`), devices, login history and revocation. Access tokens are
verified locally by the shared JWT verifier (issuer = the pool, audience =
the app client's `client_id` claim, `token_use` = access; verified tokens are
cached until they expire), and the store decides whether a verified token is
still welcome:

- logout sets the user's valid_after: every access token with an earlier
  `iat` is refused, and the presented token itself is refused by hash (it
  may have been minted in the same second);
- a refresh token is accepted only if this service recorded it as issued to
  the user since the user's last logout (see `_remember_refresh_token`). So
  "logout, then refresh with the old refresh token" fails here even where
  Cognito itself would still accept that refresh token.

Profile reads and checks serve our synced copy of the attributes and ask
Cognito's GetUser at most once per access token per `profileRefreshSeconds`
in each process (see sync.py), and right after our own writes; the local
verification and the revocation checks above run on every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import Provider, ProviderContext
from providers.cognito import errors as op
from providers.cognito import settings as cognito_settings
from providers.cognito.api import CognitoApi
from providers.cognito.profile import (
    attributes_of,
    email_of,
    profile_data,
    stored_attributes,
    writable_attributes,
)
from providers.cognito.settings import CognitoSettings
from providers.cognito.sync import SyncMarks, mark_key
from providers.kit.inputs import device_id_arg, require_device_id, require_str
from providers.kit.jwt import Claims, JwtVerifier, require_claim
from providers.kit.settings import SettingsReader
from providers.kit.tokens import data_token, refuse_if_revoked, require_bearer, token_revoked
from providers.values import (
    Action,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reply,
    Request,
    Session,
    Unauthenticated,
    Unavailable,
    UpstreamTokens,
    User,
)

# Cognito's own bound on passwords.
MAX_PASSWORD_LEN = 256
MAX_CODE_LEN = 2048
# The refusals that are a wrong credential, counted by the lockout (an
# unknown email answers the same, so it is counted the same).
_WRONG_PASSWORD = frozenset({"INVALID_CREDENTIALS"})
# Cognito says "expired" for a code that is not the current one, too.
_WRONG_CODE = frozenset({"INVALID_CODE", "EXPIRED_CODE"})
# Fields of `data` that are not Cognito attributes.
_REGISTER_FIELDS = ("email", "password", "deviceId")
_UPDATE_FIELDS = ("deviceId",)

# A user as GetUser (or our synced copy of it) shows them: the user, Cognito's
# username and the attributes.
_Profile = tuple[User, str, dict[str, str]]


@dataclass(frozen=True)
class _Tokens:
    access: str
    refresh: str | None


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    # Cognito's username: the one SECRET_HASH and USERNAME take. With email
    # as the pool's sign-in attribute it is a UUID, not the email.
    username: str
    iat: int
    exp: int

    @classmethod
    def of(cls, claims: Claims) -> AccessClaims:
        return cls(
            sub=claims["sub"],
            username=require_claim(claims, "username"),
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
        )


class CognitoProvider(Provider[CognitoSettings]):
    name = "awsCognito"
    strategies = ("email",)

    def __init__(self, settings: CognitoSettings, ctx: ProviderContext) -> None:
        super().__init__(settings, ctx)
        self._api = CognitoApi(settings, ctx)
        self._verifier = JwtVerifier(settings.verifier, ctx.http, now=ctx.now)
        self._synced: SyncMarks[_Profile] = SyncMarks(settings.profile_refresh)

    @classmethod
    def read_settings(cls, s: SettingsReader) -> CognitoSettings:
        return cognito_settings.read(s)

    async def aclose(self) -> None:
        await self._api.aclose()

    async def _verify(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        return AccessClaims.of(await self._verifier.verify(token, allow_expired=allow_expired))

    # ------------------------------------------------------------ register
    async def create_user(self, req: Request) -> Reply:
        email = email_of(req.data)
        password = require_str(req.data, "password", max_len=MAX_PASSWORD_LEN)
        attributes = writable_attributes(req.data, skip=_REGISTER_FIELDS)
        attributes["email"] = email
        await self.ctx.abuse.admit(Action.SIGN_UP, req)
        reply = await self._api.call(
            op.REGISTER,
            "sign_up",
            **self._client_params(email),
            Username=email,
            Password=password,
            UserAttributes=[{"Name": k, "Value": v} for k, v in attributes.items()],
        )
        sub = reply.get("UserSub")
        if not isinstance(sub, str) or not sub:
            raise _bad_reply()
        confirmed = bool(reply.get("UserConfirmed"))
        if self.settings.auto_confirm and not confirmed:
            await self._api.call(
                op.CONFIRM_SIGN_UP,
                "admin_confirm_sign_up",
                UserPoolId=self.settings.user_pool_id,
                Username=email,
            )
            confirmed = True
        user, _ = await self.ctx.accounts.ensure_user(sub, attributes=attributes)
        return Reply(
            message="User is Correctly Created",
            data={
                "email": email,
                "userId": user.user_id,
                "externalId": user.external_id,
                "projectId": req.project.id,
                "userConfirmed": confirmed,
            },
        )

    # ------------------------------------------------------------- sessions
    async def login(self, req: Request) -> Session:
        email = email_of(req.data)
        password = require_str(req.data, "password", max_len=MAX_PASSWORD_LEN)
        device_id = device_id_arg(req, required=False)
        await self.ctx.abuse.admit(Action.PASSWORD_LOGIN, req)
        tokens = await self.ctx.abuse.credential_check(
            email,
            lambda: self._password_auth(op.LOGIN, email, password),
            failures=_WRONG_PASSWORD,
        )
        return await self._start_session(tokens, device_id)

    async def link(self, req: Request) -> Reply | Session:
        # The credential as on the provider's own calls: a password login,
        # or the access token of one (GET /user).
        if req.bearer and "email" not in req.data:
            return await self.get_user(req)
        return await self.login(req)

    async def change_password(self, req: Request) -> Session:
        # The request first: authenticating may write (a user first seen).
        proposed = require_str(req.data, "password", max_len=MAX_PASSWORD_LEN)
        previous = require_str(req.data, "previousPassword", max_len=MAX_PASSWORD_LEN)
        device_id = device_id_arg(req, required=False)
        token, claims, user = await self._authenticate(req)
        # A stolen session guessing the password counts against the same
        # account as password logins (its email, as the user signs in with it).
        await self.ctx.abuse.credential_check(
            str(user.attributes.get("email") or claims.username),
            lambda: self._api.call(
                op.CHANGE_PASSWORD,
                "change_password",
                AccessToken=token,
                PreviousPassword=previous,
                ProposedPassword=proposed,
            ),
            failures=_WRONG_PASSWORD,
        )
        # A fresh session with the new password. The token's `username` claim
        # is Cognito's username (a UUID in email-as-username pools), which
        # USERNAME and SECRET_HASH accept where the email may not be known.
        tokens = await self._password_auth(op.REAUTHENTICATE, claims.username, proposed)
        return await self._start_session(tokens, device_id)

    async def refresh_session(self, req: Request) -> Session:
        refresh = req.refresh_token or data_token(req.data, "refreshToken")
        if not refresh:
            raise InvalidArgument(
                "MISSING_FIELD", "refreshToken is required", metadata={"field": "refreshToken"}
            )
        device_id = device_id_arg(req, required=False)
        if await self.ctx.accounts.is_token_revoked(refresh):
            raise _refresh_revoked()
        # The access token being replaced (expired or not) says whose refresh
        # this is: SECRET_HASH must be computed over Cognito's username, and
        # the refresh token itself is opaque.
        previous = await self._verify(req.bearer, allow_expired=True) if req.bearer else None
        params = {"REFRESH_TOKEN": refresh}
        if self.settings.client_secret is not None:
            if previous is None:
                raise Unauthenticated(
                    "MISSING_BEARER_TOKEN",
                    "this project's app client has a secret: send the last access token"
                    " (expired is fine) as 'Authorization: Bearer' with the refresh",
                )
            params["SECRET_HASH"] = self._api.secret_hash(previous.username) or ""
        reply = await self._api.call(
            op.REFRESH,
            "initiate_auth",
            ClientId=self.settings.client_id,
            AuthFlow="REFRESH_TOKEN_AUTH",
            AuthParameters=params,
        )
        tokens = _tokens_of(reply)
        claims = await self._verify(tokens.access)
        if previous is not None and previous.sub != claims.sub:
            raise Unauthenticated(
                "INVALID_REFRESH_TOKEN",
                "the refresh token belongs to another user than the access token",
            )
        user = await self.ctx.accounts.find_user(claims.sub)
        if user is None or not await self._refresh_token_is_current(refresh, user):
            raise _refresh_revoked()
        # Pools with refresh-token rotation hand out a new one; others keep it.
        current = tokens.refresh or refresh
        if current != refresh:
            await self._remember_refresh_token(current, user)
        return await self.ctx.accounts.sign_in(
            user, device_id=device_id, upstream=UpstreamTokens(tokens.access, current)
        )

    async def logout(self, req: Request) -> Reply:
        refresh = data_token(req.data, "refreshToken")
        token, claims, user = await self._authenticate(req)
        try:
            await self._api.call(op.LOGOUT, "global_sign_out", AccessToken=token)
        except Unauthenticated:
            # Cognito already refuses this session; ours is ended below all the same.
            pass
        now = self.ctx.now()
        await self.ctx.accounts.revoke_sessions(user, before=now)
        # Same-second tokens pass the `iat < valid_after` test; this one must not.
        await self.ctx.accounts.revoke_token(token, expires_at=claims.exp)
        if refresh:
            await self.ctx.accounts.revoke_token(
                refresh, expires_at=now + self.settings.refresh_token_validity
            )
        return Reply(message="user logged out", data={})

    # -------------------------------------------------------------- profile
    async def get_user(self, req: Request) -> Reply:
        token, claims, user = await self._authenticate(req)
        user, username, attributes = await self._profile(token, claims, user)
        view = await self.ctx.accounts.profile(user)
        return Reply(
            message="OK", data=profile_data(view, username=username, attributes=attributes)
        )

    async def check_user(self, req: Request) -> Reply:
        device_id = require_device_id(req)
        token, claims, user = await self._authenticate(req)
        # Cognito's answer (or our copy, within the window) first: a token it
        # refuses must not count as a login.
        user, username, attributes = await self._profile(token, claims, user)
        await self.ctx.accounts.record_login(user, device_id)
        view = await self.ctx.accounts.profile(user)
        return Reply(
            message="OK", data=profile_data(view, username=username, attributes=attributes)
        )

    async def update_user(self, req: Request) -> Reply:
        attributes = writable_attributes(req.data, skip=_UPDATE_FIELDS)
        if not attributes:
            raise InvalidArgument(
                "NO_ATTRIBUTES", "data must carry at least one attribute to update"
            )
        if "email" in attributes:
            email_of(attributes)
        token, claims, user = await self._authenticate(req)
        await self._api.call(
            op.UPDATE_USER,
            "update_user_attributes",
            AccessToken=token,
            UserAttributes=[{"Name": k, "Value": v} for k, v in attributes.items()],
        )
        # GetUser rather than our copy merged with the request: Cognito may
        # change more than was written (a new email is unverified, or stays
        # pending until verified). Our copy is then fresh for this token.
        user, username, fresh = await self._fresh_profile(token, claims, user)
        self._synced.mark(mark_key(user.user_id, token))
        return Reply(
            message="User is Correctly Updated",
            data={
                "email": fresh.get("email", ""),
                "username": username,
                "externalId": user.external_id,
                "projectId": req.project.id,
            },
        )

    # ------------------------------------------------------ password reset
    async def forgot_password(self, req: Request) -> Reply:
        email = email_of(req.data)
        try:
            await self._api.call(
                op.FORGOT_PASSWORD, "forgot_password", **self._client_params(email), Username=email
            )
        except NotFound:
            # Same answer as for a known email: this endpoint must not tell
            # who has an account.
            pass
        return Reply(message="please check your email", data={})

    async def confirm_forgot_password(self, req: Request) -> Reply:
        email = email_of(req.data)
        code = require_str(req.data, "confirmationCode", max_len=MAX_CODE_LEN)
        password = require_str(req.data, "password", max_len=MAX_PASSWORD_LEN)
        await self.ctx.abuse.credential_check(
            email,
            lambda: self._api.call(
                op.CONFIRM_FORGOT_PASSWORD,
                "confirm_forgot_password",
                **self._client_params(email),
                Username=email,
                ConfirmationCode=code,
                Password=password,
            ),
            failures=_WRONG_CODE,
        )
        return Reply(message="password has been reset", data={})

    # ------------------------------------------------------------- erasure
    async def delete_account(self, user: User) -> None:
        # Cognito's username, learnt at the first sign-in. A user who signed
        # up here and never signed in has none yet: sign-up sent the email as
        # the username, which is the username (plain pools) or an alias
        # (email-as-username pools). The sub is the last resort AWS accepts.
        email = user.attributes.get("email")
        username = user.username or (email if isinstance(email, str) and email else user.subject)
        try:
            await self._api.call(
                op.DELETE_ACCOUNT,
                "admin_delete_user",
                UserPoolId=self.settings.user_pool_id,
                Username=username,
            )
        except NotFound:
            pass  # deleted in the console, or by an earlier erasure that failed after it

    # -------------------------------------------------------------- helpers
    def _client_params(self, username: str) -> dict[str, str]:
        params = {"ClientId": self.settings.client_id}
        secret_hash = self._api.secret_hash(username)
        if secret_hash is not None:
            params["SecretHash"] = secret_hash
        return params

    async def _password_auth(self, operation: str, username: str, password: str) -> _Tokens:
        params = {"USERNAME": username, "PASSWORD": password}
        secret_hash = self._api.secret_hash(username)
        if secret_hash is not None:
            params["SECRET_HASH"] = secret_hash
        reply = await self._api.call(
            operation,
            "initiate_auth",
            ClientId=self.settings.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters=params,
        )
        return _tokens_of(reply)

    async def _start_session(self, tokens: _Tokens, device_id: str | None) -> Session:
        claims = await self._verify(tokens.access)
        username, attributes = await self._cognito_user(tokens.access, claims)
        user, created = await self.ctx.accounts.ensure_user(
            claims.sub, attributes=attributes, username=username
        )
        if not created:
            user = await self._sync(user, username, attributes)
        # The new token's GetUser just ran: reads with it start from this copy.
        self._synced.mark(mark_key(user.user_id, tokens.access))
        if tokens.refresh:
            await self._remember_refresh_token(tokens.refresh, user)
        return await self.ctx.accounts.sign_in(
            user, device_id=device_id, upstream=UpstreamTokens(tokens.access, tokens.refresh)
        )

    async def _authenticate(self, req: Request) -> tuple[str, AccessClaims, User]:
        """The bearer token, its claims and its user, or Unauthenticated.
        Creates the user when first seen: check the request before."""
        token = require_bearer(req)
        claims = await self._verify(token)
        user = await self.ctx.accounts.find_user(claims.sub)
        if user is None:
            # Signed up or signed in elsewhere (console, hosted UI): still ours.
            user, _ = await self.ctx.accounts.ensure_user(claims.sub, username=claims.username)
        refuse_if_revoked(user, claims.iat)
        # Same-second tokens pass the rule above; logout refused this one by hash.
        if await self.ctx.accounts.is_token_revoked(token):
            raise token_revoked()
        return token, claims, user

    async def _profile(self, token: str, claims: AccessClaims, user: User) -> _Profile:
        """Our copy while this token's last GetUser is younger than
        profileRefreshSeconds; else GetUser, shared by the token's calls that
        arrive while it runs. `user` was just read, so a write through any
        process (UpdateUser, a sync) shows at once."""
        key = mark_key(user.user_id, token)
        if self._synced.fresh(key):
            username = user.username or claims.username
            return user, username, stored_attributes(user.attributes)
        return await self._synced.ask(key, lambda: self._fresh_profile(token, claims, user))

    async def _fresh_profile(self, token: str, claims: AccessClaims, user: User) -> _Profile:
        """GetUser, and our copy of the attributes brought up to date."""
        username, attributes = await self._cognito_user(token, claims)
        return await self._sync(user, username, attributes), username, attributes

    async def _cognito_user(self, token: str, claims: AccessClaims) -> tuple[str, dict[str, str]]:
        reply = await self._api.call(op.GET_USER, "get_user", AccessToken=token)
        username = reply.get("Username")
        if not isinstance(username, str) or not username:
            username = claims.username
        return username, attributes_of(reply)

    async def _sync(self, user: User, username: str, attributes: dict[str, str]) -> User:
        if user.attributes == attributes and user.username == username:
            return user
        return await self.ctx.accounts.update_user(
            user, attributes=attributes, merge_attributes=False, username=username
        )

    # Refresh tokens are opaque, and a logout cannot list the ones issued
    # before it. So each one this service hands out is recorded together with
    # the user's logout epoch (valid_after) at that time; a logout moves the
    # epoch, and every earlier record stops matching.
    def _refresh_marker(self, refresh: str, user: User) -> str:
        return f"{self.name}:refresh-issued:{user.user_id}:{user.valid_after}:{refresh}"

    async def _remember_refresh_token(self, refresh: str, user: User) -> None:
        await self.ctx.accounts.remember_token(
            self._refresh_marker(refresh, user),
            expires_at=self.ctx.now() + self.settings.refresh_token_validity,
        )

    async def _refresh_token_is_current(self, refresh: str, user: User) -> bool:
        return await self.ctx.accounts.is_token_remembered(self._refresh_marker(refresh, user))


def _tokens_of(reply: Mapping[str, Any]) -> _Tokens:
    result = reply.get("AuthenticationResult")
    if not isinstance(result, Mapping):
        challenge = reply.get("ChallengeName")
        raise FailedPrecondition(
            "CHALLENGE_REQUIRED",
            "the user pool asks for a step this API does not support (MFA or a new password)",
            metadata={"provider": "awsCognito", "challenge": str(challenge or "UNKNOWN")[:64]},
        )
    access, refresh = result.get("AccessToken"), result.get("RefreshToken")
    if not isinstance(access, str) or not access:
        raise _bad_reply()
    return _Tokens(access=access, refresh=refresh if isinstance(refresh, str) and refresh else None)


def _refresh_revoked() -> Unauthenticated:
    return Unauthenticated(
        "REFRESH_TOKEN_REVOKED",
        "this refresh token was issued before the last logout, or not by this service;"
        " sign in again",
        metadata={"provider": "awsCognito"},
    )


def _bad_reply() -> Unavailable:
    return Unavailable(
        "UPSTREAM_BAD_RESPONSE",
        "Cognito answered in an unexpected way; try again later",
        metadata={"provider": "awsCognito"},
        retry_after=1.0,
    )
