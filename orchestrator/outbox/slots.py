"""A relay's handler slots: how many handlers run at once, and how many of them one merchant holds.

A relay runs at most ``total`` handlers at once and claims events only for slots that are free, so
a slow handler holds its own slot and no other. Some handlers call a merchant's own endpoint (its
webhooks): those events run in the merchant's *lane*, and one lane holds at most ``per_lane``
slots, so an endpoint that answers slowly or not at all cannot take every slot. Events outside
any lane (lane ``None``) are only bounded by ``total``.

The claim query is told how many slots each lane holds (``queries.MerchantCap``), so what it
returns always fits; ``take`` refuses an event that does not rather than run more than promised.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class Slots:
    def __init__(self, total: int, per_lane: int) -> None:
        if total < 1 or per_lane < 1:
            raise ValueError("a relay needs at least one slot, and a lane at least one")
        self.total = total
        self.per_lane = min(per_lane, total)
        self._in_flight = 0
        self._lanes: Counter[str] = Counter()
        self._openings = 0
        self._opened = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def free(self) -> int:
        return self.total - self._in_flight

    def held(self) -> dict[str, int]:
        """Slots each lane holds now (lanes holding none are left out)."""
        return dict(self._lanes)

    def full_lanes(self) -> frozenset[str]:
        """The lanes holding all the slots they may."""
        return frozenset(lane for lane, n in self._lanes.items() if n >= self.per_lane)

    def take(self, lane: str | None) -> None:
        if self.free < 1 or (lane is not None and self._lanes[lane] >= self.per_lane):
            raise RuntimeError(f"no free slot for lane {lane!r}: the claim took too many")
        self._in_flight += 1
        if lane is not None:
            self._lanes[lane] += 1

    def give(self, lane: str | None) -> None:
        opens = not self.free or (lane is not None and self._lanes[lane] >= self.per_lane)
        self._in_flight -= 1
        if lane is not None:
            self._lanes[lane] -= 1
            if not self._lanes[lane]:
                del self._lanes[lane]
        if opens:
            self._openings += 1
            self._opened.set()

    @property
    def openings(self) -> int:
        """How many times a slot was given back when none was free, or by a full lane: the
        moments a claim may take what the last one could not. A mark for ``opened_since``."""
        return self._openings

    async def opened_since(self, mark: int) -> None:
        """Return once ``openings`` has moved past ``mark`` (at once if it has)."""
        while self._openings == mark:
            self._opened.clear()
            await self._opened.wait()
