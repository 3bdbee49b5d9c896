"""check corpus: ../sql/20240201000014_backfill.sql"""

from corpus import apply

revision = "20240201000014"
down_revision = "20240201000013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
