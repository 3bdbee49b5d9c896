"""data migration: backfill users.display_name, then make it NOT NULL

Revision ID: 0003_backfill_display_name
Revises: 0002_add_display_name
"""

from alembic import op
import sqlalchemy as sa

revision = "0003_backfill_display_name"
down_revision = "0002_add_display_name"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE users SET display_name = split_part(email, '@', 1) WHERE display_name IS NULL")
    op.alter_column("users", "display_name", nullable=False)
    op.execute(
        sa.text("INSERT INTO revision_audit (revision, backend_pid) VALUES (:r, pg_backend_pid())")
        .bindparams(r=revision)
    )


def downgrade() -> None:
    op.alter_column("users", "display_name", nullable=True)
