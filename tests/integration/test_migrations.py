"""The same Alembic migrations build the schema on PostgreSQL and on SQLite, go down and up again,
and leave no drift between the migrations and the tables the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from orchestrator.settings import DatabaseSettings
from orchestrator.store.engine import create_engine, downgrade, migrate
from orchestrator.store.tables import metadata
from tests.conftest import create_database, drop_database


def _drift(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return list(compare_metadata(context, metadata))


async def _check(url: str) -> None:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_drift) == []
            tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
        await downgrade(engine)
        async with engine.connect() as conn:
            left = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        assert left <= {"alembic_version"}
        await migrate(engine)
    finally:
        await engine.dispose()


async def test_migrations_on_postgresql() -> None:
    url = await create_database("lunas_migrations")
    try:
        await _check(url)
    finally:
        await drop_database(url)


async def test_migrations_on_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path / 'lunas.db'}")


@pytest.mark.parametrize("table", sorted(metadata.tables))
def test_every_table_has_a_primary_key(table: str) -> None:
    assert metadata.tables[table].primary_key.columns
