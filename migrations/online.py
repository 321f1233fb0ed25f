"""Schema changes a busy PostgreSQL takes without stopping its writers.

A plain ``CREATE INDEX`` holds a SHARE lock on its table for the whole build, and an added foreign
key checks every row under a lock that blocks writes to both tables; worse, while either waits for
a long transaction to finish, every writer queues behind the waiting lock. On a production
database of millions of orders that is minutes without capture. So revisions from 0009 on change
PostgreSQL in steps that each hold a write-blocking lock only for an instant:

* indexes are built and dropped ``CONCURRENTLY`` (outside a transaction, which Alembic's
  ``autocommit_block`` gives; ``lunas migrate`` runs each revision in its own transaction so the
  block commits nothing else);
* a foreign key is added ``NOT VALID`` (new rows are checked at once) and validated afterwards
  under a lock that lets rows be written meanwhile;
* each instant catalogue change that does take a write-blocking lock runs alone in its own
  transaction (so no lock is held while another is awaited), and gives up after
  ``LOCK_TIMEOUT`` instead of queueing every writer behind it while a long transaction runs; it
  is tried ``LOCK_TRIES`` times before the migration stops.

Each step looks first whether it was done already, so a migration stopped half way (a lock
timeout, a killed deploy) is simply run again. A ``CREATE INDEX CONCURRENTLY`` that failed leaves
an invalid index behind; it is dropped and built again.

SQLite (the embedded default) has no such locks worth avoiding: its revisions stay as they were.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

LOCK_TIMEOUT = "2s"
"""How long an instant change waits for its lock before it gives up (and is tried again)."""
LOCK_TRIES = 5


def on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _index_valid(name: str) -> bool | None:
    """True if the index exists and is usable, False if a failed concurrent build left it
    invalid, None if there is no such index."""
    # quote_ident on both parts: a schema or index name needing quotes still resolves.
    return op.get_bind().execute(sa.text(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = "
        "to_regclass(quote_ident(current_schema()) || '.' || quote_ident(:name))"),
        {"name": name}).scalar()


def _constraint_exists(table: str, name: str) -> bool:
    return bool(op.get_bind().execute(sa.text(
        "SELECT 1 FROM pg_constraint WHERE conname = :name AND conrelid = "
        "to_regclass(quote_ident(current_schema()) || '.' || quote_ident(:table))"),
        {"name": name, "table": table}).scalar())


def build_index(name: str, table: str, definition: str, *, unique: bool = False) -> None:
    """``CREATE [UNIQUE] INDEX CONCURRENTLY name ON table definition`` unless a valid one is
    there. ``definition`` is the column list and any ``WHERE`` clause."""
    with op.get_context().autocommit_block():
        valid = _index_valid(name)
        if valid:
            return
        if valid is False:
            op.execute(f"DROP INDEX CONCURRENTLY {name}")
        op.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {name} "
                   f"ON {table} {definition}")


def drop_index(name: str) -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def adopt_unique_index(table: str, name: str) -> None:
    """Make the unique index ``name`` (built with ``build_index``) the table's unique constraint
    of the same name: an instant catalogue change, no second build."""
    with op.get_context().autocommit_block():
        if not _constraint_exists(table, name):
            _instant(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")


def add_foreign_key(name: str, table: str, columns: str, referred: str) -> None:
    """Add the key ``NOT VALID`` (enforced for new rows from this instant), then check the rows
    already there in a transaction of its own, under a lock that lets them be written."""
    with op.get_context().autocommit_block():
        if not _constraint_exists(table, name):
            _instant(f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY {columns} "
                     f"REFERENCES {referred} NOT VALID")
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def alter_table(table: str, changes: str) -> None:
    """``ALTER TABLE table changes`` as one instant change (e.g. ``ADD COLUMN IF NOT EXISTS``
    of a nullable column with no default, a catalogue-only change): brief, but its lock blocks
    even readers of the table, so it must not queue behind a long transaction."""
    with op.get_context().autocommit_block():
        _instant(f"ALTER TABLE {table} {changes}")


def drop_constraint(table: str, name: str) -> None:
    with op.get_context().autocommit_block():
        _instant(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def _instant(statement: str) -> None:
    """Run ``statement`` (in an autocommit block: its own transaction) with ``LOCK_TIMEOUT``,
    trying again after a lock timeout. The concurrent builds run without the timeout, since
    they must wait for older transactions however long those take."""
    for attempt in range(1, LOCK_TRIES + 1):
        op.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            op.execute(statement)
            return
        except sa.exc.DBAPIError as exc:
            if _sqlstate(exc) != "55P03" or attempt == LOCK_TRIES:  # lock_not_available
                raise
        finally:
            op.execute("RESET lock_timeout")
        time.sleep(1.0)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
