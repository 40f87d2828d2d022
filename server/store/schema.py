"""Tables. Every table's key and indexes lead with project_id so the data can
later shard by project (Citus or any sharded PostgreSQL) without a schema
change; the one exception is `signing_keys`, which is service-wide because one
JWKS URL serves every project (tokens are scoped to a project by `aud`)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Times are Unix seconds: the API speaks them, and they compare the same way
# on SQLite and PostgreSQL.
projects = sa.Table(
    "projects",
    metadata,
    sa.Column("project_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # Signs `signature` and derives `externalId`; made here, never configured.
    sa.Column("secret", sa.String(128), nullable=False),
    # Provider settings as configured; `${ENV}` references stay unresolved here.
    sa.Column("providers", sa.JSON, nullable=False),
    # The project's abuse limits as configured (None: the defaults).
    sa.Column("limits", sa.JSON),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # Soft delete: calls are refused from this instant; purged after a grace.
    sa.Column("deleted_at", sa.BigInteger),
    # Days audit events are kept (None: the default, 90).
    sa.Column("audit_retention_days", sa.Integer),
    # Anonymous users with no login for this many days are purged (None: kept).
    sa.Column("anonymous_retention_days", sa.Integer),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("username", sa.String(256)),
    sa.Column("app_profile", sa.JSON),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # Tokens issued before this instant are refused (logout everywhere).
    sa.Column("valid_after", sa.BigInteger, nullable=False, server_default="0"),
    # A merged (anonymous) user is kept as a tombstone naming the user it
    # became; no call signs it in again.
    sa.Column("merged_into", sa.String(36)),
    sa.Column("merged_at", sa.BigInteger),
    sa.PrimaryKeyConstraint("project_id", "user_id"),
    # The admin API lists a project's users newest first.
    sa.Index(None, "project_id", "created_at", "user_id"),
)

# How people sign in: one row per (provider, subject), the one place that says
# whose it is. A user has one or more (an anonymous device, then a permanent
# account linked to the same user).
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    # The provider's stable id for the person (sub, device id, ...).
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    # HMAC of provider:subject under the project's secret (tokens.external_id).
    sa.Column("external_id", sa.String(64), nullable=False),
    # What this provider says of the person (email, name, ...): each
    # identity keeps its own, so one provider's sync never erases another's.
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("linked_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "provider", "subject"),
    sa.UniqueConstraint("project_id", "external_id"),
    sa.Index(None, "project_id", "user_id", "linked_at"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("device_id", sa.String(36), nullable=False),
    sa.Column("sign_up", sa.BigInteger, nullable=False),
    sa.Column("last_login", sa.BigInteger, nullable=False),
    sa.Column("time_stamp", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.String(40), nullable=False),
    # Sessions of this device that began before are ended (the device was
    # signed out); 0: never. Its other devices are untouched.
    sa.Column("valid_after", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("project_id", "user_id", "device_id"),
)

logins = sa.Table(
    "logins",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    # Random id, so racing logins in the same second never collide.
    sa.Column("login_id", sa.String(36), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("device_id", sa.String(36), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "user_id", "login_id"),
    sa.Index(None, "project_id", "user_id", "at"),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    # SHA-256 of the token: a leaked table reveals no usable token.
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "token_hash"),
)

issued_tokens = sa.Table(
    "issued_tokens",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    # SHA-256 of what a provider asked us to remember (e.g. a refresh token
    # bound to the user's logout epoch).
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "token_hash"),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Retired keys stay published until tokens they signed have expired.
    sa.Column("retired_at", sa.BigInteger),
)

credential_failures = sa.Table(
    "credential_failures",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    # SHA-256 of provider:account (an email, say): no address kept in clear.
    sa.Column("account", sa.String(64), nullable=False),
    # Consecutive failures since the last success (or since they went stale).
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "account"),
)

# Service-wide, like signing_keys: a key may reach several projects or all.
admin_keys = sa.Table(
    "admin_keys",
    metadata,
    sa.Column("key_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # SHA-256 of the key: it is shown once and never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The project ids it may reach; None: every project.
    sa.Column("projects", sa.JSON),
    sa.Column("read_only", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("revoked_at", sa.BigInteger),
)

# The audit trail, written in the transaction of the change it records. It is
# also the webhooks' outbox: the relay fans each event out to the project's
# endpoints once (`fanned_out`), in deliveries it then sends.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    # None for events about no user; a pseudonym once the user is erased.
    sa.Column("user_id", sa.String(64)),
    # Who did it: "user", "admin:<key id>", "system".
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("provider", sa.String(64)),
    sa.Column("device_id", sa.String(36)),
    sa.Column("client_ip", sa.String(64)),
    # A refusal's ErrorInfo reason.
    sa.Column("reason", sa.String(64)),
    # Bounded, secret-free details of the event.
    sa.Column("data", sa.JSON),
    sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.PrimaryKeyConstraint("project_id", "event_id"),
    sa.Index(None, "project_id", "at"),
    sa.Index(None, "project_id", "user_id", "at"),
    # Not led by project_id: the relay looks across projects.
    sa.Index(None, "fanned_out", "at"),
)

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("endpoint_id", sa.String(36), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    # Standard Webhooks signing secret ("whsec_..."), shown once at creation.
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("disabled_at", sa.BigInteger),
    sa.Column("disabled_reason", sa.String(512)),
    sa.PrimaryKeyConstraint("project_id", "endpoint_id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("delivery_id", sa.String(36), nullable=False),
    sa.Column("endpoint_id", sa.String(36), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    # pending, delivered, failed (gave up).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    # A relay that claimed it and died: others take it once this passes.
    sa.Column("claimed_until", sa.BigInteger),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(512)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("delivered_at", sa.BigInteger),
    sa.PrimaryKeyConstraint("project_id", "delivery_id"),
    sa.UniqueConstraint("project_id", "endpoint_id", "event_id"),
    # The retention purge's, like audit_events' (project_id, at).
    sa.Index(None, "project_id", "created_at"),
    # Not led by project_id: the relay claims due deliveries of every project.
    sa.Index(None, "state", "next_attempt_at"),
)
