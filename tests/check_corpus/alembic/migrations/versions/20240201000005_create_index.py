"""check corpus: ../sql/20240201000005_create_index.sql"""

from corpus import apply

revision = "20240201000005"
down_revision = "20240201000004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
