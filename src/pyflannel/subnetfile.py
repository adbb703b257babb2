"""subnet.env on disk: written atomically (flannel uses renameio), read back leniently at the next start."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile

from .core.subnetenv import MAX_SUBNET_ENV_BYTES, PreviousRun, previous_run, salvage_subnet_env

log = logging.getLogger("flanneld")


def write_subnet_file(path: str, text: str) -> None:
    """Atomic: a temp file in the same directory, fsync, rename; mode 0644 (flannel: renameio)."""
    atomic_write(path, text, prefix=".subnet.env.")


def atomic_write(path: str, text: str, *, prefix: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` at once: a temp file in the same directory, fsync, rename.
    A reader sees the old file or the new one, never half of one; the temp file never stays."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def try_write_subnet_file(path: str, text: str) -> OSError | None:
    """``write_subnet_file``, returning the error instead of raising it (None: written)."""
    try:
        write_subnet_file(path, text)
    except OSError as err:
        return err
    return None


def unwritable_fix(path: str, err: OSError) -> str:
    """What the operator does about ``err`` from writing ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fixes = {
        errno.EROFS: f"its file system is mounted read-only: remount {directory} read-write, or point -subnet-file "
                     "at a writable directory",
        errno.ENOSPC: f"its file system is full: free space on it (df {directory})",
        errno.EDQUOT: f"the disk quota is exhausted: free space on it (df {directory})",
        errno.EISDIR: f"a directory is in its place: remove it (rmdir {path})",
        errno.ENOTDIR: f"a part of {directory} is a file, not a directory: remove it or fix -subnet-file",
        errno.EPERM: f"check the immutable and append-only attributes (lsattr -d {directory} {path}; chattr -i)",
        errno.EACCES: f"check the permissions and security labels of {directory}",
    }
    return fixes.get(err.errno or 0, f"check {directory} and its file system")


def read_previous_subnet(path: str, subnet_len: int) -> PreviousRun:
    """What the previous run's subnet.env names (``core.subnetenv.previous_run``), read leniently:
    bytes, at most ``MAX_SUBNET_ENV_BYTES``, never blocking on a FIFO, never raising. Logs once
    which lines were ignored and why, and how a damaged ``FLANNEL_SUBNET`` was still read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return PreviousRun()
    except OSError as err:
        return PreviousRun(problem=f"it cannot be read: {err.strerror}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return PreviousRun(problem="it is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SUBNET_ENV_BYTES + 1)
    except OSError as err:
        return PreviousRun(problem=f"it cannot be read: {err.strerror}")
    finally:
        os.close(fd)
    truncated = len(data) > MAX_SUBNET_ENV_BYTES
    salvaged = salvage_subnet_env(data[:MAX_SUBNET_ENV_BYTES], truncated=truncated)
    if salvaged.ignored_count:
        more = salvaged.ignored_count - len(salvaged.ignored)
        log.warning("previous subnet file %s: ignoring %d damaged line%s and reading the rest: %s%s", path,
                    salvaged.ignored_count, "" if salvaged.ignored_count == 1 else "s", "; ".join(salvaged.ignored),
                    f"; and {more} more" if more > 0 else "")
    prev = previous_run(salvaged, subnet_len)
    if prev.recovered:
        log.warning("previous subnet file %s: %s", path, prev.recovered)
    return prev
