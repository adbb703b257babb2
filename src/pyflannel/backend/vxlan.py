"""The vxlan backend, as flannel programs it (docs/compatibility.md#vxlan).

Device ``flannel.<VNI>`` (local = our public IP, learning off, MTU = underlay MTU - 50) carrying
``<our subnet network address>/32``. Per peer: a permanent neighbour ``<peer subnet address>
lladdr <peer VtepMAC>``, a permanent FDB entry ``<peer VtepMAC> dst <peer PublicIP> self`` and a
route ``<peer subnet> via <peer subnet address> dev flannel.1 onlink``; with DirectRouting, a
peer whose PublicIP is directly connected gets a plain route via that address instead. Dual stack
adds ``flannel-v6.<VNI>`` with the same entries for IPv6 (with DirectRouting, a peer whose
PublicIPv6 is directly connected gets its IPv6 route via that address instead, as Go's v6Dev); an
IPv6-only network (EnableIPv4 false) has ``flannel-v6.<VNI>`` alone (``plan_vxlan6``).

Better than flannel: the VTEP MAC of an existing compatible device is kept across restarts and
re-used when the device is recreated (flannel's etcd mode picks a new one and never tells its
peers), and a recreated device gets all its peers back at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, Fdb, LinkSpec, Neigh, Route, VxlanSpec
from ..core.errors import KernelError, LocalConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs, SubnetId
from ..core.plan import Plan
from . import HostOps
from .base import PlanningBackend, bool_option, check_keys, int_option

log = logging.getLogger(__name__)

OVERHEAD = 50
OVERHEAD6 = 70  # the kernel's VXLAN6_HEADROOM: IPv6 40 + UDP 8 + VXLAN 8 + Ethernet 14
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
KNOWN_KEYS = ("VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting")


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = 1
    port: int = 0
    mtu: int = 1500  # the underlay MTU; the device gets mtu - 50
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False

    @property
    def dev(self) -> str:
        return f"flannel.{self.vni}"

    @property
    def dev6(self) -> str:
        return f"flannel-v6.{self.vni}"


def parse_options(config: NetworkConfig, ext_mtu: int) -> VxlanOptions:
    port = config.backend_option("Port", 0)
    return VxlanOptions(
        vni=int_option(config, "VNI", 1, 0, 16777215, "vxlan"),  # 0 too, as Go flannel (flannel.0)
        port=0 if port == 0 and not isinstance(port, bool) else int_option(config, "Port", 0, 1, 65535, "vxlan"),
        mtu=int_option(config, "MTU", ext_mtu, 68 + OVERHEAD, 65535, "vxlan"),
        gbp=bool_option(config, "GBP", "vxlan"),
        learning=bool_option(config, "Learning", "vxlan"),
        direct_routing=bool_option(config, "DirectRouting", "vxlan"),
    )


def random_mac() -> str:
    """A random locally administered unicast MAC (flannel's pkg/mac)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def peer_mac(lease: Lease, v6: bool = False) -> str | None:
    data = lease.attrs.backend_v6_data if v6 else lease.attrs.backend_data
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return mac.lower() if isinstance(mac, str) and _MAC_RE.match(mac) else None


PeerEntries = tuple[Route, Neigh | None, Fdb | None]
Direct = frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]  # HostFacts.onlink: directly connected


def peer_entries6(opts: VxlanOptions, lease: Lease, ext_name: str = "", direct: Direct = frozenset()
                  ) -> PeerEntries | None:
    """Pure: a peer's IPv6 route, neighbour and FDB entry on ``flannel-v6.<VNI>``: the same shape
    as IPv4, gateway = its IPv6 subnet's address, FDB dst = its PublicIPv6. With DirectRouting and
    its PublicIPv6 in ``direct``: only a route via that address on ``ext_name``."""
    sn6, pip6, mac = lease.ipv6_subnet, lease.attrs.public_ipv6, peer_mac(lease, v6=True)
    if sn6 is None or pip6 is None or mac is None:
        return None
    if opts.direct_routing and pip6 in direct:
        return Route(sn6, ext_name, pip6), None, None
    gw = sn6.network_address
    return Route(sn6, opts.dev6, gw, onlink=True), Neigh(opts.dev6, gw, mac), Fdb(opts.dev6, mac, pip6)


def _add(entries: PeerEntries | None, routes: list[Route], neighs: list[Neigh], fdbs: list[Fdb]) -> None:
    if entries is None:
        return
    routes.append(entries[0])
    if entries[1] is not None:
        neighs.append(entries[1])
    if entries[2] is not None:
        fdbs.append(entries[2])


def own_ipv6(opts: VxlanOptions, own: Lease, network6: ipaddress.IPv6Network, link6: LinkSpec) -> DesiredState:
    """Pure: the IPv6 half of our own state: flannel-v6.<VNI> with ``<our IPv6 subnet address>/128``."""
    assert own.ipv6_subnet is not None
    addr = ipaddress.IPv6Interface(f"{own.ipv6_subnet.network_address}/128")
    return DesiredState(ipaddress.IPv4Network("0.0.0.0/32"), (link6,), (Address(opts.dev6, addr, network6),),
                        owned_devs=frozenset({opts.dev6}), sysctls=((f"net/ipv6/conf/{opts.dev6}/accept_ra", "0"),),
                        network6=network6)


def plan_vxlan6(opts: VxlanOptions, own: Lease, network6: ipaddress.IPv6Network, link6: LinkSpec, ext_name: str,
                peers: Mapping[SubnetId, Lease], direct: Direct = frozenset()) -> DesiredState:
    """Pure: an IPv6-only network (EnableIPv4 false): flannel-v6.<VNI> alone, with every peer's
    IPv6 route, neighbour and FDB entry (no flannel.<VNI>, no IPv4 route is ours); with
    DirectRouting, a route via the PublicIPv6 of each peer in ``direct``."""
    routes: list[Route] = []
    neighs: list[Neigh] = []
    fdbs: list[Fdb] = []
    for lease in peers.values():
        _add(peer_entries6(opts, lease, ext_name, direct), routes, neighs, fdbs)
    own6 = own_ipv6(opts, own, network6, link6)
    return dataclasses.replace(own6, network=None, routes=frozenset(routes), neighs=frozenset(neighs),
                               fdbs=frozenset(fdbs), watch=(ext_name,))


def peer_entries(opts: VxlanOptions, ext_name: str, sn: ipaddress.IPv4Network, lease: Lease, direct: bool
                 ) -> PeerEntries | None:
    """Pure: one peer's route, neighbour and FDB entry (only a route when it is directly routed)."""
    mac = peer_mac(lease)
    if mac is None:
        return None
    pip = lease.attrs.public_ip
    if direct:
        return Route(sn, ext_name, pip), None, None
    gw = sn.network_address
    return Route(sn, opts.dev, gw, onlink=True), Neigh(opts.dev, gw, mac), Fdb(opts.dev, mac, pip)


def plan_vxlan(
    opts: VxlanOptions, network: ipaddress.IPv4Network, own: Lease, link: LinkSpec, ext_name: str,
    peers: Mapping[ipaddress.IPv4Network, Lease], direct: Direct = frozenset(),
    memo: dict[int, tuple[Lease, bool, PeerEntries | None]] | None = None,
    v6: DesiredState | None = None,
) -> DesiredState:
    """Pure: our lease and the peers' leases in, the kernel state flannel would build out.
    ``memo`` (optional, updated in place) keeps each peer's entries while its lease object is the
    same (keyed by its id: no subnet hashed), so a run after one lease event builds one peer's
    entries, not all of them. ``v6`` (dual
    stack: ``own_ipv6``) adds flannel-v6.<VNI> and every peer's IPv6 entries. ``direct``: the peer
    addresses (either family) that are directly connected, routed directly with DirectRouting."""
    routes: list[Route] = []
    neighs: list[Neigh] = []
    fdbs: list[Fdb] = []
    fresh: dict[int, tuple[Lease, bool, PeerEntries | None]] = {}
    for sn, lease in peers.items():
        is_direct = opts.direct_routing and lease.attrs.public_ip in direct
        hit = memo.get(id(lease)) if memo is not None else None
        if hit is not None and hit[0] is lease and hit[1] == is_direct:
            entries = hit[2]
        else:
            entries = peer_entries(opts, ext_name, sn, lease, is_direct)
        fresh[id(lease)] = (lease, is_direct, entries)
        if entries is None:
            continue
        _add(entries, routes, neighs, fdbs)
        if v6 is not None:
            _add(peer_entries6(opts, lease, ext_name, direct), routes, neighs, fdbs)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    own_addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
    v6 = v6 or DesiredState(network)
    return DesiredState(network, (link, *v6.links), (Address(opts.dev, own_addr, network), *v6.addresses),
                        frozenset(routes), frozenset(neighs), frozenset(fdbs), frozenset({opts.dev}) | v6.owned_devs,
                        sysctls=((f"net/ipv6/conf/{opts.dev}/accept_ra", "0"), *v6.sysctls), watch=(ext_name,),
                        network6=v6.network6)


class VxlanBackend(PlanningBackend):
    name = "vxlan"
    lease_types = ("vxlan",)
    ipv6_only = True

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        self.opts = parse_options(config, ext.mtu)
        self.needs_onlink = self.opts.direct_routing
        self.mac = self.mac6 = ""
        self.ipv6 = config.enable_ipv6 and config.ipv6_network is not None and ext.ext_v6_addr is not None
        self.ipv4 = config.enable_ipv4  # False: IPv6-only, flannel-v6.<VNI> alone
        self._memo: dict[int, tuple[Lease, bool, PeerEntries | None]] = {}
        log.info("VXLAN config: VNI=%d Port=%d GBP=%s Learning=%s DirectRouting=%s", self.opts.vni,
                 self.opts.port, self.opts.gbp, self.opts.learning, self.opts.direct_routing)

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        parse_options(config, 1500)
        return check_keys(config, KNOWN_KEYS, "vxlan")

    def link_spec(self) -> LinkSpec:
        o = self.opts
        return LinkSpec(o.dev, "vxlan", o.mtu - OVERHEAD, self.mac or None,
                        VxlanSpec(o.vni, o.port, self.ext.ext_addr, self.ext.index, o.gbp, o.learning))

    def link_spec6(self) -> LinkSpec:
        o = self.opts
        assert self.ext.ext_v6_addr is not None
        # Go asks for MTU - 50 here too; the kernel clamps a vxlan device over IPv6 to the underlay's
        # MTU - 70 (its IPv6 headroom), so flannel-v6.<VNI> ends up with the smaller of the two
        mtu6 = min(o.mtu - OVERHEAD, self.ext.mtu - OVERHEAD6)
        return LinkSpec(o.dev6, "vxlan", mtu6, self.mac6 or None,
                        VxlanSpec(o.vni, o.port, self.ext.ext_v6_addr, self.ext.index, o.gbp, o.learning))

    def lease_attrs(self) -> LeaseAttrs:
        """As Go's newSubnetAttrs: BackendData for IPv4, BackendV6Data for IPv6; IPv6-only leases
        carry PublicIP 0.0.0.0 and no BackendData."""
        v6 = {"VNI": self.opts.vni, "VtepMAC": self.mac6} if self.ipv6 else None
        v4 = {"VNI": self.opts.vni, "VtepMAC": self.mac} if self.ipv4 else None
        return LeaseAttrs(self.ext.ext_addr if self.ipv4 else ipaddress.IPv4Address(0),
                          self.ext.ext_v6_addr if self.ipv6 else None, "vxlan", v4, v6)

    def mtu(self) -> int:
        return self.opts.mtu - OVERHEAD

    def peer_problem(self, lease: Lease) -> str | None:
        if not self.ipv4:
            if peer_mac(lease, v6=True) is None:
                return f"its BackendV6Data has no valid VtepMAC: {lease.attrs.backend_v6_data!r}"
            return None
        if peer_mac(lease) is None:
            return f"its BackendData has no valid VtepMAC: {lease.attrs.backend_data!r}"
        return None

    async def prepare(self, host: HostOps) -> LeaseAttrs:
        """The device now, so that its MAC goes into the lease: the MAC of a compatible device left
        by our previous run (the peers know it), else a new random one."""
        name = self.network or self.config.ipv6_network
        try:
            if self.ipv4:
                host.claim_device(self.opts.dev, f"network {name}",
                                  f"two networks on one host need different VXLAN VNIs: give this one another "
                                  f'("Backend": {{"Type": "vxlan", "VNI": {self.opts.vni + 1}}})')
                self.mac = (await asyncio.to_thread(host.existing_mac, self.link_spec()) or self.stored_mac
                            or random_mac())
                self.mac = await asyncio.to_thread(host.ensure_link, self.link_spec())
                await asyncio.to_thread(host.set_sysctl, f"net/ipv6/conf/{self.opts.dev}/accept_ra", "0")
            if self.ipv6:
                host.claim_device(self.opts.dev6, f"network {name}", "give this network another VNI")
                self.mac6 = (await asyncio.to_thread(host.existing_mac, self.link_spec6()) or self.stored_mac6
                             or random_mac())
                self.mac6 = await asyncio.to_thread(host.ensure_link, self.link_spec6())
                await asyncio.to_thread(host.set_sysctl, f"net/ipv6/conf/{self.opts.dev6}/accept_ra", "0")
        except KernelError as err:
            raise LocalConfigError(f"vxlan backend: {err}") from err
        return self.lease_attrs()

    def plan(self, own: Lease, peers: Mapping[SubnetId, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        if not self.ipv4:
            assert own.ipv6_subnet is not None and self.config.ipv6_network is not None
            return (plan_vxlan6(self.opts, own, self.config.ipv6_network, self.link_spec6(), self.ext.name,
                                peers or {}, facts.onlink),)
        assert self.network is not None
        v6 = None
        if self.ipv6 and own.ipv6_subnet is not None and self.config.ipv6_network is not None:
            v6 = own_ipv6(self.opts, own, self.config.ipv6_network, self.link_spec6())
        return (plan_vxlan(self.opts, self.network, own, self.link_spec(), self.ext.name, peers or {},
                           facts.onlink, self._memo, v6),)
