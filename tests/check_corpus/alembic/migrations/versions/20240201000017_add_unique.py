"""check corpus: ../sql/20240201000017_add_unique.sql"""

from corpus import apply

revision = "20240201000017"
down_revision = "20240201000016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
