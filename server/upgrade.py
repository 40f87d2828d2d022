"""Upgrading an anonymous user: link a permanent identity to it (same userId),
or merge it into the permanent user that identity already belongs to.

The permanent credential is checked by the provider's own call, unchanged
(Provider.link: a Cognito login, a token read, a social check); what differs
is what the store does when that call looks its subject up. During an upgrade
the call runs with an `Upgrade` in `upgrade_var`, and ScopedAccounts
(server/accounts.py) then attaches a subject nobody holds to the anonymous
user instead of creating a user, refuses one held by another user (link), or
merges the anonymous user into its holder (merge). The reply is the one the
provider's own call gives, for the user the identity now belongs to."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jwt

from providers.kit.tokens import token_revoked
from providers.values import InvalidArgument, Unauthenticated
from server.keys import KeyStore
from server.store import identities as store
from server.store import repo
from server.store.db import Database

LINK, MERGE = "link", "merge"


@dataclass
class Upgrade:
    mode: str
    provider: str
    # The anonymous user the proof names.
    source_id: str
    policy: str = store.KEEP_TARGET
    # A login carrying data.anonymousToken (sign-up, then login): the
    # identity may be held by the user that sign-up made, never signed in.
    adopt_unused: bool = False
    # Filled in by the store: the user the identity belongs to after the call.
    user_id: str | None = None
    merged: store.Merged | None = None


upgrade_var: ContextVar[Upgrade | None] = ContextVar("identify_upgrade", default=None)


def policy_arg(value: str) -> str:
    if not value:
        return store.KEEP_TARGET
    if value not in store.POLICIES:
        raise InvalidArgument(
            "INVALID_MERGE_POLICY",
            f"policy must be one of {', '.join(store.POLICIES)}",
            metadata={"field": "policy"},
        )
    return value


def _invalid(why: str) -> Unauthenticated:
    return Unauthenticated(
        "INVALID_ANONYMOUS_TOKEN",
        f"anonymousToken is not a profileToken of an anonymous user of this project: {why}",
        metadata={"field": "anonymousToken"},
    )


class Upgrades:
    def __init__(self, database: Database, keys: KeyStore) -> None:
        self._database = database
        self._keys = keys

    async def user_of(self, token: str, *, project_id: str) -> dict[str, Any]:
        """The claims of a live profileToken of this project (signed by us,
        not expired, its sessions not ended since), or Unauthenticated."""
        signer = await self._keys.signer()
        if not signer.knows(token):
            # Rotated in by another process since our last load.
            signer = await self._keys.reload()
        try:
            claims = signer.verify(token, audience=project_id)
        except jwt.ExpiredSignatureError:
            raise _invalid("it has expired; sign in anonymously again for a fresh one") from None
        except jwt.PyJWTError as exc:
            raise _invalid(str(exc) or type(exc).__name__) from None
        return claims

    async def plan(
        self, *, project_id: str, mode: str, provider: str, token: str, policy: str
    ) -> Upgrade:
        if provider == store.ANONYMOUS:
            # A device proves no permanent identity (and PUT /user/login
            # with data.anonymousToken must not attach one device to another).
            raise InvalidArgument(
                "OPERATION_NOT_SUPPORTED",
                "provider anonymous does not support linking to an anonymous user",
                metadata={"provider": provider, "operation": "link"},
            )
        claims = await self.user_of(token, project_id=project_id)
        if claims.get("provider") != store.ANONYMOUS:
            raise _invalid("it was issued to a user signed in with another provider")
        source_id = str(claims["sub"])
        state = await store.source_state(self._database, project_id, source_id)
        if state is None:
            raise _invalid("its user no longer exists")
        if state.merged_into is not None:
            # A merge said again is answered as the first time (idempotent);
            # anything else has nothing left to upgrade.
            if mode != MERGE:
                raise store.already_merged(state.merged_into)
        else:
            try:
                await self.refuse_ended(claims, project_id=project_id)
            except Unauthenticated:
                # A merge that committed between the two reads ended these
                # sessions: answered as if it had been read first.
                again = await store.source_state(self._database, project_id, source_id)
                if again is None or again.merged_into is None:
                    raise
                if mode != MERGE:
                    raise store.already_merged(again.merged_into) from None
        return Upgrade(mode=mode, provider=provider, source_id=source_id, policy=policy)

    async def refuse_ended(self, claims: dict[str, Any], *, project_id: str) -> None:
        """A token issued before its user's (or its device's) sessions ended
        proves nothing any more (the rule of every token: kit/tokens.py)."""
        valid_after = await repo.session_valid_after(
            self._database, project_id, str(claims["sub"]), str(claims.get("deviceId", ""))
        )
        if valid_after is None or int(claims["iat"]) < valid_after:
            raise token_revoked()
