"""check corpus: ../sql/20240201000007_foreign_key.sql"""

from corpus import apply

revision = "20240201000007"
down_revision = "20240201000006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
