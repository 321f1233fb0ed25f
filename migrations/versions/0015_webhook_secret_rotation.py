"""The webhook signing secret a rotation replaced, and until when it still signs

``lunas merchants rotate-secret`` gives a merchant a new secret and keeps the old one for an
overlap (``LUNAS_WEBHOOK_SECRET_OVERLAP``, a day by default), during which every delivery is
signed under both: the merchant deploys the new secret whenever it suits them within the overlap,
and no delivery fails verification meanwhile. Two nullable columns on ``merchants``.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if online.on_postgresql():
        # Nullable, no default: a catalogue change, no rewrite. Its lock blocks every capture's
        # API-key lookup (which reads merchants), so it is taken for an instant or not at all.
        online.alter_table("merchants",
                           "ADD COLUMN IF NOT EXISTS previous_webhook_secret varchar(128), "
                           "ADD COLUMN IF NOT EXISTS previous_webhook_secret_expires_at "
                           "timestamptz")
        return
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_webhook_secret", sa.String(length=128),
                                      nullable=True))
        batch_op.add_column(sa.Column("previous_webhook_secret_expires_at",
                                      sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    if online.on_postgresql():
        online.alter_table("merchants",
                           "DROP COLUMN IF EXISTS previous_webhook_secret_expires_at, "
                           "DROP COLUMN IF EXISTS previous_webhook_secret")
        return
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.drop_column("previous_webhook_secret_expires_at")
        batch_op.drop_column("previous_webhook_secret")
