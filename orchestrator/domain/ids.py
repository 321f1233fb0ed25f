"""Identifiers: a type prefix and a time-ordered random part (ULID layout, Crockford base32).

Time-ordered ids keep B-tree inserts local on PostgreSQL; the prefix tells a person reading a log
what kind of thing an id names (``ord_``, ``att_``, ``mut_`` ...).
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
