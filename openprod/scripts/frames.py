"""Framing of the ScriptRunner ⇄ host pipe (spec 04 §7.2).

A frame is a 4-byte big-endian length followed by one canonical CBOR map (01 codec), at most
64 MiB. `encode_frame` and `FrameReader` are pure (the runner feeds bytes from trio streams);
`read_frame`/`write_frame` are the blocking helpers the host uses on its stdin/stdout.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from openprod.core import codec
from openprod.core.errors import CodecError, OpenprodError

MAX_FRAME = 64 * 1024 * 1024
HEADER = struct.Struct(">I")


class FrameError(OpenprodError):
    """Bytes on the pipe that are not a valid frame: the peer is broken, stop talking to it."""

    code = "bad_frame"


def encode_frame(msg: dict[str, Any]) -> bytes:
    """The bytes of one frame carrying `msg` (a map with text keys)."""
    if type(msg) is not dict:
        raise FrameError("a frame carries a map")
    try:
        body = codec.encode(msg)
    except CodecError as exc:
        raise FrameError(f"frame not encodable: {exc.message}") from exc
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def _decode_body(body: bytes) -> dict[str, Any]:
    try:
        msg = codec.decode(body, max_size=MAX_FRAME)
    except CodecError as exc:
        raise FrameError(f"bad frame body: {exc.message}") from exc
    if type(msg) is not dict:
        raise FrameError("a frame must carry a map")
    return msg


def _check_length(n: int) -> None:
    if n > MAX_FRAME:
        raise FrameError(f"announced frame of {n} bytes exceeds {MAX_FRAME}")
    if n == 0:
        raise FrameError("empty frame")


class FrameReader:
    """Incremental decoder: `feed` bytes as they arrive, get back the frames they complete.

    After a FrameError the stream is unusable (framing is lost); callers drop the peer.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame (non-zero at EOF = truncated frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._broken:
            raise FrameError("stream already failed")
        self._buf += data
        out: list[dict[str, Any]] = []
        try:
            while len(self._buf) >= HEADER.size:
                (n,) = HEADER.unpack_from(self._buf)
                _check_length(n)
                end = HEADER.size + n
                if len(self._buf) < end:
                    break
                body = bytes(self._buf[HEADER.size:end])
                del self._buf[:end]
                out.append(_decode_body(body))
        except FrameError:
            self._broken = True
            raise
        return out


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(f: BinaryIO) -> dict[str, Any] | None:
    """Block for the next frame; None on a clean EOF (between frames)."""
    head = _read_exactly(f, HEADER.size)
    if not head:
        return None
    if len(head) < HEADER.size:
        raise FrameError("stream ended inside a frame header")
    (n,) = HEADER.unpack(head)
    _check_length(n)
    body = _read_exactly(f, n)
    if len(body) < n:
        raise FrameError("stream ended inside a frame")
    return _decode_body(body)


def write_frame(f: BinaryIO, msg: dict[str, Any]) -> None:
    """Write one frame and flush it (the peer blocks on it)."""
    write_encoded(f, encode_frame(msg))


def write_encoded(f: BinaryIO, frame: bytes) -> None:
    """Write the bytes of an already encoded frame, whole, and flush them."""
    view = memoryview(frame)
    # an unbuffered pipe may take a large frame in several writes
    while view:
        n = f.write(view)
        if not n:
            raise FrameError("pipe refused the frame")
        view = view[n:]
    f.flush()
