"""The currency of a review case's amount

A case opened for a payment a provider reported in another currency (``currency_mismatch``)
showed that number with nothing saying it was not rupiah. ``review_cases.currency`` says what
``amount`` counts; Lunas writes it on every case it opens from now on.

Cases opened before: every reason but ``currency_mismatch`` is about rupiah (Lunas charges in
nothing else and reads bank statements in rupiah), so those say ``IDR``. A ``currency_mismatch``
case's currency was never recorded on it (its evidence details have it): it stays NULL, shown as
unknown, rather than guessed. Review cases are few (a person works each), so one UPDATE.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if online.on_postgresql():
        # Nullable, no default: a catalogue change, no rewrite.
        online.alter_table("review_cases", "ADD COLUMN IF NOT EXISTS currency varchar(16)")
    else:
        with op.batch_alter_table("review_cases", schema=None) as batch_op:
            batch_op.add_column(sa.Column("currency", sa.String(length=16), nullable=True))
    op.execute("UPDATE review_cases SET currency = 'IDR' "
               "WHERE currency IS NULL AND reason <> 'currency_mismatch'")


def downgrade() -> None:
    if online.on_postgresql():
        online.alter_table("review_cases", "DROP COLUMN IF EXISTS currency")
        return
    with op.batch_alter_table("review_cases", schema=None) as batch_op:
        batch_op.drop_column("currency")
