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
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    # The provider's stable id for the person (sub, device id, ...).
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("external_id", sa.String(64), nullable=False),
    sa.Column("username", sa.String(256)),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("app_profile", sa.JSON),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # Tokens issued before this instant are refused (logout everywhere).
    sa.Column("valid_after", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("project_id", "user_id"),
    sa.UniqueConstraint("project_id", "provider", "subject"),
    sa.UniqueConstraint("project_id", "external_id"),
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
