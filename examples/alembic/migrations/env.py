"""Alembic environment: online migrations against DATABASE_URL.

schemagate runs `alembic upgrade head` with the same environment it was given, so the URL
the app already has (postgres://...) is the only configuration needed.
"""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from app.models import Base

target_metadata = Base.metadata
if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or os.environ.get("SCHEMAGATE_DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used with schemagate")
run_migrations_online()
