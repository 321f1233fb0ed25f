"""Fingerprints of bank mutations: the key the database's UNIQUE constraint uses to refuse a
mutation it already holds (STYLE rule 7), so ingestion inserts and lets duplicates bounce.

Statement lines have no bank-issued id. A line's fingerprint is the sha256 of the canonical tuple

    (bank, account digits, posted_at in UTC ISO, direction, amount,
     description with whitespace collapsed and upper-cased, balance or "", occurrence)

serialised as compact JSON (so no field can bleed into the next), where ``occurrence`` is how
many earlier lines *of the same file* have the same tuple without it (0 for the first).

Why this works:

* Re-importing an overlapping statement: the lines both files share are the same lines, with the
  same content, in the same order, so they get the same fingerprints and the constraint drops
  them; only the lines that are new get inserted.
* Two identical genuine lines in one file (the same customer paying the same amount twice on a
  date-only statement) get occurrences 0 and 1, so both are kept. Counting per file rather than
  per import history is what lets a re-import reproduce the same occurrences.
* Normalising the description absorbs padding that differs between exports (Mandiri pads its
  remarks); it cannot absorb a bank rewording a narrative, which would add a duplicate.

Limit: the occurrence counts only within one file. If one import ends between two identical
lines and the next import starts between them, each file holds one copy as occurrence 0, and the
second genuine payment is dropped as a duplicate. Lines are identical only if their balances are
too: BCA, Mandiri and BRI print a running balance on every line, so this needs the account to
come back to the same balance between two same-day, same-amount, same-narrative lines *and* both
imports to split exactly there. That is practically impossible; lines without a balance do carry
the risk.

Moota mutations carry the aggregator's own id (``mutation_id``): their fingerprint is
``sha256("moota:" + id)``. A payment seen both by a Moota push and in an uploaded statement
therefore has two fingerprints: that cross-source duplicate is not caught here, and whoever
matches mutations to orders must expect it (an order is settled at most once).

Changing anything in the canonical tuple changes every fingerprint and breaks deduplication
against mutations already stored: treat it as a data migration.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC

from orchestrator.reconciliation.statements.model import (
    LineFields,
    StatementLine,
    as_fields,
    digits,
)


def fingerprint_statement_lines(
    bank: str, account_number: str, lines: Sequence[StatementLine]
) -> list[str]:
    """One fingerprint per line, in order. Pass all the lines of one file, in file order."""
    return list(iter_fingerprints(bank, account_number, (as_fields(line) for line in lines)))


def iter_fingerprints(
    bank: str, account_number: str, lines: Iterable[LineFields]
) -> Iterator[str]:
    """``fingerprint_statement_lines`` for lines as tuples, one at a time and in order.

    The same fingerprints, built faster: the canonical JSON is written directly whenever
    ``json.dumps`` would write exactly that (a description with nothing to escape), and the
    occurrence count is kept per fingerprint of occurrence 0 (a sha256 of the key, so two keys
    share one only if sha256 collides, which the UNIQUE constraint already rules out)."""
    head = _dump([bank.strip().lower(), digits(account_number)])[:-1]  # '["bca","0123"'
    seen: dict[bytes, int] = {}
    for _, posted_at, amount, direction, description, balance in lines:
        text = " ".join(description.split()).upper()
        text = f'"{text}"' if _NEEDS_ESCAPE.search(text) is None else _dump([text])[1:-1]
        at = (posted_at if posted_at.tzinfo is UTC else posted_at.astimezone(UTC)).isoformat()
        key = f'{head},"{at}","{direction}",{amount},{text},{_balance(balance)}'
        first = hashlib.sha256(f"{key},0]".encode())
        digest = first.digest()
        occurrence = seen.get(digest)
        if occurrence is None:
            seen[digest] = 1
            yield first.hexdigest()
        else:
            seen[digest] = occurrence + 1
            yield _sha256(f"{key},{occurrence}]")


def _balance(balance: int | None) -> str:
    return '""' if balance is None else str(balance)


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f\\"]')
"""What ``json.dumps(ensure_ascii=False)`` escapes in a string: control characters, ``\\`` and
``"``. A string without any is dumped as itself between quotes."""


def fingerprint_moota(mutation_id: str) -> str:
    """Moota's own id is already unique per mutation; the prefix keeps it apart from lines."""
    return _sha256("moota:" + mutation_id)


def _canonical(bank: str, account_number: str, line: StatementLine) -> tuple[str | int, ...]:
    return (
        bank.strip().lower(),
        digits(account_number),
        line.posted_at.astimezone(UTC).isoformat(),
        line.direction,
        line.amount,
        re.sub(r"\s+", " ", line.description).strip().upper(),
        "" if line.balance is None else line.balance,
    )


def _dump(values: list[str | int]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
