"""create users, orders and the revision audit

Revision ID: 0001_create_tables
Revises:
"""

from alembic import op
import sqlalchemy as sa

revision = "0001_create_tables"
down_revision = None
branch_labels = None
depends_on = None


def audit(revision: str) -> None:
    op.execute(
        sa.text("INSERT INTO revision_audit (revision, backend_pid) VALUES (:r, pg_backend_pid())")
        .bindparams(r=revision)
    )


def upgrade() -> None:
    op.create_table(
        "revision_audit",
        sa.Column("revision", sa.String(64), primary_key=True),
        sa.Column("backend_pid", sa.Integer, nullable=False),
        sa.Column("ran_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("total_cents", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("total_cents >= 0", name="orders_total_nonnegative"),
    )
    op.bulk_insert(
        sa.table("users", sa.column("email", sa.String)),
        [{"email": "ada@example.com"}, {"email": "grace@example.com"}],
    )
    audit(revision)


def downgrade() -> None:
    op.drop_table("orders")
    op.drop_table("users")
    op.drop_table("revision_audit")
