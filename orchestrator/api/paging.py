"""How many rows a list endpoint answers with: its ``limit`` query parameter."""

from __future__ import annotations

from typing import Any

from orchestrator.api.errors import BadRequest

MAX_LIMIT = 1000


def page_limit(raw: str) -> int:
    """``limit`` as sent, 1 to ``MAX_LIMIT``, in plain ASCII digits. Taken as text, because
    litestar's int coercion reads "1e3" and "1.0" too, and int() alone takes "+5", " 5",
    "1_000" and other scripts' digits: none is how a person writes a count."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4
            and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest(f"limit is a whole number from 1 to {MAX_LIMIT}, in digits",
                         code="bad_limit")
    return int(raw)


def page(rows: list[dict[str, Any]], size: int, *, key: str = "id") -> dict[str, Any]:
    """A list answer: the rows, and ``next_after``, the ``key`` of the last row, to ask
    ``after`` for the next page (null when this page was not full: there is none)."""
    return {"data": rows, "next_after": rows[-1][key] if len(rows) == size else None}
