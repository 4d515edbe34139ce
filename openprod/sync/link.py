"""One authenticated link's replication bookkeeping (spec 03 §6.1–6.3), sans I/O.

The runtime's SyncPeer feeds it the messages it receives after the handshake and asks it what
to do; it never touches a socket, a timer or the database:

- `on_clock`: the peer's clock (re)starts our outbound session from its VC (`full` = from
  nothing); if the peer holds something we lack and we have no request open toward it, we
  answer with our own clock.
- `ops`: numbers an outgoing `ops` message and counts it unacked (at most `max_unacked` in
  flight; `window_open`).
- `on_ack`: forgets the acked message and learns the peer's VC. A `gap` or any other rejection
  re-bases the session on `ack.vc` (a restart), except when it teaches nothing new (the same VC
  as the last re-base) or the peer refused a bundle from the future: then we wait for the
  peer's next clock (anti-entropy), so a bundle the peer cannot take never loops.
- `on_ops_received` / `ack_for`: the inbound side's session state and its acks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from openprod.core import vclock as vcmod
from openprod.sync import messages as m

AckVerdict = Literal["ok", "restart", "defer"]


class Link:
    def __init__(self, *, max_unacked: int = 4) -> None:
        self.max_unacked = max_unacked
        self.next_seq = 1
        self.unacked: dict[int, int] = {}  # seq → bundles in it
        self.peer_vc: vcmod.VClock = {}  # what the peer is known to hold (clock ∪ acks)
        self.session_request: vcmod.VClock | None = None  # start a session from this VC
        self.session_active = False
        self.requested = True  # the handshake sends our clock: a request is open
        self.deferred = False
        self.inbound_done = False
        self.outbound_done = False
        self._rebased_on: vcmod.VClock | None = None
        self.full_requested = False

    # --- outbound ------------------------------------------------------------------------------

    def on_clock(self, msg: m.ClockMsg, local_vc: Mapping[bytes, bytes]) -> list[m.Message]:
        if not msg.full:
            self.peer_vc = vcmod.merge(self.peer_vc, msg.vc)
        self.session_request = {} if msg.full else dict(msg.vc)
        self.deferred = False
        self._rebased_on = None
        self.outbound_done = False
        if not vcmod.covers(local_vc, msg.vc) and not self.requested:
            return [self.clock(local_vc)]
        return []

    def clock(self, local_vc: Mapping[bytes, bytes], *, full: bool = False) -> m.ClockMsg:
        """Our clock, sent as a request: the peer's session toward us answers it."""
        self.requested = True
        self.inbound_done = False
        return m.ClockMsg(vc=dict(local_vc), full=full)

    def take_session(self) -> vcmod.VClock | None:
        req, self.session_request = self.session_request, None
        if req is not None:
            self.session_active = True
            self.outbound_done = False
        return req

    def end_session(self) -> None:
        self.session_active = False
        self.outbound_done = True

    @property
    def window_open(self) -> bool:
        return len(self.unacked) < self.max_unacked

    def ops(self, records: list[list[Any]], prev: Mapping[bytes, bytes], *,
            remaining: int | None = None, done: bool = False, live: bool = False,
            more: bool = False, cont: list[bytes] | None = None) -> m.Ops:
        seq = self.next_seq
        self.next_seq += 1
        self.unacked[seq] = len(records)
        return m.Ops(seq=seq, prev=dict(prev), bundles=records, done=done, live=live,
                     remaining=remaining, more=more, cont=cont)

    def on_ack(self, ack: m.Ack) -> AckVerdict:
        if ack.seq not in self.unacked:
            raise m.ProtocolError(m.CLOSE_PROTOCOL, "ack for a message never sent", seq=ack.seq)
        del self.unacked[ack.seq]
        self.peer_vc = vcmod.merge(self.peer_vc, ack.vc)
        codes = {code for _, code in ack.rejected}
        if not codes:
            return "ok"
        if m.REJECT_FUTURE_HLC in codes or self.deferred or self._rebased_on == ack.vc:
            self.deferred = True
            return "defer"
        self._rebased_on = dict(ack.vc)
        self.session_request = dict(ack.vc)
        return "restart"

    # --- inbound -------------------------------------------------------------------------------

    def on_ops_received(self, msg: m.Ops) -> None:
        if msg.done and not msg.live:
            self.requested = False
            self.inbound_done = True

    @staticmethod
    def ack_for(msg: m.Ops, vc: Mapping[bytes, bytes], applied: int, dup: int,
                rejected: Sequence[tuple[bytes | None, str]]) -> m.Ack:
        rej = [[bid, code] for bid, code in rejected
               if bid is not None and code in m.REJECT_CODES]
        return m.Ack(seq=msg.seq, vc=dict(vc), applied=applied, dup=dup, rejected=rej)

    @property
    def quiet(self) -> bool:
        """Both directions finished their sessions and nothing awaits an ack."""
        return (self.inbound_done and self.outbound_done and not self.unacked
                and not self.session_active and self.session_request is None)
