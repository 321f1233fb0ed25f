"""Debits no credit has claimed yet, by account and day, for a credit stored after its reversal

A debit is looked at as a possible reversal when it is stored, and again when a credit of its
amount is matched after it (statements uploaded out of order, a credit's push lost and caught
later by the poll). The second question starts from the credit: the debits of its account in
the days after it still ``ignored``. Unindexed, every push and every import read all mutations.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNFLAGGED_DEBIT = "match_state = 'ignored' AND direction = 'DB'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_mutations_unflagged_debits", "mutations",
                           f"(account_number, posted_at) WHERE {_UNFLAGGED_DEBIT}")
        return
    op.create_index("ix_mutations_unflagged_debits", "mutations",
                    ["account_number", "posted_at"], sqlite_where=sa.text(_UNFLAGGED_DEBIT))


def downgrade() -> None:
    op.drop_index("ix_mutations_unflagged_debits", table_name="mutations")
