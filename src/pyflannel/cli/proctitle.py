"""The process is called ``flanneld``, not ``python``: ``pidof flanneld``, ``pgrep -x flanneld``,
``ps`` and ``top`` find it as they find Go flannel's binary.

Two names are set, both Linux-only and best effort (a failure leaves the old name, never an error):
the task name (``/proc/self/comm``, via ``prctl(PR_SET_NAME)``: top, pgrep) and the command line
(``/proc/self/cmdline``: pidof, ps), rewritten in place as ``flanneld ARGS...`` inside the memory the
kernel reports for it (``arg_start``/``arg_end`` in ``/proc/self/stat``). The new line is shorter than
the old one (``python3 /…/bin/flanneld ARGS...``), so it always fits; the rest is NUL-padded.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Sequence

PR_SET_NAME = 15


def set_process_name(name: str, args: Sequence[str]) -> bool:
    """Name this process ``name`` with ``args`` as its arguments; True if the command line changed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49: arg_start, arg_end
    except (OSError, IndexError, ValueError):
        return False
    new = b"\0".join(a.encode(errors="surrogateescape") for a in (name, *args)) + b"\0"
    size = end - start
    if start <= 0 or size <= 0 or len(new) > size:
        return False
    ctypes.memmove(start, new.ljust(size, b"\0"), size)
    return True
