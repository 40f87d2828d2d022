"""Initial schema: projects, users, devices, logins, revocations, signing keys.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("providers", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", name="pk_projects"),
    )
    op.create_table(
        "users",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("external_id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(256)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("app_profile", sa.JSON),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("valid_after", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("project_id", "user_id", name="pk_users"),
        sa.UniqueConstraint(
            "project_id", "provider", "subject", name="uq_users_project_id_provider_subject"
        ),
        sa.UniqueConstraint("project_id", "external_id", name="uq_users_project_id_external_id"),
    )
    op.create_table(
        "devices",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.Column("sign_up", sa.BigInteger, nullable=False),
        sa.Column("last_login", sa.BigInteger, nullable=False),
        sa.Column("time_stamp", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_id", "device_id", name="pk_devices"),
    )
    op.create_table(
        "logins",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("login_id", sa.String(36), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("device_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "user_id", "login_id", name="pk_logins"),
    )
    op.create_index("ix_logins_project_id_user_id_at", "logins", ["project_id", "user_id", "at"])
    op.create_table(
        "revoked_tokens",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "token_hash", name="pk_revoked_tokens"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("retired_at", sa.BigInteger),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
    )


def downgrade() -> None:
    for table in ("signing_keys", "revoked_tokens", "logins", "devices", "users", "projects"):
        op.drop_table(table)
