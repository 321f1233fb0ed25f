"""Matched credits by amount, for a debit that may reverse one; open review cases by reason

A debit of the same amount on the same account within days of a credit that paid an order may
take that payment back (the bank's correction, or the merchant refunding by hand). Finding the
credit needs (amount, posted_at) over matched credits only; the account is checked on the rows
found (a text column in the key costs every import a comparison per level per matched credit).

The possible-reversal alert counts open review cases by reason at every scrape: an index of the
open ones keeps that from reading every case ever resolved.

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
_OPEN = "state = 'open'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_mutations_matched_credits", "mutations",
                           f"(amount, posted_at) WHERE {_MATCHED_CREDIT}")
        online.build_index("ix_review_cases_open_reason", "review_cases",
                           f"(reason) WHERE {_OPEN}")
        return
    op.create_index("ix_mutations_matched_credits", "mutations",
                    ["amount", "posted_at"],
                    sqlite_where=sa.text(_MATCHED_CREDIT))
    op.create_index("ix_review_cases_open_reason", "review_cases", ["reason"],
                    sqlite_where=sa.text(_OPEN))


def downgrade() -> None:
    op.drop_index("ix_review_cases_open_reason", table_name="review_cases")
    op.drop_index("ix_mutations_matched_credits", table_name="mutations")
