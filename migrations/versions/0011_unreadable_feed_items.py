"""Unreadable feed items: what the Moota feed listed that Lunas could not read, kept for a person

Until now one such item failed its whole page, every poll, forever: the feed went stale and every
manual-transfer order at its deadline waited for a person. Now the item is kept here and the feed
moves on.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A new table: no lock on any table writers use, so nothing of migrations/online.py is needed.
    op.create_table(
        "unreadable_feed_items",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("feed", sa.String(length=32), nullable=False),
        sa.Column("item_key", sa.String(length=64), nullable=False),
        sa.Column("mutation_ref", sa.String(length=200), nullable=True),
        sa.Column("raw_item", sa.Text(), nullable=False),
        sa.Column("problem", sa.String(length=500), nullable=False),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("closed_at", _TS, nullable=True),
        sa.Column("closed_by", sa.String(length=200), nullable=True),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unreadable_feed_items")),
        sa.UniqueConstraint("item_key", name=op.f("uq_unreadable_feed_items_item_key")),
    )
    op.create_index("ix_unreadable_feed_items_state", "unreadable_feed_items",
                    ["state", "first_seen_at"])
    with_ref = sa.text("mutation_ref IS NOT NULL")
    op.create_index("uq_unreadable_feed_items_feed_mutation_ref", "unreadable_feed_items",
                    ["feed", "mutation_ref"], unique=True, postgresql_where=with_ref,
                    sqlite_where=with_ref)


def downgrade() -> None:
    op.drop_index("uq_unreadable_feed_items_feed_mutation_ref",
                  table_name="unreadable_feed_items")
    op.drop_index("ix_unreadable_feed_items_state", table_name="unreadable_feed_items")
    op.drop_table("unreadable_feed_items")
