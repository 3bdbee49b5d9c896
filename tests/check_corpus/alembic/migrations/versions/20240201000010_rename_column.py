"""check corpus: ../sql/20240201000010_rename_column.sql"""

from corpus import apply

revision = "20240201000010"
down_revision = "20240201000009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
