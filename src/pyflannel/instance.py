"""One flanneld per subnet file: an exclusive lock taken before anything else is touched.

A second flanneld started with the same flags would re-put the shared lease, move the network's
route to its own device and then fail on the busy UDP port, taking the route with it; on vxlan both
would run and both report ready. The lock lives under ``/run/flannel/instances`` (a tmpfs: gone at
boot, never stale) and is named after the subnet file, so flanneld instances for other networks
(their own ``--subnet-file``) run side by side. ``flock`` is released by the kernel when the
process ends, however it ends, so a SIGKILLed flanneld never blocks its successor.
"""

from __future__ import annotations

import fcntl
import logging
import os

from .core.errors import LocalConfigError

log = logging.getLogger("flanneld")

LOCK_DIR = "/run/flannel/instances"


def lock_path(subnet_file: str, lock_dir: str = LOCK_DIR) -> str:
    """``/run/flannel/subnet.env`` -> ``/run/flannel/instances/run-flannel-subnet.env.lock``."""
    name = os.path.abspath(subnet_file).strip("/").replace("-", "--").replace("/", "-")
    return os.path.join(lock_dir, name + ".lock")


class InstanceLock:
    """Held from ``acquire`` until the process ends (or ``release``)."""

    def __init__(self, subnet_file: str, lock_dir: str = LOCK_DIR) -> None:
        self.subnet_file = subnet_file
        self.path = lock_path(subnet_file, lock_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``LocalConfigError`` naming the flanneld that holds it. When the
        lock file cannot even be created, say so and go on unguarded (it guards, it does not gate)."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            log.warning("cannot create the instance lock %s (%s): a second flanneld with --subnet-file=%s "
                        "would not be refused", self.path, err.strerror, self.subnet_file)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"flanneld pid {holder}" if holder else "another flanneld"
            raise LocalConfigError(
                f"{who} already runs with --subnet-file={self.subnet_file} (it holds {self.path}): refusing to "
                "start a second one; stop that one first, or give this one its own --subnet-file and "
                "--etcd-prefix") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def holder(subnet_file: str, lock_dir: str = LOCK_DIR) -> int | None:
    """The pid of the flanneld that holds the lock for ``subnet_file``, or None when none does.
    Read from /proc/locks, without taking the lock even for a moment: a flanneld starting at that
    instant must never find it taken by a status check."""
    try:
        st = os.stat(lock_path(subnet_file, lock_dir))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" (a blocked waiter has "->" after the id)
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None
