"""check corpus: ../sql/20240201000003_alter_type_rewrite.sql"""

from corpus import apply

revision = "20240201000003"
down_revision = "20240201000002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
