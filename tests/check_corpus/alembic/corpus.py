"""Run one SQL file of the check corpus as an Alembic revision.

The SQL goes to psycopg as is (no SQLAlchemy parameter parsing), in Alembic's transaction;
a file that starts with `-- no-transaction` runs in an autocommit block, as
`CREATE INDEX CONCURRENTLY` must.
"""

from pathlib import Path

from alembic import op

SQL = Path(__file__).resolve().parent.parent / "sql"


def apply(revision: str) -> None:
    (path,) = SQL.glob(f"{revision}_*.sql")
    sql = path.read_text()
    if sql.startswith("-- no-transaction"):
        with op.get_context().autocommit_block():
            op.get_bind().connection.dbapi_connection.cursor().execute(sql)
    else:
        op.get_bind().connection.dbapi_connection.cursor().execute(sql)
