"""check corpus: ../sql/20240201000002_set_not_null.sql"""

from corpus import apply

revision = "20240201000002"
down_revision = "20240201000001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
