"""Large temporary buffers straight from the kernel during a pass over many images.

glibc serves allocations above its mmap threshold with mmap and gives them back on free; but the threshold rises to
the size of every mmapped block freed (up to 32 MiB), after which a validation pass's batch buffers (tens of MB, many
sizes: decoded images, normalised input, activations) come from the heap, between small objects that live on, and the
heap fragments: a 96 px build's peak grew by 3-13 KiB per validation image that way (70 KiB before run_batches kept
one logits array). Fixing the threshold at glibc's default (128 KiB) for the pass keeps those buffers out of the heap:
the same build was flat (1,030.1 vs 1,030.9 MiB for 2,000 vs 20,000 images). Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
PASS_THRESHOLD = 128 * 1024  # glibc's default, fixed: every buffer above it is mmapped and returned on free
AFTER_THRESHOLD = 32 * 1024 * 1024  # glibc's dynamic maximum: what the threshold grows to anyway in long runs


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


@contextlib.contextmanager
def pass_buffers_unpooled() -> Iterator[None]:
    """Within the block, allocations of 128 KiB and more are mmapped (and returned when freed); after it, freed
    memory is trimmed back to the system and the threshold left where glibc would have taken it."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, PASS_THRESHOLD)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, AFTER_THRESHOLD)
            libc.malloc_trim(0)
