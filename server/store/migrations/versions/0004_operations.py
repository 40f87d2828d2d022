"""Operations: admin keys, soft-deleted projects, signed-out devices, the audit trail (which is
also the webhooks' transactional outbox), webhook endpoints and deliveries.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ---------------------------------------------------------------- admin
    op.create_table(
        "admin_keys",
        sa.Column("key_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("projects", sa.JSON, nullable=True),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_admin_keys"),
        sa.UniqueConstraint("key_hash", name="uq_admin_keys_key_hash"),
    )
    op.add_column("projects", sa.Column("deleted_at", sa.BigInteger, nullable=True))
    op.add_column("projects", sa.Column("audit_retention_days", sa.Integer, nullable=True))
    op.add_column(
        "devices",
        sa.Column("valid_after", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_users_project_id_created_at_user_id", "users", ["project_id", "created_at", "user_id"]
    )

    # ---------------------------------------------------------------- events
    op.create_table(
        "audit_events",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("device_id", sa.String(36), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("data", sa.JSON, nullable=True),
        sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("project_id", "event_id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_project_id_at", "audit_events", ["project_id", "at"])
    op.create_index(
        "ix_audit_events_project_id_user_id_at", "audit_events", ["project_id", "user_id", "at"]
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_types", sa.JSON, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("disabled_at", sa.BigInteger, nullable=True),
        sa.Column("disabled_reason", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "endpoint_id", name="pk_webhook_endpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("delivery_id", sa.String(36), nullable=False),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("claimed_until", sa.BigInteger, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("project_id", "delivery_id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint(
            "project_id",
            "endpoint_id",
            "event_id",
            name="uq_webhook_deliveries_project_id_endpoint_id_event_id",
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_project_id_created_at",
        "webhook_deliveries",
        ["project_id", "created_at"],
    )
    # The relay claims due deliveries of every project at once: this index
    # (and the outbox's) cannot lead with project_id.
    op.create_index(
        "ix_webhook_deliveries_state_next_attempt_at",
        "webhook_deliveries",
        ["state", "next_attempt_at"],
    )
    op.create_index("ix_audit_events_fanned_out", "audit_events", ["fanned_out", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_fanned_out", table_name="audit_events")
    op.drop_index("ix_webhook_deliveries_state_next_attempt_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_project_id_created_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_audit_events_project_id_user_id_at", table_name="audit_events")
    op.drop_index("ix_audit_events_project_id_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_users_project_id_created_at_user_id", table_name="users")
    op.drop_column("devices", "valid_after")
    op.drop_column("projects", "audit_retention_days")
    op.drop_column("projects", "deleted_at")
    op.drop_table("admin_keys")
