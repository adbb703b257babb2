"""The kernel state a backend wants, and the pure diff against what the kernel has.

Backends compute a ``DesiredState`` from leases (pure, unit-tested); the daemon's converger hands
it to ``kernel.reconciler``, which reads the actual state and applies ``diff(desired, actual)``.
Living in core/ keeps kernel/ and backend/ from ever importing each other. Ownership is explicit:
routes are ours when they carry our route protocol *and* lie inside our network; neighbour and FDB
entries are ours on devices we own (flannel.N).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")


@dataclass(frozen=True)
class VxlanSpec:
    vni: int
    port: int  # 0 = the kernel's default (8472)
    local: IPAddr  # IPv6 for flannel-v6.<VNI>
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
    """``address`` on ``dev``; other addresses of its family on ``dev`` inside ``within`` are removed."""

    dev: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    within: IPNet


class _CachedHash:
    """Entries are hashed again and again (plans are sets, diffs are set operations): compute each
    entry's hash once, from the same field tuple the dataclass ``__eq__`` compares."""

    def __hash__(self) -> int:
        d = self.__dict__
        h = d.get("_h")
        if h is None:
            h = d["_h"] = hash(self._key())
        return h  # type: ignore[no-any-return]

    def _key(self) -> tuple[object, ...]:
        raise NotImplementedError


@dataclass(frozen=True, order=True)
class Route(_CachedHash):
    dst: IPNet
    dev: str
    gateway: IPAddr | None = None
    onlink: bool = False
    __hash__ = _CachedHash.__hash__

    def _key(self) -> tuple[object, ...]:
        return (self.dst, self.dev, self.gateway, self.onlink)


@dataclass(frozen=True, order=True)
class Neigh(_CachedHash):
    dev: str
    ip: IPAddr
    mac: str
    __hash__ = _CachedHash.__hash__

    def _key(self) -> tuple[object, ...]:
        return (self.dev, self.ip, self.mac)


@dataclass(frozen=True, order=True)
class Fdb(_CachedHash):
    dev: str
    mac: str
    dst: IPAddr
    __hash__ = _CachedHash.__hash__

    def _key(self) -> tuple[object, ...]:
        return (self.dev, self.mac, self.dst)


@dataclass(frozen=True)
class DesiredState:
    network: ipaddress.IPv4Network | None  # our routes are the proto-marked ones inside this network (None: IPv6-only)
    links: tuple[LinkSpec, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: frozenset[Route] = frozenset()
    neighs: frozenset[Neigh] = frozenset()
    fdbs: frozenset[Fdb] = frozenset()
    owned_devs: frozenset[str] = frozenset()
    sysctls: tuple[tuple[str, str], ...] = ()  # (path under /proc/sys, value), set when they differ
    watch: tuple[str, ...] = ()  # further devices whose change calls for a full run (the underlay)
    network6: ipaddress.IPv6Network | None = None  # dual stack: our IPv6 routes lie inside this one

    @property
    def networks(self) -> tuple[IPNet, ...]:
        return tuple(n for n in (self.network, self.network6) if n is not None)


@dataclass(frozen=True)
class ActualState:
    routes: frozenset[Route] = frozenset()  # only our routes (protocol-marked, inside the network)
    neighs: frozenset[Neigh] = frozenset()  # only permanent entries on owned devices
    fdbs: frozenset[Fdb] = frozenset()
    foreign: frozenset[IPNet] = frozenset()  # dsts of routes someone else owns


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
    # Set differences first (C speed on cached hashes): an unchanged table costs almost nothing.
    new_routes = desired.routes - actual.routes
    # never `replace` a route we do not own (docker0's connected route, an administrator's route)
    clash = _sorted(r for r in new_routes if r.dst in actual.foreign) if actual.foreign else []
    notes = tuple(f"not replacing the existing route to {r.dst}: it is not ours (protocol is not pyflannel's); "
                  f"remove it if {r.dst} should go via {r.gateway or r.dev}" for r in clash)
    put_routes = _sorted(new_routes.difference(clash))
    new_dsts = {r.dst for r in new_routes}  # a route whose dst is wanted anew is replaced, not deleted
    del_routes = _sorted(r for r in actual.routes - desired.routes if r.dst not in new_dsts)
    new_neighs = desired.neighs - actual.neighs
    put_neighs = _sorted(new_neighs)
    new_keys = {(n.dev, n.ip) for n in new_neighs}
    del_neighs = _sorted(n for n in actual.neighs - desired.neighs if (n.dev, n.ip) not in new_keys)
    put_fdbs = _sorted(desired.fdbs - actual.fdbs)
    del_fdbs = _sorted(actual.fdbs - desired.fdbs)
    return Plan(tuple(put_routes), tuple(del_routes), tuple(put_neighs), tuple(del_neighs), tuple(put_fdbs),
                tuple(del_fdbs), notes)


def _version(entry: Any) -> int:
    for name in ("dst", "ip"):
        value = getattr(entry, name, None)
        if value is not None:
            return int(value.version)
    return 4


def _sorted(entries: Iterable[_T]) -> list[_T]:
    """Sorted, IPv4 first: addresses of the two families do not compare with each other."""
    return sorted(entries, key=lambda e: (_version(e), e))
