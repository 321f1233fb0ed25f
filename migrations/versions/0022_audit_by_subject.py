"""Audit entries by subject, for an order's payment record

``GET /v1/ops/orders/{id}`` (services/order_record.py) shows what people did about the order's
review cases and bank lines: the audit entries of those subjects, which without this index
meant reading the whole audit log on every lookup.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from migrations import online

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_audit_log_subject", "audit_log", "(subject_type, subject_id)")
        return
    op.create_index("ix_audit_log_subject", "audit_log", ["subject_type", "subject_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_subject", table_name="audit_log")
