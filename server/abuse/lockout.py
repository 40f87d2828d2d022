"""Per-account lockout after consecutive credential failures.

The counts live in the database, so every process on every machine sees the
same ones (Redis or not). An account is whatever a credential is checked
against (an email for a password login or a reset code), hashed with the
provider's name: accounts that do not exist are counted and locked exactly
like real ones, so the locked answer tells nobody whether an account exists.
Only the failures a provider names count; a success forgets them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from providers.values import ProviderError, ResourceExhausted
from server import metrics
from server.abuse.policy import LockoutPolicy
from server.clock import now
from server.events import calls
from server.events.audit import AuditEvent
from server.events.types import ACCOUNT_LOCKED
from server.store import repo
from server.store.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")


def account_key(provider: str, account: str) -> str:
    return hashlib.sha256(f"{provider}:{account.strip().lower()}".encode()).hexdigest()


class Lockout:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def guard(
        self,
        policy: LockoutPolicy,
        *,
        project_id: str,
        account: str,
        check: Callable[[], Awaitable[T]],
        failures: Collection[str],
    ) -> T:
        """Run `check` (the credential check) unless the account is locked.
        A domain error whose reason is in `failures` counts one failure;
        success forgets the count."""
        at = now()
        fresh_after = at - policy.reset_after_seconds
        count, locked_until = await repo.credential_failures_of(
            self._database, project_id, account, fresh_after=fresh_after
        )
        if locked_until > at:
            metrics.lockout_event(project_id, "refused")
            raise locked(locked_until - at)
        try:
            result = await check()
        except ProviderError as err:
            if err.reason in failures:
                await self._failed(policy, project_id, account, fresh_after)
            raise
        if count:
            await repo.forget_credential_failures(self._database, project_id, account)
        return result

    async def _failed(
        self, policy: LockoutPolicy, project_id: str, account: str, fresh_after: int
    ) -> None:
        metrics.lockout_event(project_id, "failure")

        def lock_event(failures: int, seconds: int) -> AuditEvent:
            # The account is a hash: the trail names no email either.
            data = {"account": account[:12], "failures": failures, "lockedSeconds": seconds}
            return calls.event(ACCOUNT_LOCKED, project_id, data=data)

        count, locked_until = await repo.count_credential_failure(
            self._database,
            project_id,
            account,
            now=now(),
            fresh_after=fresh_after,
            lock_for=policy.lock_seconds,
            lock_event=lock_event,
        )
        if locked_until:
            metrics.lockout_event(project_id, "locked")
            # The account is a hash: the log names no email.
            log.warning(
                "account locked project=%s account=%s failures=%d seconds=%d",
                project_id,
                account[:12],
                count,
                locked_until - now(),
            )


def locked(seconds: int) -> ResourceExhausted:
    # The same reason and code Cognito's own lockout maps to: one answer for
    # "too many failed attempts", whoever noticed them.
    return ResourceExhausted(
        "TOO_MANY_FAILED_ATTEMPTS",
        "too many failed attempts; try again later",
        retry_after=float(max(1, seconds)),
    )
