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
* the instant catalogue changes that do take a write-blocking lock give up after
  ``LOCK_TIMEOUT`` instead of queueing every writer behind them while a long transaction runs.

Each step looks first whether it was done already, so a migration stopped half way (a lock
timeout, a killed deploy) is simply run again. A ``CREATE INDEX CONCURRENTLY`` that failed leaves
an invalid index behind; it is dropped and built again.

SQLite (the embedded default) has no such locks worth avoiding: its revisions stay as they were.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

LOCK_TIMEOUT = "5s"
"""How long an instant change waits for its lock before the migration stops (run it again)."""


def on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _index_valid(name: str) -> bool | None:
    """True if the index exists and is usable, False if a failed concurrent build left it
    invalid, None if there is no such index."""
    return op.get_bind().execute(sa.text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"),
        {"name": name}).scalar()


def _constraint_exists(table: str, name: str) -> bool:
    return bool(op.get_bind().execute(sa.text(
        "SELECT 1 FROM pg_constraint WHERE conname = :name "
        "AND conrelid = (quote_ident(current_schema()) || '.' || quote_ident(:table))::regclass"),
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
    if not _constraint_exists(table, name):
        _brief_locks()
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")


def add_foreign_key(name: str, table: str, columns: str, referred: str) -> None:
    """Add the key ``NOT VALID`` (enforced for new rows from this instant), then check the rows
    already there in a transaction of its own, under a lock that lets them be written."""
    if not _constraint_exists(table, name):
        _brief_locks()
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY {columns} "
                   f"REFERENCES {referred} NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def drop_constraint(table: str, name: str) -> None:
    _brief_locks()
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def _brief_locks() -> None:
    # For the rest of this revision's transaction; the autocommit blocks run without it, since
    # a concurrent build must wait for old transactions however long they take.
    op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
