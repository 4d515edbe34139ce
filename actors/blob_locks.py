"""The locks that let worker threads share a BlobStore (its SQLite connection) and PDFium (not
thread-safe): the runtime's side of `openprod.engine.blobs`, which stays lock-free itself."""

from __future__ import annotations

import threading

from openprod.engine.blobs import BlobStore

PDFIUM = threading.Lock()  # one for the whole process: PDFium has global state


def shared(store: BlobStore) -> BlobStore:
    """Make store safe to use from several worker threads at once; returns it."""
    store.lock = threading.RLock()
    store.render_lock = PDFIUM
    return store
