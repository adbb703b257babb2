"""The other pyflannel instances of this network namespace: a lock file serialising edits of the
shared iptables/nftables rules, claim files telling which networks and subnets a live instance
serves (kernel/traffic.py recycles stale rules only when none does), and exclusive holds (a device
only one network may use: kernel/host.py)."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator

from .netlink import KernelError

log = logging.getLogger(__name__)

STATE_DIR = "/run/pyflannel"
_TIMEOUT = 60.0  # waiting for the rules lock

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_key(network: Net) -> str:
    return "net-" + str(network).replace("/", "_")


def subnet_key(network: Net, subnet: Net) -> str:
    return f"{network_key(network)}-sub-{str(subnet).replace('/', '_')}"


class HostPeers:
    """The other pyflannel instances of this network namespace, as far as rules go: a lock file
    serialising rule edits, and claim files (a shared ``flock`` held for the life of the process)
    telling whether some live instance serves a network. Files live in
    ``<state_dir>/netns-<inode of the network namespace>``; when that cannot be created, edits are
    not serialised and no network counts as claimed (a warning says so)."""

    def __init__(self, state_dir: str = STATE_DIR) -> None:
        self.dir: str | None = None
        self._held: dict[str, int] = {}
        self._exclusive: dict[str, int] = {}
        try:
            ino = os.stat("/proc/thread-self/ns/net").st_ino  # this thread's namespace (tests use setns)
            path = os.path.join(state_dir, f"netns-{ino}")
            os.makedirs(path, mode=0o755, exist_ok=True)
            self.dir = path
        except OSError as err:
            log.warning("cannot use %s (%s): rule changes are not coordinated with other flanneld on this host",
                        state_dir, err)

    def _open(self, name: str, create: bool = True) -> int | None:
        assert self.dir is not None
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            return os.open(os.path.join(self.dir, name), flags, 0o644)
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the rules lock of this network namespace."""
        if self.dir is None:
            yield
            return
        fd = self._open("rules.lock")
        assert fd is not None
        try:
            deadline = time.monotonic() + _TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as err:
                    if time.monotonic() > deadline:
                        raise KernelError(f"another flanneld has held {self.dir}/rules.lock for "
                                          f"{_TIMEOUT:g}s") from err
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    def claim(self, keys: Iterable[str]) -> None:
        """Hold exactly ``keys`` from now on (a claim not in ``keys`` is released)."""
        if self.dir is None:
            return
        keys = set(keys)
        for key in set(self._held) - keys:
            os.close(self._held.pop(key))
        for key in keys - set(self._held):
            fd = self._open(key)
            assert fd is not None
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._held[key] = fd

    def hold(self, key: str, note: str) -> str | None:
        """Take ``key`` exclusively for the life of this process (e.g. a device only one network may
        use), writing ``note`` (e.g. our network) into it. None when we hold it now; else the note
        of the live process that does, to name it in an error."""
        if self.dir is None or key in self._exclusive:
            return None
        fd = self._open(key)
        assert fd is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        self._exclusive[key] = fd
        return None

    def release(self, key: str) -> None:
        """Give up a key taken with ``hold`` (the process exiting does the same)."""
        fd = self._exclusive.pop(key, None)
        if fd is not None:
            os.close(fd)

    def claimed(self, key: str) -> bool:
        """True when a live process holds ``key`` (never asked for one we hold ourselves)."""
        if self.dir is None:
            return False
        fd = self._open(key, create=False)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
