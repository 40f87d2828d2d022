"""THE list of audit event types. A type is `<subject>.<what happened>`;
webhook endpoints subscribe to these names (or to `user.*`, `account.*`,
`admin.*`, `*`). README "Webhooks and the audit trail" shows each one's JSON.

Adding a type: add it here (and to the README); `audit.record` refuses any
name not in EVENT_TYPES, so a typo fails the first test that writes it."""

from __future__ import annotations

# ------------------------------------------------- a user's own calls (actor "user")
# A new user row (sign-up, or a first login through a provider).
USER_CREATED = "user.created"
# A sign-up refused (CreateUser); `reason` is the refusal's ErrorInfo reason.
USER_SIGNUP_REFUSED = "user.signup_refused"
# A login: a password login, an anonymous device, a social token checked.
USER_LOGIN = "user.login"
# A login refused; `reason` says why (INVALID_CREDENTIALS, TOKEN_EXPIRED, ...).
USER_LOGIN_REFUSED = "user.login_refused"
# A session refreshed with a refresh token (a new session, no new login).
USER_SESSION_REFRESHED = "user.session_refreshed"
# The user's own logout: every session of the user ends.
USER_LOGOUT = "user.logout"
USER_PASSWORD_CHANGED = "user.password_changed"
# A password reset with a code (the user is named only by the provider).
USER_PASSWORD_RESET = "user.password_reset"
# The user's appProfile, attributes or username written; `data.fields` names
# which (never their values).
USER_UPDATED = "user.updated"
# A permanent identity attached to an (anonymous) user: same userId after.
USER_LINKED = "user.linked"
# A link or merge refused; `reason` says why (IDENTITY_ALREADY_LINKED, ...).
USER_LINK_REFUSED = "user.link_refused"
# One identity of the user removed (never its last).
USER_UNLINKED = "user.unlinked"

# --------------------------------------- done to a user by an operator (actor "admin:<keyId>")
USER_SESSIONS_REVOKED = "user.sessions_revoked"
USER_DEVICE_SIGNED_OUT = "user.device_signed_out"
# GDPR erasure: the user's rows are gone, its events pseudonymous.
USER_DELETED = "user.deleted"
USER_EXPORTED = "user.exported"
# An anonymous user with no login for the project's anonymousRetentionDays,
# removed by the background purge (actor "system").
USER_PURGED = "user.purged"
# Two users made one: an anonymous user's devices and logins moved to the
# permanent user (`userId`); `data.sourceUserId` is the tombstone left behind.
# The app's backend moves its own data of that user on this event.
USER_MERGED = "user.merged"

# ---------------------------------------------------------------- accounts
# Too many credential failures: the account is locked (abuse protection).
# The account is named by a hash prefix, never an email.
ACCOUNT_LOCKED = "account.locked"

# -------------------------------------------------- admin actions (actor "admin:<keyId>")
ADMIN_KEY_CREATED = "admin.key_created"
ADMIN_KEY_REVOKED = "admin.key_revoked"
# A wrong, expired or missing admin key (401), or one outside its scope (403).
ADMIN_KEY_REFUSED = "admin.key_refused"
ADMIN_PROJECT_CREATED = "admin.project_created"
ADMIN_PROJECT_UPDATED = "admin.project_updated"
ADMIN_PROJECT_DELETED = "admin.project_deleted"
ADMIN_PROJECT_UNDELETED = "admin.project_undeleted"
ADMIN_SIGNING_KEY_ROTATED = "admin.signing_key_rotated"
ADMIN_WEBHOOK_CREATED = "admin.webhook_created"
ADMIN_WEBHOOK_UPDATED = "admin.webhook_updated"
ADMIN_WEBHOOK_DELETED = "admin.webhook_deleted"
ADMIN_WEBHOOK_ENABLED = "admin.webhook_enabled"

EVENT_TYPES: frozenset[str] = frozenset(
    value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and "." in value
)
GROUPS: frozenset[str] = frozenset(t.partition(".")[0] + ".*" for t in EVENT_TYPES)
# What an endpoint may subscribe to.
SUBSCRIBABLE: frozenset[str] = EVENT_TYPES | GROUPS | {"*"}


def matches(subscribed: tuple[str, ...] | list[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to `subscribed` receives `event_type`."""
    group = event_type.partition(".")[0] + ".*"
    return any(s in ("*", group, event_type) for s in subscribed)
