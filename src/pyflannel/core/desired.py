"""The kernel state a backend wants, and the pure diff against what the kernel has.

Backends compute a ``DesiredState`` from leases (pure, unit-tested); the daemon's converger hands
it to ``kernel.reconciler``, which reads the actual state and applies ``diff(desired, actual)``.
Living in core/ keeps kernel/ and backend/ from ever importing each other. Ownership is explicit:
routes are ours when they carry our route protocol *and* lie inside our network; neighbour and FDB
entries are ours on devices we own (flannel.N).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VxlanSpec:
    vni: int
    port: int  # 0 = the kernel's default (8472)
    local: ipaddress.IPv4Address
    dev_index: int
    gbp: bool = False
    learning: bool = False


@dataclass(frozen=True)
class LinkSpec:
    """A device we own. vxlan devices are created (and recreated) by the reconciler; a ``tun``
    device exists while its backend holds it open, and is only brought up with this MTU and
    ``txqlen`` (it cannot be recreated without its file descriptor)."""

    name: str
    kind: str
    mtu: int
    mac: str | None = None
    vxlan: VxlanSpec | None = None
    txqlen: int | None = None


@dataclass(frozen=True)
class Address:
    """``address`` on ``dev``; other IPv4 addresses of ``dev`` inside ``within`` are removed."""

    dev: str
    address: ipaddress.IPv4Interface
    within: ipaddress.IPv4Network


@dataclass(frozen=True, order=True)
class Route:
    dst: ipaddress.IPv4Network
    dev: str
    gateway: ipaddress.IPv4Address | None = None
    onlink: bool = False


@dataclass(frozen=True, order=True)
class Neigh:
    dev: str
    ip: ipaddress.IPv4Address
    mac: str


@dataclass(frozen=True, order=True)
class Fdb:
    dev: str
    mac: str
    dst: ipaddress.IPv4Address


@dataclass(frozen=True)
class DesiredState:
    network: ipaddress.IPv4Network  # our routes are the proto-marked ones inside this network
    links: tuple[LinkSpec, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: frozenset[Route] = frozenset()
    neighs: frozenset[Neigh] = frozenset()
    fdbs: frozenset[Fdb] = frozenset()
    owned_devs: frozenset[str] = frozenset()
    sysctls: tuple[tuple[str, str], ...] = ()  # (path under /proc/sys, value), set when they differ
    watch: tuple[str, ...] = ()  # further devices whose change calls for a full run (the underlay)


@dataclass(frozen=True)
class ActualState:
    routes: frozenset[Route] = frozenset()  # only our routes (protocol-marked, inside the network)
    neighs: frozenset[Neigh] = frozenset()  # only permanent entries on owned devices
    fdbs: frozenset[Fdb] = frozenset()
    foreign: frozenset[ipaddress.IPv4Network] = frozenset()  # dsts of routes someone else owns


@dataclass(frozen=True)
class Plan:
    put_routes: tuple[Route, ...] = ()  # `replace`: adds or fixes
    del_routes: tuple[Route, ...] = ()
    put_neighs: tuple[Neigh, ...] = ()
    del_neighs: tuple[Neigh, ...] = ()
    put_fdbs: tuple[Fdb, ...] = ()
    del_fdbs: tuple[Fdb, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return sum(len(x) for x in (self.put_routes, self.del_routes, self.put_neighs, self.del_neighs,
                                    self.put_fdbs, self.del_fdbs))


def diff(desired: DesiredState, actual: ActualState) -> Plan:
    """What to change so that ``actual`` becomes ``desired``, touching only what we own.

    The reconciler sends the puts first and the deletions last. An entry whose key is wanted but
    whose value differs is replaced in place, never deleted and re-added, so a peer never loses
    its route for a moment.
    """
    want_dsts = {r.dst for r in desired.routes}
    # never `replace` a route we do not own (docker0's connected route, an administrator's route)
    clash = sorted(r for r in desired.routes if r.dst in actual.foreign)
    notes = tuple(f"not replacing the existing route to {r.dst}: it is not ours (protocol is not pyflannel's); "
                  f"remove it if {r.dst} should go via {r.gateway or r.dev}" for r in clash)
    put_routes = sorted(desired.routes - actual.routes - set(clash))
    del_routes = sorted(r for r in actual.routes if r.dst not in want_dsts)
    want_neigh_keys = {(n.dev, n.ip) for n in desired.neighs}
    put_neighs = sorted(desired.neighs - actual.neighs)
    del_neighs = sorted(n for n in actual.neighs if (n.dev, n.ip) not in want_neigh_keys)
    put_fdbs = sorted(desired.fdbs - actual.fdbs)
    del_fdbs = sorted(actual.fdbs - desired.fdbs)
    return Plan(tuple(put_routes), tuple(del_routes), tuple(put_neighs), tuple(del_neighs), tuple(put_fdbs),
                tuple(del_fdbs), notes)
