"""check corpus: ../sql/20240201000004_widen_varchar.sql"""

from corpus import apply

revision = "20240201000004"
down_revision = "20240201000003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
