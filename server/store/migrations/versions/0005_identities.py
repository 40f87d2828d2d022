"""Identities: who signs in through which provider moves out of `users` into
its own table, so one user can hold several (an anonymous device upgraded to a
permanent account keeps its userId). Merged users stay as tombstones.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("external_id", sa.String(64), nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("linked_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "provider", "subject", name="pk_identities"),
        sa.UniqueConstraint("project_id", "external_id", name="uq_identities_project_id_external_id"),
    )
    op.create_index(
        "ix_identities_project_id_user_id_linked_at",
        "identities",
        ["project_id", "user_id", "linked_at"],
    )
    op.execute(
        "INSERT INTO identities"
        " (project_id, provider, subject, user_id, external_id, attributes, linked_at)"
        " SELECT project_id, provider, subject, user_id, external_id, attributes, created_at"
        " FROM users"
    )
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_project_id_provider_subject", type_="unique")
        batch.drop_constraint("uq_users_project_id_external_id", type_="unique")
        batch.drop_column("provider")
        batch.drop_column("subject")
        batch.drop_column("external_id")
        batch.drop_column("attributes")
        batch.add_column(sa.Column("merged_into", sa.String(36), nullable=True))
        batch.add_column(sa.Column("merged_at", sa.BigInteger, nullable=True))
    op.add_column("projects", sa.Column("anonymous_retention_days", sa.Integer, nullable=True))


def downgrade() -> None:
    # Each user keeps its first identity; tombstones (which hold none) and
    # later links are dropped: the old schema has no place for them.
    op.execute("DELETE FROM users WHERE merged_into IS NOT NULL")
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("provider", sa.String(64), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(512), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("attributes", sa.JSON, nullable=True))
    first = (
        "(SELECT i.{col} FROM identities i WHERE i.project_id = users.project_id"
        " AND i.user_id = users.user_id ORDER BY i.linked_at, i.provider, i.subject LIMIT 1)"
    )
    op.execute(
        "UPDATE users SET "
        + ", ".join(f"{col} = {first.format(col=col)}" for col in ("provider", "subject", "external_id", "attributes")
        )
    )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("provider", nullable=False)
        batch.alter_column("subject", nullable=False)
        batch.alter_column("external_id", nullable=False)
        batch.alter_column("attributes", nullable=False)
        batch.drop_column("merged_into")
        batch.drop_column("merged_at")
        batch.create_unique_constraint(
            "uq_users_project_id_provider_subject", ["project_id", "provider", "subject"]
        )
        batch.create_unique_constraint("uq_users_project_id_external_id", ["project_id", "external_id"])
    op.drop_column("projects", "anonymous_retention_days")
    op.drop_index("ix_identities_project_id_user_id_linked_at", table_name="identities")
    op.drop_table("identities")
