"""check corpus: ../sql/20240201000008_foreign_key_not_valid.sql"""

from corpus import apply

revision = "20240201000008"
down_revision = "20240201000007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
