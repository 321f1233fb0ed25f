"""Due status reads by provider, for the verifier's per-provider claims

The verifier claims each provider's due reads apart (one provider's recovery backlog must not
hold up another's reads). Through ``ix_payment_attempts_next_check_at`` alone, a provider's
claim, and the question whether it has any read due, walked every due read of the other
providers first: behind a backlog of 190,000, every tick read it all, twice.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNDEFERRED = "next_check_at IS NOT NULL AND deferred_on IS NULL"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_payment_attempts_due_by_provider", "payment_attempts",
                           f"(provider, next_check_at) WHERE {_UNDEFERRED}")
        return
    op.create_index("ix_payment_attempts_due_by_provider", "payment_attempts",
                    ["provider", "next_check_at"], sqlite_where=sa.text(_UNDEFERRED))


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_due_by_provider", table_name="payment_attempts")
