"""The soak's fault injectors: for each kind of ``schedule.KINDS`` what ``inject`` does to the lab
and what ``undo`` does when its duration is over. ``inject`` returns a short note of what it did;
``Skipped`` means the fault could not apply at that moment (say, the entry was already gone) and is
reported, not counted as a violation."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from ..cluster import PREFIX, Host
from ..netns import LabError, in_ns, sh
from .invariants import WG_DEV, LeaseView, read_leases
from .schedule import Fault
from .soaklab import NETWORK, SoakLab

_CUT = """table inet soakcut {
  chain out { type filter hook output priority -10; ip daddr { %(ips)s } tcp dport 2379 drop; }
  chain in { type filter hook input priority -10; ip saddr { %(ips)s } tcp sport 2379 drop; }
}
"""


READY_BOUND = 60.0  # seconds a restarted flanneld has to say it is ready; longer is a violation


class Skipped(Exception):
    """The fault did not apply (nothing to delete, etcd did not answer): reported as such."""


class Unready(Exception):
    """A restarted flanneld did not say it was ready within ``READY_BOUND``: a violation."""


class Injector:
    def __init__(self, soak: SoakLab, garbage: set[bytes], lease_lost: Callable[[int], None],
                 joined: Callable[[Host], None] = lambda h: None, leaving: Callable[[Host], None] = lambda h: None
                 ) -> None:
        self.soak = soak
        self.garbage = garbage  # values written as garbage: not pyflannel's malformed writes
        self.lease_lost = lease_lost
        self.joined, self.leaving = joined, leaving  # the run's traffic follows the hosts
        self.down_member: dict[int, int] = {}  # fault seq -> member index killed
        self.stops: dict[int, int] = {}  # host index -> how many times a fault stopped its flanneld
        self.ready_s: dict[int, float] = {}  # fault seq -> seconds its restarted flanneld took to be ready

    def inject(self, fault: Fault) -> str:
        return getattr(self, "_" + fault.kind.replace("-", "_"))(fault)

    def undo(self, fault: Fault) -> str | None:
        """Undo the fault; some undos return a note of their own (a restart: how long until ready)."""
        fn = getattr(self, "_undo_" + fault.kind.replace("-", "_"), None)
        return None if fn is None else fn(fault)

    # ---- flanneld ----------------------------------------------------------------------------------
    def _host(self, fault: Fault, index: int = 0) -> Host:
        try:
            return self.soak.host(index or fault.target)
        except StopIteration:
            raise Skipped(f"there is no host h{index or fault.target} (its join failed)") from None

    def _flanneld_sigkill(self, fault: Fault) -> str:
        host = self._host(fault)
        pid = self.soak.lab.flanneld_pid(host)
        if pid is None:
            raise Skipped("flanneld was not running")
        self.stops[host.index] = self.stops.get(host.index, 0) + 1
        self.soak.lab.stop_flanneld(host, signal.SIGKILL)
        return f"killed pid {pid}"

    def _flanneld_sigterm(self, fault: Fault) -> str:
        host = self._host(fault)
        pid = self.soak.lab.flanneld_pid(host)
        if pid is None:
            raise Skipped("flanneld was not running")
        self.stops[host.index] = self.stops.get(host.index, 0) + 1
        self.soak.lab.stop_flanneld(host, signal.SIGTERM, timeout=20)
        return f"stopped pid {pid}"

    def _undo_flanneld_sigkill(self, fault: Fault) -> str:
        """Start it again; the fault lasts until the new flanneld logs that it is ready (as an etcd
        member's restart lasts until it answers), so a start slowed by a busy machine is not counted
        against the heal bound; the note says how long it took."""
        host = self._host(fault)
        log = self.soak.lab.log_file(host)
        offset = _size(log)
        self.soak.start(host)
        t0, stops = time.monotonic(), self.stops.get(host.index, 0)
        while time.monotonic() - t0 < READY_BOUND:
            if b"flannel is ready" in _read_from(log, offset):
                self.ready_s[fault.seq] = round(time.monotonic() - t0, 2)
                return f"ready after {self.ready_s[fault.seq]:.1f}s"
            if self.stops.get(host.index, 0) != stops:  # another fault stopped it: that one waits
                return f"stopped again by another fault {time.monotonic() - t0:.1f}s after it started"
            if self.soak.lab.flanneld_pid(host) is None:
                raise Unready(f"flanneld on h{host.index} exited after its restart; its log {log} ends "
                              f"with:\n{self.soak.lab.log_tail(host)}")
            time.sleep(0.1)
        raise Unready(f"flanneld on h{host.index} did not say it was ready within {READY_BOUND:g}s of its "
                      f"restart; its log {log} ends with:\n{self.soak.lab.log_tail(host)}")

    _undo_flanneld_sigterm = _undo_flanneld_sigkill

    # ---- etcd --------------------------------------------------------------------------------------
    def _kill_member(self, fault: Fault, member: int) -> str:
        m = self.soak.cluster.members[member]
        if m.proc is None:
            raise Skipped(f"member {member + 1} was not running")
        m.stop(signal.SIGKILL)
        self.down_member[fault.seq] = member
        return f"killed member {member + 1}"

    def _etcd_member_kill(self, fault: Fault) -> str:
        return self._kill_member(fault, fault.target)

    def _etcd_leader_kill(self, fault: Fault) -> str:
        try:
            leader = self.soak.cluster.leader()
        except (LabError, ValueError, KeyError, StopIteration) as err:
            raise Skipped(f"no leader to be found: {err}") from err
        return self._kill_member(fault, leader)

    def _undo_etcd_member_kill(self, fault: Fault) -> None:
        member = self.down_member.pop(fault.seq, None)
        if member is not None:
            m = self.soak.cluster.members[member]
            m.start(wait=False)
            m.wait_ready(30)

    _undo_etcd_leader_kill = _undo_etcd_member_kill

    # ---- a host cut from etcd, its underlay link ---------------------------------------------------
    def _host_cut(self, fault: Fault) -> str:
        ips = ", ".join(m.host for m in self.soak.cluster.members)
        self.soak.nft(self._host(fault), _CUT % {"ips": ips})
        return "packets to and from etcd dropped"

    def _undo_host_cut(self, fault: Fault) -> None:
        self.soak.nft(self._host(fault), "delete table inet soakcut\n")

    def _link_down(self, fault: Fault) -> str:
        sh(["ip", "-n", self.soak.lab.underlay_ns, "link", "set", f"h{fault.target}", "down"])
        return f"switch port h{fault.target} down"

    def _undo_link_down(self, fault: Fault) -> None:
        sh(["ip", "-n", self.soak.lab.underlay_ns, "link", "set", f"h{fault.target}", "up"])

    # ---- leases ------------------------------------------------------------------------------------
    def _own_lease(self, host: Host) -> LeaseView:
        kvs = self.soak.lease_kvs(timeout=3)
        if kvs is None:
            raise Skipped("etcd did not answer")
        leases, _ = read_leases(kvs, self.garbage)
        mine = [lv for lv in leases if lv.public_ip == host.ip]
        if not mine:
            raise Skipped(f"{host.ns} holds no lease")
        return mine[0]

    def _lease_delete(self, fault: Fault) -> str:
        lease = self._own_lease(self._host(fault))
        self.lease_lost(fault.target)
        self.soak.cluster.etcdctl("del", lease.key, timeout=3)
        return f"deleted {lease.key}"

    def _lease_garbage(self, fault: Fault) -> str:
        lease = self._own_lease(self._host(fault))
        value = f"soak garbage #{fault.seq} {{not json".encode()
        self.garbage.add(value)
        self.lease_lost(fault.target)
        self.soak.cluster.etcdctl("put", lease.key, value.decode(), timeout=3)
        return f"overwrote {lease.key}"

    # ---- kernel state deleted by hand ---------------------------------------------------------------
    def _peer_lease(self, fault: Fault) -> LeaseView:
        return self._own_lease(self._host(fault, fault.peer))

    def _by_hand(self, host: Host, *cmd: str) -> str:
        res = sh(in_ns(host.ns, *cmd), check=False)
        if res.returncode != 0:
            raise Skipped(f"`{' '.join(cmd)}`: {(res.stderr or res.stdout).strip()}")
        return " ".join(cmd)

    def _route_delete(self, fault: Fault) -> str:
        backend = self.soak.backend
        if backend in ("udp", "wireguard"):  # no route per peer: the network's one route via the device
            return self._by_hand(self._host(fault), "ip", "route", "del", str(NETWORK))
        lease = self._peer_lease(fault)
        dev = "flannel.1" if backend == "vxlan" else "eth0"
        return self._by_hand(self._host(fault), "ip", "route", "del", str(lease.subnet), "dev", dev)

    def _neigh_delete(self, fault: Fault) -> str:
        lease = self._peer_lease(fault)
        return self._by_hand(self._host(fault), "ip", "neigh", "del", str(lease.subnet.network_address), "dev",
                             "flannel.1")

    def _fdb_delete(self, fault: Fault) -> str:
        lease = self._peer_lease(fault)
        return self._by_hand(self._host(fault), "bridge", "fdb", "del", lease.vtep_mac, "dev", "flannel.1", "dst",
                             lease.public_ip)

    def _device_delete(self, fault: Fault) -> str:
        return self._by_hand(self._host(fault), "ip", "link", "del", WG_DEV if self.soak.backend == "wireguard"
                             else "flannel.1")

    def _iptables_flush(self, fault: Fault) -> str:
        host = self._host(fault)
        for table in ("filter", "nat"):
            self._by_hand(host, "iptables", "-t", table, "-F")
        return "iptables -F (filter, nat)"

    # ---- hosts joining and leaving -----------------------------------------------------------------
    def _host_join(self, fault: Fault) -> str:
        host = self.soak.join(fault.target)
        self.joined(host)
        return f"{host.ns} joined with {host.subnet}"

    def _host_leave(self, fault: Fault) -> str:
        host = self._host(fault)
        lease = self._own_lease(host)
        self.leaving(host)
        self.lease_lost(fault.target)
        self.stops[host.index] = self.stops.get(host.index, 0) + 1
        self.soak.leave(host)
        # what its lease's TTL would do in time, or `flannelctl leases revoke` at once
        self.soak.cluster.etcdctl("del", lease.key, timeout=3)
        return f"{host.ns} left, {lease.key} revoked"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def wait_until(t: float) -> None:
    """Sleep until monotonic time ``t``."""
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


__all__ = ["PREFIX", "READY_BOUND", "Injector", "Skipped", "Unready", "wait_until"]
