"""Which decoded JSON a column can hold (``orchestrator/domain/text.py``)."""

from __future__ import annotations

import json

from orchestrator.domain.text import MAX_NESTING, nests_deeper_than, unstorable


def test_ordinary_text_emoji_and_empty_values_are_storable() -> None:
    body = json.loads('{"name": "Andi \\ud83d\\ude00", "tags": [], "m": {"a": [1, null, ""]}}')
    assert unstorable(body) is None


def test_a_nul_is_named_by_where_it_is() -> None:
    assert unstorable({"customer": {"name": "a\x00b"}}) == \
        "customer.name contains a NUL character"
    assert unstorable({"items": ["ok", "x\x00"]}) == "items[1] contains a NUL character"
    assert unstorable({"a\x00": 1}) == "a key in body contains a NUL character"


def test_a_lone_surrogate_is_unstorable_a_pair_is_not() -> None:
    assert "unpaired" in str(unstorable(json.loads('{"s": "\\ud800x"}')))
    assert "unpaired" in str(unstorable(json.loads('{"s": "\\udc00"}')))
    assert unstorable(json.loads('{"s": "\\ud800\\udc00"}')) is None


def test_nesting_is_limited() -> None:
    ok: object = "leaf"
    for _ in range(MAX_NESTING):
        ok = [ok]
    assert unstorable(ok) is None
    assert "nests deeper" in str(unstorable([ok]))


def test_nesting_is_measured_without_recursion() -> None:
    ok: object = {"k": "leaf"}
    for _ in range(MAX_NESTING - 1):
        ok = [ok]
    assert not nests_deeper_than(ok, MAX_NESTING)
    assert nests_deeper_than([ok], MAX_NESTING)
    past_the_stack: object = []
    for _ in range(100_000):
        past_the_stack = [past_the_stack]
    assert nests_deeper_than(past_the_stack, MAX_NESTING)


def test_a_body_may_nest_32_levels_of_objects_and_no_more() -> None:
    """Nesting is counted through objects as through arrays, both by ``unstorable`` and by
    ``nests_deeper_than``."""
    assert MAX_NESTING == 32
    ok: object = "leaf"
    for _ in range(32):
        ok = {"k": ok}
    assert unstorable(ok) is None
    assert not nests_deeper_than(ok, 32)
    assert unstorable({"k": ok}) == ".".join(["k"] * 32) + " nests deeper than 32 levels"
    assert nests_deeper_than({"k": ok}, 32)
