"""The receipt pipeline's pure half (spec 03 §6.4 steps 1–4): check received bundle records.

`check_records` opens every record (structure, every op hash, the ops digest, the signature
against the *local* workspace id) and checks clock drift. It touches no database, so the runtime
runs it in worker threads, split over both cores, before the OplogWriter admits the survivors
(`Workspace.admit`). Each record yields one `Checked`: a verified `Bundle`, or the reject code
and whether the rejection is settled (a validly signed bundle with bad content, spec 03 §3.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from openprod.core import codec, ids
from openprod.core import hlc as hlcmod
from openprod.core import ops as O
from openprod.core.errors import ClockDriftError, ContentError, IntegrityError
from openprod.sync import messages as m


@attrs.frozen
class Checked:
    record: Any
    bundle: O.Bundle | None = None
    bundle_id: bytes | None = None
    actor: bytes | None = None
    hlc: bytes | None = None
    code: str | None = None  # a reject code of spec 03 §5 when the record failed
    message: str = ""
    settled: bool = False

    @property
    def ok(self) -> bool:
        return self.bundle is not None


def peek(record: Any) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(bundle_id, actor, hlc) as the unverified header claims them, for reporting only."""
    try:
        h = codec.decode(record[0])
        bid, actor, hlc = h.get("bundle"), h.get("actor"), h.get("hlc")
    except Exception:
        return None, None, None
    return (bid if ids.is_id(bid) else None,
            actor if type(actor) is bytes and len(actor) == 32 else None,
            hlc if hlcmod.is_hlc(hlc) else None)


def check_one(record: Any, ws: bytes, check_drift: Callable[[bytes], None]) -> Checked:
    try:
        b = O.open_bundle(record, ws)
    except ContentError as exc:
        d = exc.details
        bid, actor, hlc = d.get("bundle_id"), d.get("actor"), d.get("hlc")
        if hlc is not None:
            try:  # too far in the future as well: a drift failure, never settled
                check_drift(hlc)
            except ClockDriftError as drift:
                return Checked(record, None, bid, actor, hlc, m.REJECT_FUTURE_HLC, drift.message)
        return Checked(record, None, bid, actor, hlc, m.REJECT_CONTENT, exc.message, True)
    except IntegrityError as exc:
        bid, actor, hlc = peek(record)
        code = exc.code if exc.code in m.REJECT_CODES else m.REJECT_MALFORMED
        if "undecodable" in exc.message or "record is" in exc.message:
            code = m.REJECT_MALFORMED
        return Checked(record, None, bid, actor, hlc, code, exc.message)
    try:
        check_drift(b.hlc)
    except ClockDriftError as exc:
        return Checked(record, None, b.bundle_id, b.actor, b.hlc, m.REJECT_FUTURE_HLC,
                       exc.message)
    return Checked(record, b, b.bundle_id, b.actor, b.hlc)


def check_records(records: Sequence[Any], ws: bytes,
                  check_drift: Callable[[bytes], None]) -> list[Checked]:
    return [check_one(r, ws, check_drift) for r in records]


def check_records_at(records: Sequence[Any], ws: bytes, now_ms: int,
                     max_drift_ms: int = hlcmod.MAX_DRIFT_MS) -> list[Checked]:
    """`check_records` with the drift limit as plain numbers (picklable: worker processes)."""
    clock = hlcmod.Clock(lambda: now_ms, max_drift_ms=max_drift_ms)
    return check_records(records, ws, clock.check_drift)
