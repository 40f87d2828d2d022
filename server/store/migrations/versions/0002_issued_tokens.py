"""issued_tokens: hashes of opaque tokens we handed out (refresh tokens), so a
provider can tell a current one from one issued before a logout.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issued_tokens",
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "token_hash", name="pk_issued_tokens"),
    )


def downgrade() -> None:
    op.drop_table("issued_tokens")
