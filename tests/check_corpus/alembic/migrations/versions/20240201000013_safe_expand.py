"""check corpus: ../sql/20240201000013_safe_expand.sql"""

from corpus import apply

revision = "20240201000013"
down_revision = "20240201000012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
