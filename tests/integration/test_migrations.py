"""The same Alembic migrations build the schema on PostgreSQL and on SQLite, go down and up again,
and leave no drift between the migrations and the tables the code declares."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chaos.proxy import FaultProxy
from migrations import online
from orchestrator.settings import DatabaseSettings
from orchestrator.store.engine import (
    _MIGRATION_LOCK,
    _run_migrations,
    create_engine,
    downgrade,
    migrate,
)
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


async def test_two_deploys_migrating_postgresql_at_once_both_succeed() -> None:
    """Revisions commit one by one on PostgreSQL, so two ``lunas migrate`` at once would race
    (the same table created twice, each other's concurrent index builds dropped); the second
    waits for the first instead."""
    url = await create_database("lunas_migrations")
    first = create_engine(DatabaseSettings(url=url))
    second = create_engine(DatabaseSettings(url=url))
    try:
        # Without the lock they can wait for each other for ever (seen): bounded here.
        await asyncio.wait_for(asyncio.gather(migrate(first), migrate(second)), 60)
        async with first.connect() as conn:
            assert await conn.run_sync(_drift) == []
    finally:
        await first.dispose()
        await second.dispose()
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


# -- PostgreSQL: revisions from 0009 on never queue writers behind a long lock -----------------

@pytest.mark.parametrize(("start", "target", "held", "written"), [
    # 0009 builds a mutations index and drops one of orders'.
    ("0008", "0009", ["mutations"], ["mutations", "orders"]),
    # 0010 builds a unique index on payment_attempts and adds evidence's composite key.
    ("0009", "0010", ["payment_attempts"], ["payment_attempts", "evidence", "orders"]),
    # 0015 adds the rotated webhook secret's columns to merchants, read by every API-key check.
    ("0014", "0015", ["merchants"], ["merchants"]),
    # 0016 adds review_cases.currency (and says IDR on the cases before it).
    ("0015", "0016", ["review_cases"], ["review_cases"]),
    # 0017 builds the outbox index of an order's pending webhooks; every state change writes one.
    ("0016", "0017", ["outbox"], ["outbox"]),
    # 0018 builds the outbox index of each merchant's pending events by type, for the claim.
    ("0017", "0018", ["outbox"], ["outbox"]),
    # 0019 builds the index of attempts by the provider's id; every capture writes an attempt.
    ("0018", "0019", ["payment_attempts"], ["payment_attempts"]),
    # 0020 builds the index of debits no credit has claimed; every import writes mutations.
    ("0019", "0020", ["mutations"], ["mutations"]),
    # 0021 builds the index of due status reads by provider; every capture writes an attempt.
    ("0020", "0021", ["payment_attempts"], ["payment_attempts"]),
    # 0022 builds the index of audit entries by subject; every person's action writes one.
    ("0021", "0022", ["audit_log"], ["audit_log"]),
    # 0023 adds orders.verifying_since and its index; every capture writes an order.
    ("0022", "0023", ["orders"], ["orders"]),
])
async def test_a_postgresql_migration_waiting_for_a_long_transaction_lets_writers_through(
    start: str, target: str, held: list[str], written: list[str],
) -> None:
    """A plain CREATE INDEX or ALTER TABLE waiting for a transaction that writes to its table
    makes every later writer wait behind it: capture stops until the long transaction ends. The
    migration may wait; the writers must not."""
    url = await create_database("lunas_online_migration")
    engine = create_engine(DatabaseSettings(url=url))
    long_tx = create_async_engine(url, poolclass=NullPool)
    writer = create_async_engine(url, poolclass=NullPool)
    try:
        await migrate(engine, start)
        async with long_tx.connect() as holder:
            for table in held:  # the lock every INSERT/UPDATE takes, held by an open transaction
                await holder.exec_driver_sql(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
            upgrade = asyncio.create_task(migrate(engine, target))
            await _until_waiting_on_a_lock(writer)
            assert not upgrade.done()
            async with writer.connect() as conn:
                await conn.exec_driver_sql("SET statement_timeout = '3s'")
                for table in written:  # would raise QueryCanceled after 3 s if queued
                    await conn.exec_driver_sql(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
                await conn.rollback()
            await holder.rollback()
        await asyncio.wait_for(upgrade, 30)
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_drift) == []
    finally:
        await long_tx.dispose()
        await writer.dispose()
        await engine.dispose()
        await drop_database(url)


async def _until_waiting_on_a_lock(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        for _ in range(200):
            waiting = (await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()
            await conn.rollback()
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the migration never waited for the long transaction")


async def test_a_postgresql_migration_stopped_half_way_runs_again() -> None:
    """A concurrent index build that failed leaves an invalid index; a revision stopped after
    some of its steps leaves those done. Running it again finishes the job."""
    url = await create_database("lunas_online_migration")
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine, "0009")
        async with engine.begin() as conn:
            # 0010's first steps done, as a killed deploy would leave them ...
            await conn.exec_driver_sql("CREATE UNIQUE INDEX uq_payment_attempts_order_id_id "
                                       "ON payment_attempts (order_id, id)")
            await conn.exec_driver_sql(
                "ALTER TABLE payment_attempts ADD CONSTRAINT uq_payment_attempts_order_id_id "
                "UNIQUE USING INDEX uq_payment_attempts_order_id_id")
            await conn.exec_driver_sql(
                "ALTER TABLE evidence ADD CONSTRAINT fk_evidence_order_id_payment_attempts "
                "FOREIGN KEY (order_id, attempt_id) REFERENCES payment_attempts (order_id, id) "
                "NOT VALID")
        await downgrade(engine, "0008")  # ... and 0009's index left invalid by a failed build
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE INDEX ix_mutations_for_people ON mutations (posted_at, id) "
                "WHERE match_state = 'unmatched'")  # wrong rows: must not be kept
            await conn.exec_driver_sql(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                "'ix_mutations_for_people'::regclass")
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_drift) == []
            invalid = (await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar()
            unvalidated = (await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_constraint WHERE NOT convalidated")).scalar()
            partial = (await conn.exec_driver_sql(
                "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
                "WHERE indexrelid = 'ix_mutations_for_people'::regclass")).scalar()
        assert (invalid, unvalidated) == (0, 0)
        assert "likely_duplicate" in partial
    finally:
        await engine.dispose()
        await drop_database(url)


async def test_a_postgresql_migration_cut_off_from_the_database_reports_its_own_error() -> None:
    """The lock that makes migrators take turns is released in a ``finally``. When the revision
    failed because the database went out of reach, the unlock fails too and must not replace
    the revision's error. The lock went with the session: the next migrator gets it."""
    url = await create_database("lunas_migrations")
    proxy = FaultProxy("127.0.0.1", 0, "127.0.0.1", 5432)
    await proxy.start()
    through_proxy = sa.make_url(url).set(host="127.0.0.1", port=proxy.port)
    engine = create_engine(DatabaseSettings(url=through_proxy.render_as_string(False)))
    direct = create_async_engine(url, poolclass=NullPool)
    try:
        def cut_off_mid_revision(connection: Connection) -> None:
            proxy.reset()  # this connection dropped, new ones refused
            connection.exec_driver_sql("SELECT 1")

        with pytest.raises(sa.exc.DBAPIError) as raised:
            await _run_migrations(engine, cut_off_mid_revision)
        assert raised.value.statement == "SELECT 1"  # the revision's error, not the unlock's
        proxy.clear()
        async with direct.connect() as conn:
            assert (await conn.exec_driver_sql(
                f"SELECT pg_try_advisory_lock({_MIGRATION_LOCK})")).scalar() is True
            await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
        await migrate(engine)  # the engine's pool kept no broken connection
    finally:
        await direct.dispose()
        await engine.dispose()
        await proxy.stop()
        await drop_database(url)


def _run_instant(connection: Connection, statement: str) -> None:
    context = MigrationContext.configure(connection)
    with Operations.context(context):
        online._instant(statement)


async def test_an_instant_change_gives_up_its_lock_wait_and_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change taking a write-blocking lock waits at most ``LOCK_TIMEOUT`` at a time, so a
    writer queued behind it is held up no longer than that; it tries again while the long
    transaction lasts, and stops with lock_not_available after ``LOCK_TRIES``."""
    monkeypatch.setattr(online, "LOCK_TIMEOUT", "300ms")
    url = await create_database("lunas_online_migration")
    engine = create_engine(DatabaseSettings(url=url))
    holder_engine = create_async_engine(url, poolclass=NullPool)
    migrator = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE ledger (id int)")
        add_column = "ALTER TABLE ledger ADD COLUMN note text"

        # Held for longer than every try: the change stops, and says why.
        monkeypatch.setattr(online, "LOCK_TRIES", 2)
        async with holder_engine.connect() as holder:
            await holder.exec_driver_sql("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")
            async with migrator.connect() as conn:
                with pytest.raises(sa.exc.DBAPIError) as raised:
                    await conn.run_sync(_run_instant, add_column)
            assert online._sqlstate(raised.value) == "55P03"
            await holder.rollback()

        # Held across the first try only: a later try gets the lock, and a writer that came
        # while the change waited got through.
        monkeypatch.setattr(online, "LOCK_TRIES", 5)
        async with holder_engine.connect() as holder, migrator.connect() as conn:
            await holder.exec_driver_sql("LOCK TABLE ledger IN ROW EXCLUSIVE MODE")
            change = asyncio.create_task(conn.run_sync(_run_instant, add_column))
            await _until_waiting_on_a_lock(engine)
            async with engine.connect() as writer:
                await writer.exec_driver_sql("SET statement_timeout = '3s'")
                await writer.exec_driver_sql("INSERT INTO ledger (id) VALUES (1)")
                await writer.commit()
            await holder.rollback()
            await asyncio.wait_for(change, 30)
        async with engine.connect() as conn:
            columns = (await conn.exec_driver_sql(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'ledger' ORDER BY ordinal_position")).scalars().all()
        assert columns == ["id", "note"]
    finally:
        await holder_engine.dispose()
        await migrator.dispose()
        await engine.dispose()
        await drop_database(url)


_STUCK_IN_REVIEW = [
    _PAID_ORDER[0],
    # The window ran out with the provider down; the payment read later was recorded beside the
    # order (on_closed_order, a refund case) and the order stayed in review with no case of its
    # own: what the code before 0014 left behind.
    "INSERT INTO orders (id, merchant_id, merchant_order_id, amount, currency, state, rail, "
    "customer_name, customer_email, customer_phone, created_at, updated_at, expires_at, "
    "review_reason) VALUES ('ord_s', 'mer_1', 'ord_s', 125000, 'IDR', 'needs_review', 'qris', "
    "'Andi', 'a@example.co.id', '0812', '2026-11-20 00:00:00', '2026-11-21 00:00:00', "
    "'2026-11-20 01:00:00', 'verification_window_exhausted')",
    "INSERT INTO payment_attempts (id, order_id, rail, provider, state, transfer_amount, "
    "holds_code, created_at, updated_at, expires_at) VALUES ('att_s', 'ord_s', 'qris', "
    "'midtrans', 'paid', 125000, 0, '2026-11-20 00:00:00', '2026-11-21 00:00:00', "
    "'2026-11-20 01:00:00')",
    "INSERT INTO evidence (unique_key, kind, order_id, attempt_id, amount, verdict, "
    "observed_at, recorded_at) VALUES ('midtrans:status:att_s:paid', 'provider_status', "
    "'ord_s', 'att_s', 125000, 'on_closed_order', '2026-11-20 00:30:00', "
    "'2026-11-21 00:00:00')",
    "INSERT INTO review_cases (id, order_id, reason, recommended_action, amount, state, "
    "created_at) VALUES ('rev_old', 'ord_s', 'payment_on_closed_order', 'refund', 125000, "
    "'open', '2026-11-21 00:00:00')",
]


async def test_orders_left_in_review_by_the_window_get_a_case_a_person_can_decide(
    tmp_path: Path,
) -> None:
    """0014: an order the old code left in review (window ran out, payment recorded beside it)
    gets a case; the expiry sweep does not expire it for lack of a fresh payment; a person
    honours it."""
    from orchestrator.services.expiry import settle_verifying_orders
    from orchestrator.services.reviews import resolve_case
    from orchestrator.store.database import Database

    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'lunas.db'}"))
    try:
        await migrate(engine, "0013")
        async with engine.begin() as conn:
            for sql in _STUCK_IN_REVIEW:
                await conn.exec_driver_sql(sql)
        await migrate(engine)
        async with engine.connect() as conn:
            cases = (await conn.exec_driver_sql(
                "SELECT id, reason, recommended_action, amount FROM review_cases "
                "WHERE order_id = 'ord_s' AND state = 'open' ORDER BY reason")).all()
        assert [tuple(c)[1:] for c in cases] == [
            ("payment_on_closed_order", "refund", 125000),
            ("verification_window_exhausted", "check_at_source", 125000)]
        db = Database(engine)
        now = datetime(2026, 11, 30, tzinfo=UTC)
        await settle_verifying_orders(db, now=now, quarantine=timedelta(hours=1),
                                      window=timedelta(hours=6), batch=100)
        async with engine.connect() as conn:
            state = (await conn.exec_driver_sql(
                "SELECT state FROM orders WHERE id = 'ord_s'")).scalar()
        assert state == "needs_review"  # paid at the provider: never expired by the sweep
        await resolve_case(db, case_id=cases[1].id, action="honour", actor="ops:finance",
                           note="Midtrans shows it paid", now=now, quarantine=timedelta(hours=1))
        async with engine.connect() as conn:
            state = (await conn.exec_driver_sql(
                "SELECT state FROM orders WHERE id = 'ord_s'")).scalar()
        assert state == "paid"
    finally:
        await engine.dispose()


async def _a_merchant_keeps_its_secret_across_0015(url: str) -> None:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine, "0014")
        async with engine.begin() as conn:
            await conn.exec_driver_sql(_PAID_ORDER[0])
        await migrate(engine)
        async with engine.connect() as conn:
            row = (await conn.exec_driver_sql(
                "SELECT webhook_secret, previous_webhook_secret, "
                "previous_webhook_secret_expires_at FROM merchants WHERE id = 'mer_1'")).one()
        assert tuple(row) == ("whsec_x", None, None)  # signs with its one secret, as before
        await downgrade(engine, "0014")
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_drift) == []
            assert (await conn.exec_driver_sql(
                "SELECT webhook_secret FROM merchants WHERE id = 'mer_1'")).scalar() == "whsec_x"
    finally:
        await engine.dispose()


async def test_0015_gives_merchants_a_rotated_secret_and_keeps_theirs_on_sqlite(
    tmp_path: Path,
) -> None:
    await _a_merchant_keeps_its_secret_across_0015(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")


async def test_0015_gives_merchants_a_rotated_secret_and_keeps_theirs_on_postgresql() -> None:
    url = await create_database("lunas_migrations")
    try:
        await _a_merchant_keeps_its_secret_across_0015(url)
    finally:
        await drop_database(url)


_WAITING_BEFORE_0023 = [
    _PAID_ORDER[0],
    # A worker back from an outage put it in verifying 5 h after its deadline (updated_at); its
    # Midtrans QR is unread, the provider down.
    "INSERT INTO orders (id, merchant_id, merchant_order_id, amount, currency, state, rail, "
    "customer_name, customer_email, customer_phone, created_at, updated_at, expires_at) "
    "VALUES ('ord_v', 'mer_1', 'ord_v', 125000, 'IDR', 'verifying', 'qris', 'Andi', "
    "'a@example.co.id', '0812', '2026-11-19 23:00:00', '2026-11-20 05:00:00', "
    "'2026-11-20 00:00:00')",
    "INSERT INTO payment_attempts (id, order_id, rail, provider, state, transfer_amount, "
    "holds_code, created_at, updated_at, expires_at) VALUES ('att_v', 'ord_v', 'qris', "
    "'midtrans', 'active', 125000, FALSE, '2026-11-19 23:00:00', '2026-11-19 23:00:00', "
    "'2026-11-20 00:00:00')",
]


async def _an_order_waiting_across_0023_gets_its_window_from_entry(url: str) -> None:
    from orchestrator.services.expiry import settle_verifying_orders
    from orchestrator.store.database import Database

    engine = create_engine(DatabaseSettings(url=url))
    try:
        await migrate(engine, "0022")
        async with engine.begin() as conn:
            for sql in _WAITING_BEFORE_0023:
                await conn.exec_driver_sql(sql)
        await migrate(engine)
        db = Database(engine)

        async def sweep_at(now: datetime) -> str:
            await settle_verifying_orders(db, now=now, quarantine=timedelta(hours=1),
                                          window=timedelta(hours=6), batch=100)
            async with engine.connect() as conn:
                return str((await conn.exec_driver_sql(
                    "SELECT state FROM orders WHERE id = 'ord_v'")).scalar())

        # 10 h past its deadline, 5 h since it entered verifying: still within its window.
        assert await sweep_at(datetime(2026, 11, 20, 10, 0, tzinfo=UTC)) == "verifying"
        assert await sweep_at(datetime(2026, 11, 20, 11, 1, tzinfo=UTC)) == "needs_review"
    finally:
        await engine.dispose()


async def test_an_order_waiting_across_0023_gets_its_window_from_entry_on_sqlite(
    tmp_path: Path,
) -> None:
    await _an_order_waiting_across_0023_gets_its_window_from_entry(
        f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")


async def test_an_order_waiting_across_0023_gets_its_window_from_entry_on_postgresql() -> None:
    url = await create_database("lunas_migrations")
    try:
        await _an_order_waiting_across_0023_gets_its_window_from_entry(url)
    finally:
        await drop_database(url)
