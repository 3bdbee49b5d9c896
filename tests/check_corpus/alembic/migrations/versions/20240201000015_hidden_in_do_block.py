"""check corpus: ../sql/20240201000015_hidden_in_do_block.sql"""

from corpus import apply

revision = "20240201000015"
down_revision = "20240201000014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
