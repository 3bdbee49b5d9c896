"""check corpus: ../sql/20240201000016_contract_step_allowed.sql"""

from corpus import apply

revision = "20240201000016"
down_revision = "20240201000015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
