"""The audit trail: who did what to which record, when and why. Written in the same transaction
as the action it records, so an action without its audit row cannot exist."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store.tables import audit_log


async def record_audit(
    conn: AsyncConnection, *, actor: str, action: str, subject_type: str, subject_id: str,
    now: datetime, reason: str | None = None, details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(audit_log.insert().values(
        at=now, actor=actor, action=action, subject_type=subject_type, subject_id=subject_id,
        reason=reason, details=details,
    ))
