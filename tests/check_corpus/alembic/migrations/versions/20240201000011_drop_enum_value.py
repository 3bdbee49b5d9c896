"""check corpus: ../sql/20240201000011_drop_enum_value.sql"""

from corpus import apply

revision = "20240201000011"
down_revision = "20240201000010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(revision)
