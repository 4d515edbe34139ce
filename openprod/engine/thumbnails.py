"""Thumbnails of stored blobs (J9): images through Pillow, the first page of a PDF through
pypdfium2 (PDFium, shipped inside its wheel). Synchronous and CPU-bound: the runtime calls it in
a worker thread. The kind is sniffed from the file's first bytes, not from the declared type.

A thumbnail is a PNG whose longer side is at most 256 px (never enlarged). Files that are not
an image or a PDF, or that cannot be decoded (truncated, encrypted, a decompression bomb), have
no thumbnail.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

MAX_SIDE = 256
# PDFium is not thread-safe: one rendering at a time in this process
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
                b"II*\x00", b"MM\x00*")


def kind_of(path: Path) -> str | None:
    """'image', 'pdf' or None, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if b"%PDF-" in head:  # the header may follow a few junk bytes
        return "pdf"
    return None


def render(src: Path, dest: Path, *,
           pdf_lock: contextlib.AbstractContextManager[Any] | None = None) -> bool:
    """Write the thumbnail of src as a PNG at dest; False when src has none. PDFium is not
    thread-safe: callers rendering from several threads pass one shared `pdf_lock`."""
    kind = kind_of(src)
    if kind == "image":
        return _image(src, dest)
    if kind == "pdf":
        return _pdf(src, dest, pdf_lock or contextlib.nullcontext())
    return False


def _image(src: Path, dest: Path) -> bool:
    from PIL import Image, ImageOps

    try:
        with Image.open(src) as im:
            im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale
            # the displayed orientation; a copy, so the decoded file is closed after this
            out = ImageOps.exif_transpose(im)
            out.thumbnail((MAX_SIDE, MAX_SIDE))
            _save(out, dest)
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def _pdf(src: Path, dest: Path, lock: contextlib.AbstractContextManager[Any]) -> bool:
    import pypdfium2 as pdfium

    with lock:
        try:
            pdf = pdfium.PdfDocument(str(src))
        except pdfium.PdfiumError:
            return False
        try:
            if len(pdf) == 0:
                return False
            page = pdf[0]
            width, height = page.get_size()
            if width <= 0 or height <= 0:
                return False
            scale = min(MAX_SIDE / max(width, height), 4.0)
            im = page.render(scale=scale).to_pil()
        except pdfium.PdfiumError:
            return False
        finally:
            pdf.close()
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    _save(im, dest)
    return True


def _save(im: object, dest: Path) -> None:
    from PIL import Image

    assert isinstance(im, Image.Image)
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        has_alpha = "A" in im.mode or (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha else "RGB")
    im.save(dest, "PNG")


__all__ = ["MAX_SIDE", "kind_of", "render"]
