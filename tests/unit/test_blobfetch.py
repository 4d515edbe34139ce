"""The sans-I/O fetch job (spec 03 §7 Fetch): windows, in-order reassembly, hand-over at the
same offset, wrong sizes and hash mismatches."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from openprod.sync.blobfetch import CHUNK, WINDOW, FetchJob

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
H = b"h" * 32


def _job(size: int) -> FetchJob:
    job = FetchJob(H, size)
    for p in (A, B):
        job.have(p, size)
    return job


def test_window_and_in_order_reassembly() -> None:
    size = CHUNK * 10 + 5
    job = _job(size)
    gets = job.start({A, B})
    assert job.provider == A and len(gets) == WINDOW
    assert [g.off for g in gets] == [i * CHUNK for i in range(WINDOW)]
    # the second chunk first: nothing to write until the first arrives
    assert job.chunk(A, CHUNK, size, b"x" * CHUNK) == []
    assert job.chunk(A, 0, size, b"y" * CHUNK) == [b"y" * CHUNK, b"x" * CHUNK]
    assert job.done_off == 2 * CHUNK
    more = job.fill()
    assert [g.off for g in more] == [WINDOW * CHUNK, (WINDOW + 1) * CHUNK]


def test_hand_over_continues_at_the_same_offset() -> None:
    size = CHUNK * 4
    job = _job(size)
    job.start({A, B})
    job.chunk(A, 0, size, b"0" * CHUNK)
    job.lost(A)  # its link went away
    gets = job.start({B})
    assert job.provider == B and [g.off for g in gets] == [CHUNK, 2 * CHUNK, 3 * CHUNK]
    assert job.chunk(A, CHUNK, size, b"late" * (CHUNK // 4)) is None  # not asked of A now


def test_wrong_size_chunk_marks_the_peer_bad() -> None:
    job = _job(CHUNK * 2)
    job.start({A, B})
    assert job.chunk(A, 0, CHUNK * 2, b"short") is None
    assert A in job.bad and job.wrong_bytes and job.provider is None
    assert job.start({A, B}) and job.provider == B


def test_holder_with_another_size_is_skipped() -> None:
    job = FetchJob(H, 100)
    job.have(A, 101)
    job.have(B, 100)
    assert job.candidates() == [B] and not job.wrong_bytes


def test_mismatch_marks_every_contributor_and_restarts() -> None:
    size = CHUNK * 2
    job = _job(size)
    job.have(C, size)
    job.start({A, B, C})
    job.chunk(A, 0, size, b"0" * CHUNK)
    job.lost(A)
    job.start({B, C})
    job.chunk(B, CHUNK, size, b"1" * CHUNK)
    assert job.complete
    job.mark_corrupt()
    assert job.bad == {A, B} and job.done_off == 0 and job.candidates() == [C]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3 * CHUNK + 7), st.integers(0, 2**32))
def test_any_arrival_order_reassembles_the_bytes(size: int, seed: int) -> None:
    rnd = random.Random(seed)
    data = rnd.randbytes(size)
    job = FetchJob(H, size)
    job.have(A, size)
    pending = job.start({A})
    out = b""
    while pending:
        rnd.shuffle(pending)
        g = pending.pop()
        for part in job.chunk(A, g.off, size, data[g.off:g.off + g.len]) or []:
            out += part
        pending += job.fill()
    assert job.complete and out == data
