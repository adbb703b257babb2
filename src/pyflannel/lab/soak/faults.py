"""The soak's fault injectors: for each kind of ``schedule.KINDS`` what ``inject`` does to the lab
and what ``undo`` does when its duration is over. ``inject`` returns a short note of what it did;
``Skipped`` means the fault could not apply at that moment (say, the entry was already gone) and is
reported, not counted as a violation."""

from __future__ import annotations

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


class Skipped(Exception):
    """The fault did not apply (nothing to delete, etcd did not answer): reported as such."""


class Injector:
    def __init__(self, soak: SoakLab, garbage: set[bytes], lease_lost: Callable[[int], None],
                 joined: Callable[[Host], None] = lambda h: None, leaving: Callable[[Host], None] = lambda h: None
                 ) -> None:
        self.soak = soak
        self.garbage = garbage  # values written as garbage: not pyflannel's malformed writes
        self.lease_lost = lease_lost
        self.joined, self.leaving = joined, leaving  # the run's traffic follows the hosts
        self.down_member: dict[int, int] = {}  # fault seq -> member index killed

    def inject(self, fault: Fault) -> str:
        return getattr(self, "_" + fault.kind.replace("-", "_"))(fault)

    def undo(self, fault: Fault) -> None:
        fn = getattr(self, "_undo_" + fault.kind.replace("-", "_"), None)
        if fn is not None:
            fn(fault)

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
        self.soak.lab.stop_flanneld(host, signal.SIGKILL)
        return f"killed pid {pid}"

    def _flanneld_sigterm(self, fault: Fault) -> str:
        host = self._host(fault)
        pid = self.soak.lab.flanneld_pid(host)
        if pid is None:
            raise Skipped("flanneld was not running")
        self.soak.lab.stop_flanneld(host, signal.SIGTERM, timeout=20)
        return f"stopped pid {pid}"

    def _undo_flanneld_sigkill(self, fault: Fault) -> None:
        self.soak.start(self._host(fault))

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
        self.soak.leave(host)
        # what its lease's TTL would do in time, or `flannelctl leases revoke` at once
        self.soak.cluster.etcdctl("del", lease.key, timeout=3)
        return f"{host.ns} left, {lease.key} revoked"


def wait_until(t: float) -> None:
    """Sleep until monotonic time ``t``."""
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


__all__ = ["PREFIX", "Injector", "Skipped", "wait_until"]
