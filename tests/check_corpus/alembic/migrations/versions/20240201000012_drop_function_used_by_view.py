"""check corpus: ../sql/20240201000012_drop_function_used_by_view.sql"""

from corpus import apply

revision = "20240201000012"
down_revision = "20240201000011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
