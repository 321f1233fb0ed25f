"""Matched credits by account and amount, for a debit that may reverse one

A debit of the same amount on the same account within days of a credit that paid an order may
take that payment back (the bank's correction, or the merchant refunding by hand). Finding the
credit needs (amount, posted_at) over matched credits only; the account is checked on the rows
found (a text column in the key costs every import a comparison per level per matched credit).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MATCHED_CREDIT = "match_state = 'matched' AND direction = 'CR'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_mutations_matched_credits", "mutations",
                           f"(amount, posted_at) WHERE {_MATCHED_CREDIT}")
        return
    op.create_index("ix_mutations_matched_credits", "mutations",
                    ["amount", "posted_at"],
                    sqlite_where=sa.text(_MATCHED_CREDIT))


def downgrade() -> None:
    op.drop_index("ix_mutations_matched_credits", table_name="mutations")
