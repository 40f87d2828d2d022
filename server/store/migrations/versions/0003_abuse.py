"""Abuse protection: per-account credential failures (lockout) and each
project's limits.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credential_failures",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "account", name="pk_credential_failures"),
    )
    op.add_column("projects", sa.Column("limits", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "limits")
    op.drop_table("credential_failures")
