"""check corpus: ../sql/20240201000006_create_index_concurrently.sql"""

from corpus import apply

revision = "20240201000006"
down_revision = "20240201000005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
