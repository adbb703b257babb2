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
import re
from dataclasses import dataclass, field

from ...core.errors import StoreDataError
from ...core.lease import parse_lease_attrs, parse_subnet_key


@dataclass(frozen=True)
class LeaseView:
    key: str
    subnet: ipaddress.IPv4Network
    public_ip: str
    vtep_mac: str = ""  # vxlan
    public_key: str = ""  # wireguard
    port: int = 0  # wireguard: the peer's listen port (0: the default)


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
        port = data.get("Port", 0)
        leases.append(LeaseView(key, subnet, str(attrs.public_ip), str(mac).lower(), str(data.get("PublicKey", "")),
                                port if isinstance(port, int) and not isinstance(port, bool) else 0))
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


UDP_PORT = 8285  # the udp backend's default Port: the pump sends to every peer on it
WG_PORT = 51820  # the wireguard backend's default ListenPort
WG_DEV = "flannel-wg"
_TUN = re.compile(r"^flannel\d+$")  # udp's TUN device: the kernel names it


def expected_kernel(backend: str, leases: list[LeaseView], host_ip: str,
                    network: ipaddress.IPv4Network | None = None) -> set[str]:
    """The forwarding entries a host at ``host_ip`` must have for its peers' leases: vxlan and
    host-gw a route per peer (vxlan also its neighbour and FDB entry); udp the network's route via
    its TUN device and a row per peer in the pump's table; wireguard the network's route via
    flannel-wg and a WireGuard peer per lease (key, endpoint, allowed IPs)."""
    out: set[str] = set()
    if network is not None and backend in ("udp", "wireguard"):
        out.add(f"route {network} dev {'flannelN' if backend == 'udp' else WG_DEV}")
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
        elif backend == "udp":
            out.add(f"pump {lease.subnet} {lease.public_ip}:{UDP_PORT}")
        elif backend == "wireguard":
            out.add(f"wg {lease.public_key} {lease.public_ip}:{lease.port or WG_PORT} {lease.subnet}")
    return out


def actual_kernel(backend: str, network: ipaddress.IPv4Network, own: ipaddress.IPv4Network | None,
                  routes: str, neighs: str = "", fdbs: str = "", peers: str | None = "", wg: str | None = ""
                  ) -> set[str]:
    """The forwarding entries in a host's kernel, from ``ip -j route``, ``ip -j neigh show dev
    flannel.1`` and ``bridge -j fdb show dev flannel.1`` (empty strings: nothing); udp: flanneld's
    ``/peers`` (the pump's own table), wireguard: ``wg show flannel-wg dump``. None for those two:
    they could not be read (flanneld or the device did not answer), which matches no lease."""
    out: set[str] = set()
    for r in _json_list(routes):
        dst, gw, dev = r.get("dst", ""), r.get("gateway"), r.get("dev", "")
        if dst == "default":
            continue
        try:
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32")
        except ValueError:
            continue
        if not net.subnet_of(network) or net == own:
            continue
        if gw and dev in ("flannel.1", "eth0"):
            out.add(f"route {net} via {gw} dev {dev}")
        elif not gw and (_TUN.match(dev) or dev == WG_DEV):
            out.add(f"route {net} dev {'flannelN' if _TUN.match(dev) else dev}")
    if backend == "vxlan":
        for n in _json_list(neighs):
            if n.get("lladdr") and n.get("dst"):
                out.add(f"neigh {n['dst']} {n['lladdr'].lower()}")
        for f in _json_list(fdbs):
            if f.get("dst") and f.get("mac") and f["mac"] != "00:00:00:00:00:00":
                out.add(f"fdb {f['mac'].lower()} {f['dst']}")
    if backend == "udp":
        out |= _pump_rows(peers)
    if backend == "wireguard":
        out |= _wg_peers(wg)
    return out


def _pump_rows(peers: str | None) -> set[str]:
    try:
        rows = json.loads(peers or "")["peers"]
        return {f"pump {r['subnet']} {r['public_ip']}:{r['port']}" for r in rows}
    except (ValueError, KeyError, TypeError):
        return {"pump: flanneld's /peers did not answer"}


def _wg_peers(dump: str | None) -> set[str]:
    if dump is None:
        return {f"wg: `wg show {WG_DEV} dump` failed"}
    out = set()
    for line in dump.splitlines()[1:]:  # the first line is the device's own (its private key: never shown)
        f = line.split("\t")
        if len(f) >= 4:
            out |= {f"wg {f[0]} {f[2]} {allowed}" for allowed in f[3].split(",") if allowed != "(none)"}
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
