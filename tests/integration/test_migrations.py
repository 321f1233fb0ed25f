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


async def test_sqlite_migrations_keep_the_rows_other_tables_refer_to(tmp_path: Path) -> None:
    """An embedded install with a paid order: 0010 rebuilds payment_attempts (SQLite copies a
    table to change its constraints) while evidence refers to its rows; up and down again."""
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'lunas.db'}"))
    try:
        await migrate(engine, "0009")
        async with engine.begin() as conn:
            for sql in _PAID_ORDER:
                await conn.exec_driver_sql(sql)
        await migrate(engine)
        await downgrade(engine, "0009")
        await migrate(engine)
        async with engine.connect() as conn:
            kept = (await conn.exec_driver_sql(
                "SELECT e.order_id, a.id FROM evidence e JOIN payment_attempts a "
                "ON a.id = e.attempt_id AND a.order_id = e.order_id")).all()
            assert [tuple(r) for r in kept] == [("ord_1", "att_1")]
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            with pytest.raises(sa.exc.IntegrityError):  # another order's attempt: refused
                await conn.exec_driver_sql(
                    "INSERT INTO evidence (unique_key, kind, order_id, attempt_id, amount, "
                    "verdict, observed_at, recorded_at) VALUES ('k2', 'manual', 'ord_2', "
                    "'att_1', 1000, 'settle', '2026-11-29 00:00:00', '2026-11-29 00:00:00')")
    finally:
        await engine.dispose()


async def test_a_failed_sqlite_migration_stores_nothing_and_leaves_keys_enforced(
    tmp_path: Path,
) -> None:
    from orchestrator.store.engine import _run_migrations

    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'lunas.db'}"))
    try:
        await migrate(engine)

        def half_done(connection: Connection) -> None:
            connection.exec_driver_sql(_PAID_ORDER[0])  # a row written, then the step fails
            raise RuntimeError("migration step failed")

        with pytest.raises(RuntimeError, match="step failed"):
            await _run_migrations(engine, half_done)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM merchants")).scalar() == 0
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()


_PAID_ORDER = [
    "INSERT INTO merchants (id, name, webhook_secret, created_at) "
    "VALUES ('mer_1', 'Toko', 'whsec_x', '2026-11-29 00:00:00')",
    "INSERT INTO orders (id, merchant_id, merchant_order_id, amount, currency, state, rail, "
    "customer_name, customer_email, customer_phone, created_at, updated_at, expires_at) "
    "VALUES ('ord_1', 'mer_1', 'ord_1', 1000, 'IDR', 'paid', 'manual_transfer', 'Andi', "
    "'a@example.co.id', '0812', '2026-11-29 00:00:00', '2026-11-29 00:00:00', "
    "'2026-11-29 00:00:00')",
    "INSERT INTO orders (id, merchant_id, merchant_order_id, amount, currency, state, rail, "
    "customer_name, customer_email, customer_phone, created_at, updated_at, expires_at) "
    "VALUES ('ord_2', 'mer_1', 'ord_2', 1000, 'IDR', 'paid', 'manual_transfer', 'Andi', "
    "'a@example.co.id', '0812', '2026-11-29 00:00:00', '2026-11-29 00:00:00', "
    "'2026-11-29 00:00:00')",
    "INSERT INTO payment_attempts (id, order_id, rail, provider, state, transfer_amount, "
    "holds_code, created_at, updated_at, expires_at) VALUES ('att_1', 'ord_1', "
    "'manual_transfer', 'bank', 'paid', 1000, 0, '2026-11-29 00:00:00', "
    "'2026-11-29 00:00:00', '2026-11-29 00:00:00')",
    "INSERT INTO evidence (unique_key, kind, order_id, attempt_id, amount, verdict, "
    "observed_at, recorded_at) VALUES ('k1', 'manual', 'ord_1', 'att_1', 1000, 'settle', "
    "'2026-11-29 00:00:00', '2026-11-29 00:00:00')",
]
