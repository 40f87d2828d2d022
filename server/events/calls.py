"""What a public API call (identify.v1.Identify) records in the audit trail.

The store's write paths (server/accounts.py, server/abuse/lockout.py) build
their events here, from the call's `Call` (server/requestctx.py): its RPC
decides the type where one write serves several RPCs (a login recorded by
Login is a `user.login`, by ChangePassword a `user.password_changed`), and
the edge's client IP and the request's device come with every event.
Refusals, and successes that write nothing of ours, are recorded by the
servicer through `after_refusal` and `after_success`, each in a small
transaction of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from server.events import types
from server.events.audit import ACTOR_SYSTEM, ACTOR_USER, AuditEvent, record_alone
from server.requestctx import call_var
from server.store.db import Database

log = logging.getLogger(__name__)

# The type of the device-and-login write (Accounts.record_login / sign_in),
# by RPC; any other RPC that records a login records a `user.login`.
_LOGIN_TYPES = {
    "ChangePassword": types.USER_PASSWORD_CHANGED,
    "RefreshSession": types.USER_SESSION_REFRESHED,
}
# Refusals worth an event: those of a login or a sign-up. CheckUser is the
# login of the social providers (a token checked, a login recorded).
_REFUSAL_TYPES = {
    "Login": types.USER_LOGIN_REFUSED,
    "CheckUser": types.USER_LOGIN_REFUSED,
    "CheckUserNonstandard": types.USER_LOGIN_REFUSED,
    "CreateUser": types.USER_SIGNUP_REFUSED,
    "LinkIdentity": types.USER_LINK_REFUSED,
    "MergeUsers": types.USER_LINK_REFUSED,
}
# Successes whose change happened upstream only (Cognito's reset).
_SUCCESS_TYPES = {"ConfirmForgotPassword": types.USER_PASSWORD_RESET}
# A refusal because the store is down cannot be recorded in it.
_UNRECORDABLE = frozenset({"STORE_UNAVAILABLE"})


def _rpc() -> str:
    call = call_var.get()
    return call.method.rpartition("/")[2] if call is not None else ""


def note_caller(client_ip: str, device_id: str | None) -> None:
    """The servicer names who calls: the edge's client IP, the request's
    device (already a canonical UUID, or None)."""
    call = call_var.get()
    if call is not None:
        call.client_ip = client_ip[:64]
        call.device_id = device_id or ""


def event(
    type: str,
    project_id: str,
    *,
    provider: str | None = None,
    user_id: str | None = None,
    device_id: str | None = None,
    reason: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An event of the current call (actor "user"); outside any call (a
    background task), actor "system"."""
    call = call_var.get()
    if call is None:
        return AuditEvent(
            type=type,
            project_id=project_id,
            actor=ACTOR_SYSTEM,
            user_id=user_id,
            provider=provider,
            device_id=device_id,
            reason=reason,
            data=data,
        )
    return AuditEvent(
        type=type,
        project_id=project_id,
        actor=ACTOR_USER,
        user_id=user_id,
        provider=provider or call.provider or None,
        device_id=device_id or call.device_id or None,
        client_ip=call.client_ip or None,
        reason=reason,
        data=data,
    )


def login_type() -> str:
    return _LOGIN_TYPES.get(_rpc(), types.USER_LOGIN)


def revocation_type() -> str:
    """A user's own Logout is `user.logout`; any other end of all its
    sessions, `user.sessions_revoked`."""
    return types.USER_LOGOUT if _rpc() == "Logout" else types.USER_SESSIONS_REVOKED


def records_refusal() -> bool:
    return _rpc() in _REFUSAL_TYPES


async def after_refusal(database: Database) -> None:
    """The refused call's event (the reason errors.py put in `Call`), when
    its project was known; a failure to record it never changes the reply."""
    call = call_var.get()
    kind = _REFUSAL_TYPES.get(_rpc())
    if call is None or kind is None or not call.project or call.reason in _UNRECORDABLE:
        return
    await _alone(database, event(kind, call.project, reason=call.reason or None))


async def after_success(database: Database) -> None:
    call = call_var.get()
    kind = _SUCCESS_TYPES.get(_rpc())
    if call is None or kind is None or not call.project:
        return
    await _alone(database, event(kind, call.project))


async def _alone(database: Database, audit_event: AuditEvent) -> None:
    try:
        await record_alone(database, audit_event)
    except Exception:
        log.warning("recording audit event %s failed", audit_event.type, exc_info=True)
