"""The store as a provider sees it: users and devices of one project and one
provider (the `Accounts` protocol of providers/base.py). Each write that
changes a user records its audit event in the same transaction."""

from __future__ import annotations

import uuid
from typing import Any

from providers.values import JSON, Device, Identity, ProfileView, Session, UpstreamTokens, User
from server import tokens
from server.clock import now
from server.events import calls
from server.events.audit import AuditEvent
from server.events.types import USER_CREATED, USER_LINKED, USER_MERGED, USER_UPDATED
from server.keys import KeyStore
from server.requestctx import call_var
from server.store import identities as links
from server.store import repo
from server.store.db import Database
from server.store.hot import HotRows, activity
from server.store.schema import issued_tokens, revoked_tokens
from server.upgrade import LINK, Upgrade, upgrade_var

_FIELD_NAMES = {"app_profile": "appProfile"}
# The calls that only read the user, so may be answered from the hot rows.
READ_ONLY_RPCS = frozenset({"GetUser"})


class ScopedAccounts:
    def __init__(
        self,
        database: Database,
        *,
        project_id: str,
        provider: str,
        secret: str,
        keys: KeyStore,
        hot: HotRows | None = None,
    ) -> None:
        self._database = database
        self._project_id = project_id
        self._provider = provider
        self._secret = secret
        self._keys = keys
        # Shared by every project's accounts in this process (server/store/hot.py).
        self._hot = hot if hot is not None else HotRows(0)

    def external_id(self, subject: str) -> str:
        return tokens.external_id(self._secret, self._provider, subject)

    async def ensure_user(
        self,
        subject: str,
        *,
        attributes: JSON | None = None,
        username: str | None = None,
        app_profile: JSON | None = None,
    ) -> tuple[User, bool]:
        existing = await self.find_user(subject)
        if existing is not None:
            return existing, False
        upgrade = self._upgrade()
        if upgrade is not None:
            # Nobody holds this identity: it becomes the anonymous user's.
            user = await links.link_identity(
                self._database,
                project_id=self._project_id,
                source_id=upgrade.source_id,
                provider=self._provider,
                subject=subject,
                external_id=self.external_id(subject),
                attributes=attributes or {},
                username=username,
                now=now(),
                event=self._linked(upgrade, externalId=self.external_id(subject)),
            )
            self._wrote(user.user_id)
            upgrade.user_id = user.user_id
            return user, True
        return await repo.ensure_user(
            self._database,
            project_id=self._project_id,
            provider=self._provider,
            subject=subject,
            external_id=self.external_id(subject),
            attributes=attributes or {},
            username=username,
            app_profile=app_profile,
            now=now(),
            event=calls.event(USER_CREATED, self._project_id, provider=self._provider),
        )

    async def find_user(self, subject: str) -> User | None:
        upgrade = self._upgrade()
        if upgrade is None:
            return await self._find("subject", subject)
        # An upgrade decides on what the store holds now, never on a copy.
        user = await repo.find_user(
            self._database, self._project_id, "subject", subject, provider=self._provider
        )
        if user is None:
            return None
        if user.user_id != upgrade.source_id:
            if upgrade.mode == LINK:
                user = await self._adopt(upgrade, subject, held_by=user)
            else:
                user = await self._merge(upgrade, into=user)
        upgrade.user_id = user.user_id
        return user

    async def identities(self, user: User) -> list[Identity]:
        self._own(user)
        hot = self._cached()
        if hot is None:
            return await links.identities_of(self._database, self._project_id, user.user_id)
        key = (self._project_id, "identities", user.user_id)
        cached: list[Identity] | None = hot.get(key)
        if cached is None:
            stamp = hot.begin()
            cached = await links.identities_of(self._database, self._project_id, user.user_id)
            hot.put(key, (self._project_id, user.user_id), stamp, cached)
        return list(cached)

    def _upgrade(self) -> Upgrade | None:
        """The upgrade this call is (server/upgrade.py), if it is one and it
        upgrades to this provider."""
        upgrade = upgrade_var.get()
        return upgrade if upgrade is not None and upgrade.provider == self._provider else None

    async def _adopt(self, upgrade: Upgrade, subject: str, *, held_by: User) -> User:
        """A link to an identity another user holds: refused, unless this is
        a login carrying the anonymousToken and that user was only made by a
        sign-up, never signed in (sign-up, then login, in one step): then the
        identity moves to the anonymous user."""
        if not upgrade.adopt_unused:
            raise links.already_linked(held_by.user_id, self._provider)
        adopted = await links.adopt_unused(
            self._database,
            project_id=self._project_id,
            source_id=upgrade.source_id,
            holder_id=held_by.user_id,
            provider=self._provider,
            subject=subject,
            now=now(),
            event=self._linked(
                upgrade, externalId=held_by.external_id, unusedUserId=held_by.user_id
            ),
        )
        self._wrote(held_by.user_id)
        self._wrote(upgrade.source_id)
        user = await repo.find_user(
            self._database, self._project_id, "subject", subject, provider=self._provider
        )
        if not adopted or user is None or user.user_id != upgrade.source_id:
            raise links.already_linked(held_by.user_id, self._provider)
        return user

    def _linked(self, upgrade: Upgrade, **data: str) -> AuditEvent:
        return calls.event(
            USER_LINKED,
            self._project_id,
            provider=self._provider,
            user_id=upgrade.source_id,
            data=data,
        )

    async def _merge(self, upgrade: Upgrade, *, into: User) -> User:
        def event(moved_devices: int, moved_logins: int) -> AuditEvent:
            return calls.event(
                USER_MERGED,
                self._project_id,
                provider=self._provider,
                user_id=into.user_id,
                data={
                    "sourceUserId": upgrade.source_id,
                    "targetUserId": into.user_id,
                    "policy": upgrade.policy,
                    "movedDevices": moved_devices,
                    "movedLogins": moved_logins,
                },
            )

        merged = await links.merge_users(
            self._database,
            source_id=upgrade.source_id,
            target=into,
            policy=upgrade.policy,
            now=now(),
            signature=lambda user_id, device_id, at: tokens.signature(
                self._secret, user_id, device_id, at
            ),
            event=event,
        )
        self._wrote(upgrade.source_id)
        self._wrote(into.user_id)
        upgrade.merged = merged
        return merged.user

    async def find_by_external_id(self, external_id: str) -> User | None:
        return await self._find("external_id", external_id)

    async def _find(self, column: str, value: str) -> User | None:
        hot = self._cached()
        if hot is None:
            return await repo.find_user(
                self._database, self._project_id, column, value, provider=self._provider
            )
        key = (self._project_id, self._provider, column, value)
        cached: User | None = hot.get(key)
        if cached is not None:
            return cached
        stamp = hot.begin()
        user = await repo.find_user(
            self._database, self._project_id, column, value, provider=self._provider
        )
        if user is not None:
            hot.put(key, (self._project_id, user.user_id), stamp, user)
        return user

    def _cached(self) -> HotRows | None:
        """The hot rows, for a call that only reads (a profile read): a call
        that writes (a login, a check, an update) must act on the user as
        the store holds it now, never on a copy a second old of a user
        another process may have erased or purged meanwhile."""
        call = call_var.get()
        if call is None or call.method.rpartition("/")[2] not in READ_ONLY_RPCS:
            return None
        return self._hot

    def _wrote(self, user_id: str) -> None:
        self._hot.written(self._project_id, user_id)

    async def find_by_user_id(self, user_id: str) -> User | None:
        return await repo.find_user(
            self._database, self._project_id, "user_id", user_id, provider=self._provider
        )

    async def record_login(self, user: User, device_id: str) -> Device:
        self._own(user)
        at = now()
        device = await repo.record_login(
            self._database,
            project_id=self._project_id,
            user_id=user.user_id,
            device_id=device_id,
            now=at,
            signature=tokens.signature(self._secret, user.user_id, device_id, at),
            event=calls.event(
                calls.login_type(),
                self._project_id,
                provider=self._provider,
                user_id=user.user_id,
                device_id=device_id,
            ),
        )
        # Devices and logins only: the user and its identities are as they were.
        self._hot.written(self._project_id, user.user_id, activity_only=True)
        return device

    async def sign_in(
        self, user: User, *, device_id: str | None, upstream: UpstreamTokens | None = None
    ) -> Session:
        device = await self.record_login(user, device_id or str(uuid.uuid4()))
        return Session(
            device_id=device.device_id,
            time_stamp=device.time_stamp,
            signature=device.signature,
            external_id=user.external_id,
            user_id=user.user_id,
            sign_up=device.sign_up,
            profile_token=self.mint_profile_token(user, device_id=device.device_id),
            access_token=upstream.access_token if upstream else None,
            refresh_token=upstream.refresh_token if upstream else None,
        )

    def mint_profile_token(self, user: User, *, device_id: str | None = None) -> str:
        claims: dict[str, Any] = {"provider": self._provider, "externalId": user.external_id}
        if device_id:
            claims["deviceId"] = device_id
        return self._keys.current().mint(
            audience=self._project_id, subject=user.user_id, claims=claims, now=now()
        )

    async def profile(self, user: User) -> ProfileView:
        self._own(user)
        hot = self._cached()
        key = (self._project_id, "profile", user.user_id)
        rows: repo.ProfileRows | None = hot.get(key) if hot is not None else None
        if rows is None:
            stamp = self._hot.begin()
            rows = await repo.profile_rows(self._database, self._project_id, user.user_id)
            if hot is not None:
                hot.put(key, activity(self._project_id, user.user_id), stamp, rows)
        return ProfileView(
            user=user,
            devices=rows.devices,
            login_history=rows.login_history,
            identities=rows.identities,
        )

    async def update_user(
        self,
        user: User,
        *,
        attributes: JSON | None = None,
        merge_attributes: bool = True,
        app_profile: JSON | None = None,
        username: str | None = None,
    ) -> User:
        self._own(user)
        at = now()
        updated: User | None = user
        values: dict[str, Any] = {}
        if app_profile is not None:
            values["app_profile"] = app_profile
        if username is not None:
            values["username"] = username
        if attributes is not None and not merge_attributes:
            values["attributes"] = attributes
        if values:
            updated = await repo.update_user(
                self._database,
                user,
                values=values,
                now=at,
                event=self._updated(user, values),
            )
        if attributes is not None and merge_attributes:
            updated = await repo.merge_attributes(
                self._database,
                user,
                attributes,
                at,
                event=self._updated(user, {"attributes": attributes}),
            )
        self._wrote(user.user_id)
        if updated is None:
            raise LookupError("user vanished during update")
        return updated

    async def revoke_sessions(self, user: User, *, before: int) -> User:
        self._own(user)
        updated = await repo.update_user(
            self._database,
            user,
            values={"valid_after": max(before, user.valid_after)},
            now=now(),
            event=calls.event(
                calls.revocation_type(),
                self._project_id,
                provider=self._provider,
                user_id=user.user_id,
            ),
        )
        self._wrote(user.user_id)
        if updated is None:
            raise LookupError("user vanished during revocation")
        return updated

    async def revoke_token(self, token: str, *, expires_at: int) -> None:
        token_hash = tokens.token_hash(token)
        await repo.add_token_hash(
            self._database, revoked_tokens, self._project_id, token_hash, expires_at
        )
        self._hot.owner_written(self._revocation_key(token_hash))

    async def is_token_revoked(self, token: str) -> bool:
        """Whether `token` was revoked by hash. A profile read may take the
        answer from the hot rows: a revocation through another process is
        then seen within their bound, like a logout's."""
        token_hash = tokens.token_hash(token)
        hot = self._cached()
        key = self._revocation_key(token_hash)
        if hot is not None:
            known: bool | None = hot.get(key)
            if known is not None:
                return known
            stamp = hot.begin()
        revoked = await repo.has_token_hash(
            self._database, revoked_tokens, self._project_id, token_hash, now()
        )
        if hot is not None:
            hot.put(key, key, stamp, revoked)
        return revoked

    def _revocation_key(self, token_hash: str) -> tuple[str, ...]:
        return (self._project_id, "revoked", token_hash)

    async def remember_token(self, token: str, *, expires_at: int) -> None:
        await repo.add_token_hash(
            self._database, issued_tokens, self._project_id, tokens.token_hash(token), expires_at
        )

    async def is_token_remembered(self, token: str) -> bool:
        return await repo.has_token_hash(
            self._database, issued_tokens, self._project_id, tokens.token_hash(token), now()
        )

    def _updated(self, user: User, values: dict[str, Any]) -> AuditEvent:
        # The names of what changed, never the values (an appProfile can
        # hold anything a client puts in it).
        fields = sorted(_FIELD_NAMES.get(name, name) for name in values)
        return calls.event(
            USER_UPDATED,
            self._project_id,
            provider=self._provider,
            user_id=user.user_id,
            data={"fields": fields},
        )

    def _own(self, user: User) -> None:
        # A provider bug must not be able to write into another tenant.
        if user.project_id != self._project_id:
            raise PermissionError("user belongs to another project")
