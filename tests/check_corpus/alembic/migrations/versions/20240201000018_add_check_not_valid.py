"""check corpus: ../sql/20240201000018_add_check_not_valid.sql"""

from corpus import apply

revision = "20240201000018"
down_revision = "20240201000017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
