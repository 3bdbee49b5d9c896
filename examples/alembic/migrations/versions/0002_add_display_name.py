"""add users.display_name (nullable until backfilled)

Revision ID: 0002_add_display_name
Revises: 0001_create_tables
"""

from alembic import op
import sqlalchemy as sa

revision = "0002_add_display_name"
down_revision = "0001_create_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("display_name", sa.String(255), nullable=True))
    op.execute(
        sa.text("INSERT INTO revision_audit (revision, backend_pid) VALUES (:r, pg_backend_pid())")
        .bindparams(r=revision)
    )


def downgrade() -> None:
    op.drop_column("users", "display_name")
