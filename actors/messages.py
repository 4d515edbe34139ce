"""Messages between actors: small frozen attrs classes; replies travel on one-shot channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import outcome
import trio

from openprod.engine.workspace import Workspace


@attrs.frozen
class Call:
    """Run `fn` against the OplogWriter's workspace; the outcome comes back on `reply`."""

    fn: Callable[[Workspace], Any]
    reply: trio.MemorySendChannel[outcome.Outcome[Any]]
    label: str = ""


@attrs.frozen
class Appended:
    """The OplogWriter appended up to `seq` (projections should catch up)."""

    seq: int
