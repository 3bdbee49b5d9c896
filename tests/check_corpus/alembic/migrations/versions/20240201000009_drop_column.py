"""check corpus: ../sql/20240201000009_drop_column.sql"""

from corpus import apply

revision = "20240201000009"
down_revision = "20240201000008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
