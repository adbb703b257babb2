"""The soak's invariants over what it observed, pure (each function takes what was read and returns
the problems found, as sentences):

- ``read_leases``: nothing malformed under ``subnets/`` but the garbage the soak wrote itself, and
  every lease written with a TTL;
- ``duplicate_problems``: no two hosts hold the same subnet (by ``subnet.env``), no host two leases;
- ``expected_kernel``/``actual_kernel``: a host's forwarding entries, as lines, from the leases and
  from ``ip -j``/``bridge -j``; they must match within a bound after each fault (the run loop
  keeps the clock);
- ``EnvWatch``: a host's ``subnet.env`` never changes while its lease lives;
- ``ResourceWatch``: no flanneld above a memory bound, or leaking descriptors or threads.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from ...core.errors import StoreDataError
from ...core.lease import parse_lease_attrs, parse_subnet_key


@dataclass(frozen=True)
class LeaseView:
    key: str
    subnet: ipaddress.IPv4Network
    public_ip: str
    vtep_mac: str = ""


def read_leases(kvs: list[tuple[str, bytes, int]], garbage: set[bytes]) -> tuple[list[LeaseView], list[str]]:
    """(the valid leases, problems) of ``(key, value, etcd lease id)`` under ``subnets/``; a value
    in ``garbage`` (written by the soak) is skipped silently."""
    leases, problems = [], []
    for key, value, lease_id in kvs:
        if value in garbage:
            continue
        try:
            subnet, _ = parse_subnet_key(key)
            attrs = parse_lease_attrs(value)
        except StoreDataError as err:
            problems.append(f"malformed lease written at {key}: {err} (value {value[:80]!r})")
            continue
        if not lease_id:
            problems.append(f"lease {key} was written without a TTL (no etcd lease)")
        data = attrs.backend_data if isinstance(attrs.backend_data, dict) else {}
        mac = data.get("VtepMAC") or data.get("vtepMAC") or ""
        leases.append(LeaseView(key, subnet, str(attrs.public_ip), str(mac).lower()))
    return leases, problems


def duplicate_problems(leases: list[LeaseView], subnets: dict[int, str]) -> list[str]:
    """``subnets``: host index -> FLANNEL_SUBNET of the running hosts' subnet.env."""
    problems = []
    by_net: dict[ipaddress.IPv4Network, list[int]] = {}
    for host, sn in subnets.items():
        by_net.setdefault(ipaddress.IPv4Interface(sn).network, []).append(host)
    for net, hosts in sorted(by_net.items()):
        if len(hosts) > 1:
            problems.append(f"hosts {', '.join(f'h{h}' for h in sorted(hosts))} all hold subnet {net}")
    by_ip: dict[str, list[str]] = {}
    for lease in leases:
        by_ip.setdefault(lease.public_ip, []).append(lease.key)
    for public_ip, keys in sorted(by_ip.items()):
        if len(keys) > 1:
            problems.append(f"{public_ip} holds {len(keys)} leases: {', '.join(sorted(keys))}")
    return problems


def expected_kernel(backend: str, leases: list[LeaseView], host_ip: str) -> set[str]:
    """The forwarding entries a host at ``host_ip`` must have for its peers' leases."""
    out: set[str] = set()
    for lease in leases:
        if lease.public_ip == host_ip:
            continue
        gw = str(lease.subnet.network_address)
        if backend == "vxlan":
            out.add(f"route {lease.subnet} via {gw} dev flannel.1")
            out.add(f"neigh {gw} {lease.vtep_mac}")
            out.add(f"fdb {lease.vtep_mac} {lease.public_ip}")
        elif backend == "host-gw":
            out.add(f"route {lease.subnet} via {lease.public_ip} dev eth0")
    return out


def actual_kernel(backend: str, network: ipaddress.IPv4Network, own: ipaddress.IPv4Network | None,
                  routes: str, neighs: str, fdbs: str) -> set[str]:
    """The forwarding entries in a host's kernel, from ``ip -j route``, ``ip -j neigh show dev
    flannel.1`` and ``bridge -j fdb show dev flannel.1`` (empty strings: nothing)."""
    out: set[str] = set()
    for r in _json_list(routes):
        dst, gw, dev = r.get("dst", ""), r.get("gateway"), r.get("dev", "")
        if not gw or dev not in ("flannel.1", "eth0") or dst == "default":
            continue
        try:
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32")
        except ValueError:
            continue
        if net.subnet_of(network) and net != own:
            out.add(f"route {net} via {gw} dev {dev}")
    if backend == "vxlan":
        for n in _json_list(neighs):
            if n.get("lladdr") and n.get("dst"):
                out.add(f"neigh {n['dst']} {n['lladdr'].lower()}")
        for f in _json_list(fdbs):
            if f.get("dst") and f.get("mac") and f["mac"] != "00:00:00:00:00:00":
                out.add(f"fdb {f['mac'].lower()} {f['dst']}")
    return out


def _json_list(text: str) -> list[dict[str, str]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


@dataclass
class EnvWatch:
    """``subnet.env`` per host; ``lease_lost`` marks a host whose lease ended (deleted, garbage,
    expired), after which one change is allowed."""

    seen: dict[int, str] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)

    def lease_lost(self, host: int) -> None:
        self.lost.add(host)

    def update(self, host: int, content: str | None) -> str | None:
        if content is None:
            return None
        old = self.seen.get(host)
        self.seen[host] = content
        if old is None or old == content:
            return None
        if host in self.lost:
            self.lost.discard(host)
            return None
        return f"subnet.env of h{host} changed while its lease lived: {old!r} -> {content!r}"


@dataclass(frozen=True)
class Bounds:
    rss_mb: float = 200.0
    fd_growth: int = 32  # over the first sample of this process
    thread_growth: int = 8


@dataclass
class ResourceWatch:
    bounds: Bounds = field(default_factory=Bounds)
    first: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (fds, threads) at first sight
    peak: dict[str, float] = field(default_factory=lambda: {"rss_mb": 0.0, "fds": 0, "threads": 0})

    def sample(self, host: int, pid: int, rss_kb: int, fds: int, threads: int) -> list[str]:
        fd0, th0 = self.first.setdefault(pid, (fds, threads))
        rss_mb = rss_kb / 1024
        self.peak = {"rss_mb": max(self.peak["rss_mb"], round(rss_mb, 1)), "fds": max(self.peak["fds"], fds),
                     "threads": max(self.peak["threads"], threads)}
        problems = []
        if rss_mb > self.bounds.rss_mb:
            problems.append(f"flanneld on h{host} (pid {pid}) uses {rss_mb:.0f} MB, over {self.bounds.rss_mb:g} MB")
        if fds > fd0 + self.bounds.fd_growth:
            problems.append(f"flanneld on h{host} (pid {pid}) holds {fds} descriptors, {fd0} at its start: a leak")
        if threads > th0 + self.bounds.thread_growth:
            problems.append(f"flanneld on h{host} (pid {pid}) runs {threads} threads, {th0} at its start: a leak")
        return problems


__all__ = ["Bounds", "EnvWatch", "LeaseView", "ResourceWatch", "actual_kernel", "duplicate_problems",
           "expected_kernel", "read_leases"]
