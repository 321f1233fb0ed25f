"""Long-running processes keep their start-up heap out of the garbage collector's view.

Everything alive once a process has started (modules, the container, pools, SQLAlchemy's compiled
statements) lives as long as the process. A full collection scans all of it: ~70 ms on this
code's start-up heap of ~110,000 objects, a pause in which the event loop does nothing. In the
api that was the status page's p99 (bench/statuspage.py); in the worker it bunches status
reads that were admitted on pace but go out after the pause, so a provider sees more in one
second than the pace allows (bench/recovery.py). ``gc.freeze`` moves those objects to a
permanent generation that collections skip.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    gc.collect()  # start-up garbage first: frozen objects are never collected
    gc.freeze()
