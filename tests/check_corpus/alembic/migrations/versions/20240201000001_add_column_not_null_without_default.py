"""check corpus: ../sql/20240201000001_add_column_not_null_without_default.sql"""

from corpus import apply

revision = "20240201000001"
down_revision = "20240101000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
