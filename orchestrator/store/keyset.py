"""Keyset pages: a list ordered by (time, id) continues after the last row of the page before.

Offsets skip or repeat rows when the list changes between pages (a case resolved, a mutation
matched); a key does not. ``after`` names the last row a client saw; it may have left the list
since (its key is still where the next page starts), but it must exist.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.domain.errors import NotFound


async def after(conn: AsyncConnection, at: sa.Column[Any], key: sa.Column[Any],
                last: str, what: str) -> sa.ColumnElement[bool]:
    """Rows ordered after row ``last`` by (``at``, ``key``); NotFound naming ``what`` if none."""
    mark = (await conn.execute(sa.select(at, key).where(key == last))).first()
    if mark is None:
        raise NotFound(f"no {what} {last} to continue after")
    return sa.or_(at > mark[0], sa.and_(at == mark[0], key > mark[1]))
