"""Text a column can hold. PostgreSQL refuses a NUL character in ``text`` and ``jsonb``, and
UTF-8 has no encoding for an unpaired surrogate (which JSON's ``\\ud800`` escape produces); both
would only fail at the database, as a 500, after the request had passed every other check. No
customer, merchant or provider sends either on purpose, so input carrying them is refused at the
edge, with the place named."""

from __future__ import annotations

from typing import Any

MAX_NESTING = 32
"""How deep a JSON body may nest. Our bodies nest three levels; merchant ``metadata`` a few
more. Far deeper input is an attack on the decoders' recursion, not an order."""


def text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def unstorable(value: Any, *, max_nesting: int = MAX_NESTING) -> str | None:
    """Where a decoded JSON value holds text no column can hold, or nests deeper than
    ``max_nesting`` (e.g. ``"customer.name contains a NUL character"``); None when it holds
    none. Keys are checked as well as values."""
    stack: list[tuple[str, Any, int]] = [("body", value, 0)]
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{where} {problem}"
        elif isinstance(item, dict | list):
            if depth >= max_nesting:
                return f"{where} nests deeper than {max_nesting} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    # A path is named in replies and stored outcomes: keep a long key short.
                    name = f"{where}.{key:.40}" if where != "body" else f"{key:.40}"
                    if isinstance(key, str) and (problem := text_problem(key)):
                        return f"a key in {where} {problem}"
                    stack.append((name, child, depth + 1))
            else:
                stack.extend((f"{where}[{i}]", child, depth + 1) for i, child in enumerate(item))
    return None


def nests_deeper_than(value: Any, max_nesting: int) -> bool:
    """Whether a decoded JSON value holds arrays or objects more than ``max_nesting`` levels
    deep. Iterative, so it answers for a value too deep for the recursive encoders."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_nesting:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
