"""How actors run blocking work (SQLite, hashing, zeroconf): in a worker thread, or inline.

Every actor calls `run_sync` instead of `trio.to_thread.run_sync`. Production runs the function
in a worker thread. The simulation harness sets `INLINE` so the function runs on the trio thread
instead: with `MockClock(autojump_threshold=0)` a busy worker thread looks like an idle run and
the clock would jump past every timeout (spec 03 §9, "thread offloads run inline").
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("openprod_inline", default=False)


async def run_sync(fn: Callable[..., T], *args: object,
                   limiter: trio.CapacityLimiter | None = None,
                   abandon_on_cancel: bool = False) -> T:
    if INLINE.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter,
                                         abandon_on_cancel=abandon_on_cancel)
