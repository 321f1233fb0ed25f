"""Fewer index entries per settled order: drop one orders index, list only open mutations

A statement import writes an index entry per index for every mutation it stores and every order
it settles. Two of those indexes earned nothing:

* ``ix_orders_open_deadline`` (expires_at, state) duplicated ``ix_orders_state_deadline``
  (state, expires_at, since 0006), and the sweeps it served read better from the latter: walking
  deadlines first steps over every paid and expired order of the past.
* ``ix_mutations_match_state`` (match_state, created_at) held every mutation, while the only
  question asked of it is finance's list of mutations a person must resolve, ordered by posting
  time: ``ix_mutations_for_people`` (posted_at, id) holds just those.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As the migration was written (orchestrator.reconciliation.matcher.FOR_PEOPLE may grow later).
_FOR_PEOPLE = sa.text("match_state IN ('unmatched', 'ambiguous', 'likely_duplicate')")


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_mutations_for_people", "mutations",
                           f"(posted_at, id) WHERE {_FOR_PEOPLE.text}")
        online.drop_index("ix_mutations_match_state")
        online.drop_index("ix_orders_open_deadline")
        return
    op.create_index("ix_mutations_for_people", "mutations", ["posted_at", "id"],
                    postgresql_where=_FOR_PEOPLE, sqlite_where=_FOR_PEOPLE)
    op.drop_index("ix_mutations_match_state", table_name="mutations")
    op.drop_index("ix_orders_open_deadline", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_open_deadline", "orders", ["expires_at", "state"])
    op.create_index("ix_mutations_match_state", "mutations", ["match_state", "created_at"])
    op.drop_index("ix_mutations_for_people", table_name="mutations")
