"""Keep the backend's memory where it started once a burst of requests is over (glibc's allocator, the collector).

Under load, many threads (uploads, decoding, the model) allocate at once. glibc gives each its own arena (up to 8
per core), and what a burst leaves live in each keeps the freed memory around it from going back to the system: the
RSS stays near its peak. :func:`limit_malloc_arenas` caps the arenas at two, so the memory of a burst stays in few
places; :func:`release_free_memory`, run once the backend is idle, collects the garbage (reference cycles that hold
freed requests) and returns the free pages with ``malloc_trim(0)``. Measured: bench/RESULTS.md, "Backend under
abuse". Where the C library is not glibc (musl, macOS) both calls do what they can: nothing, and a collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

#: glibc's mallopt() parameter for the number of arenas (malloc.h).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def _glibc_function(name: str) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


_TRIM = _glibc_function("malloc_trim")
_MALLOPT = _glibc_function("mallopt")


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas at :data:`MALLOC_ARENAS` for the threads to come; whether the C library could.

    Call it before the threads start (``ccexpert serve`` does, before loading the model). Two arenas cost nothing
    measurable here: the threads that allocate much (the model's, a few decoding) are few.
    """
    return _MALLOPT is not None and _MALLOPT(_M_ARENA_MAX, MALLOC_ARENAS) == 1


def release_free_memory() -> bool:
    """Collect garbage and return the process's free heap pages to the system; whether the C library could (glibc)."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
