"""The in-process test harness of spec 03 §9: `Peer` nodes driven through their HTTP routes."""

from tests.harness.peer import EventStream, HarnessApiError, Peer, error_class, open_peer

__all__ = ["EventStream", "HarnessApiError", "Peer", "error_class", "open_peer"]
