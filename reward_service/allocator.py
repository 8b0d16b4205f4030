"""Handing freed memory back to the operating system (glibc), so a burst of large requests does not
leave the front end hundreds of megabytes larger for good.

glibc keeps freed heap memory for reuse, and raises its mmap threshold after large frees so that
later large blocks come from the heap too; with many threads (tokenizer, event loop) that memory
stays fragmented across arenas. Pinning the threshold and trimming after a large request return it.
Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# Requests with more characters than this are followed by a trim (a few milliseconds).
LARGE_REQUEST_CHARS = 1_000_000
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def pin_mmap_threshold() -> None:
    """Blocks of 128 KiB and more (request bodies, big lists) get their own mappings, freed at once."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def release_freed_memory() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
