"""check corpus: ../sql/20240101000000_baseline.sql"""

from corpus import apply

revision = "20240101000000"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
