"""Alembic environment: runs on the connection Lunas hands it (``lunas migrate``), or on
``sqlalchemy.url`` when invoked through the ``alembic`` command for authoring revisions."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orchestrator.store.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # On PostgreSQL each revision commits on its own, so a revision that builds an index
        # concurrently (migrations/online.py) commits nothing but itself. On SQLite ``lunas
        # migrate`` holds one transaction around them all (store/engine.py).
        transaction_per_migration=connection.dialect.name == "postgresql",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return

    async def _standalone() -> None:
        engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
        async with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                await conn.begin()  # SQLite: one transaction for all revisions, as lunas migrate
            await conn.run_sync(_run)
            await conn.commit()
        await engine.dispose()

    asyncio.run(_standalone())


run_migrations_online()
