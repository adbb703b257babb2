"""What a backend's ``plan`` returns: data for exactly one target each.

- ``DesiredState`` (``core.desired``): the kernel (vxlan, host-gw, and udp's flannel0 device and
  network route), applied by the kernel reconciler;
- ``PumpPlan``: the udp pump's peer table, swapped into the running pump whole;
- ``CloudPlan``: the cloud route table (aws-vpc, gce): our own route plus the cleanup inputs;
- ``WgPlan``: the WireGuard device's configuration (key, port, the peer set), applied by ``wg``.

A plan is computed from our lease, the peers' leases and ``HostFacts`` only (pure), so the daemon
can plan once per batch of lease events and hand each plan to its target.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .desired import DesiredState
from .lease import Lease, SubnetId

Net = SubnetId  # a lease's ident: its IPv4 subnet, or the IPv6 subnet of an IPv6-only lease


@dataclass(frozen=True)
class PumpPlan:
    """The udp pump's table: ``(network, prefixlen, peer PublicIP, port)``, host-order ints,
    sorted by network; the source check is derived from the same rows."""

    routes: tuple[tuple[int, int, int, int], ...] = ()

    def sources(self) -> list[tuple[int, int, int]]:
        """``(peer ip, network, mask)`` rows: a datagram from ``peer ip`` may carry inner sources
        inside ``network``."""
        return [(ip, net, (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF) for net, plen, ip, _ in self.routes]

    def __len__(self) -> int:
        return len(self.routes)


@dataclass(frozen=True)
class CloudPlan:
    """The cloud route table: our route for ``own``; cleanup needs every live lease (ours
    included) once the first lease snapshot has arrived (``live`` None before that)."""

    own: Lease
    live: frozenset[Net] | None
    live_ips: frozenset[str]
    cleaner: bool  # the host holding the lowest live subnet removes unleased routes

    def __len__(self) -> int:
        return len(self.live or ())


@dataclass(frozen=True, order=True)
class WgPeer:
    """One WireGuard peer, one per lease: keyed by its public key (never by its endpoint, so
    several hosts behind one NAT address are several peers)."""

    public_key: str  # base64, validated by the backend
    endpoint: str  # "PublicIP:Port" from the lease
    allowed_ips: tuple[str, ...]  # the peer's subnet(s), e.g. ("10.0.5.0/24",)
    keepalive: int = 0  # seconds, 0 = off


@dataclass(frozen=True)
class WgPlan:
    """The WireGuard device: our private key (by file, never the key itself), listen port,
    pre-shared key (by value: the target passes it to ``wg`` in a private file) and the peer set.
    ``prune`` False (before the first lease snapshot): add and fix peers, remove none."""

    dev: str
    key_file: str
    listen_port: int
    peers: tuple[WgPeer, ...] = ()
    psk: str = field(default="", repr=False)
    prune: bool = True
    mtu: int = 1420  # for a device made again (wireguard-go gone)
    target: str = "wg"  # the converger target of this device (flannel-wg-v6's: "wg-v6")

    def __len__(self) -> int:
        return len(self.peers)


Plan = DesiredState | PumpPlan | CloudPlan | WgPlan


def target_of(plan: Plan) -> str:
    """The name of the target a plan is for: ``kernel``, ``pump``, ``cloud``, or the WireGuard
    device's own (``wg``, ``wg-v6``: one target per device)."""
    if isinstance(plan, DesiredState):
        return "kernel"
    if isinstance(plan, WgPlan):
        return plan.target
    return "pump" if isinstance(plan, PumpPlan) else "cloud"


@dataclass(frozen=True)
class Selection:
    """The peers a backend can program, and those it skips with the reason (warned once each);
    ``notes``: programmed peers of which a part is left out, with the reason (warned once each)."""

    peers: Mapping[Net, Lease]
    skipped: tuple[tuple[Lease, str], ...] = ()
    notes: tuple[tuple[Lease, str], ...] = ()


# id(lease) -> (that lease, why it is skipped or None): keyed by the object's id, an int, whose hash
# is C's (an IPv4Network's is computed in Python on every look-up); the entry holds the lease, so
# its id cannot be reused while it is there
Verdicts = dict[int, tuple[Lease, str | None]]


def select_peers(peers: Mapping[Net, Lease], network: Net | None, lease_types: Iterable[str],
                 problem: Callable[[Lease], str | None], backend: str, memo: Verdicts | None = None) -> Selection:
    """Pure: keep the peers of our backend type inside the network whose data we can program.
    ``memo`` (optional, replaced in place) keeps each verdict while the lease object is the same,
    so a run after one lease event judges one lease, not all of them."""
    types = frozenset(lease_types)
    skipped: list[tuple[Lease, str]] = []
    drop: list[Net] = []
    fresh: Verdicts = {}
    for sn, lease in peers.items():
        hit = memo.get(id(lease)) if memo is not None else None
        if hit is not None and hit[0] is lease:
            why = hit[1]
        elif network is not None and not lease.subnet.subnet_of(network):
            why = f"its subnet is outside the network {network}"
        elif lease.attrs.backend_type not in types:
            why = f"its backend is {lease.attrs.backend_type or 'udp'!r}, this network runs {backend}"
        else:
            why = problem(lease)
        fresh[id(lease)] = (lease, why)
        if why is not None:
            skipped.append((lease, why))
            drop.append(sn)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    ok = dict(peers)  # a copy keeps the keys' hashes: no subnet is hashed again
    for sn in drop:
        del ok[sn]
    return Selection(ok, tuple(skipped))


def public_of(lease: Lease) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Where a lease's host is: its PublicIP, or its PublicIPv6 on an IPv6-only network (whose
    leases all carry PublicIP 0.0.0.0, as Go writes them)."""
    if lease.attrs.public_ip.is_unspecified and lease.attrs.public_ipv6 is not None:
        return lease.attrs.public_ipv6
    return lease.attrs.public_ip


def shared_public_ips(own: Lease, peers: Mapping[Net, Lease]
                      ) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, list[Net]]]:
    """Public IPs claimed by more than one lease (ours included): one of them is stale or forged.
    The subnets of each come in table order (sorting is left to whoever prints them)."""
    # by (family, the address as an int): hashing an IPv4Address runs Python code, an int's does not.
    # IPv6-only leases all say PublicIP 0.0.0.0: their PublicIPv6 counts (``public_of``)
    first = public_of(own)
    by_ip: dict[tuple[int, int], tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, list[Net]]] = {
        (first.version, int(first)): (first, [own.ident])}
    for sn, le in peers.items():
        ip = public_of(le)
        by_ip.setdefault((ip.version, int(ip)), (ip, []))[1].append(sn)
    return [(ip, nets) for ip, nets in by_ip.values() if len(nets) > 1]
