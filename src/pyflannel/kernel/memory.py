"""Give freed heap memory back to the kernel after a large burst of work.

A full reconcile with 1000 peers decodes and builds thousands of netlink messages in a worker
thread; glibc keeps the freed memory in that thread's arena, so an idle flanneld's RSS creeps up
by the size of its largest burst and stays there. ``malloc_trim(0)`` returns the free pages of
every arena. A no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _trim() -> object:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> None:
    fn = _trim()
    if fn is not None:
        fn(0)  # type: ignore[operator]
