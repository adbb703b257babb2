"""The vxlan backend, as flannel programs it (FLANNEL-COMPAT §4.2).

Device ``flannel.<VNI>`` (local = our public IP, learning off, MTU = underlay MTU - 50) carrying
``<our subnet network address>/32``. Per peer: a permanent neighbour ``<peer subnet address>
lladdr <peer VtepMAC>``, a permanent FDB entry ``<peer VtepMAC> dst <peer PublicIP> self`` and a
route ``<peer subnet> via <peer subnet address> dev flannel.1 onlink``; with DirectRouting, a
peer whose PublicIP is directly connected gets a plain route via that address instead.

Better than flannel: the VTEP MAC of an existing compatible device is kept across restarts and
re-used when the device is recreated (flannel's etcd mode picks a new one and never tells its
peers), and a recreated device gets all its peers back at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pyroute2 import IPRoute

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, Fdb, LinkSpec, Neigh, Route, VxlanSpec
from ..core.errors import LocalConfigError
from ..core.lease import Lease, LeaseAttrs
from ..kernel import netlink
from ..kernel.iface import ExternalInterface
from ..kernel.reconciler import KernelError, incompatibilities, link_kind_attrs
from .base import KernelBackend, bool_option, check_keys, int_option

log = logging.getLogger(__name__)

OVERHEAD = 50
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


def parse_options(config: NetworkConfig, ext_mtu: int) -> VxlanOptions:
    port = config.backend_option("Port", 0)
    return VxlanOptions(
        vni=int_option(config, "VNI", 1, 1, 16777215, "vxlan"),
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


def peer_mac(lease: Lease) -> str | None:
    data = lease.attrs.backend_data
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return mac.lower() if isinstance(mac, str) and _MAC_RE.match(mac) else None


def plan_vxlan(
    opts: VxlanOptions, network: ipaddress.IPv4Network, own: Lease, link: LinkSpec, ext_name: str,
    peers: Mapping[ipaddress.IPv4Network, Lease], direct: frozenset[ipaddress.IPv4Address] = frozenset(),
) -> DesiredState:
    """Pure: our lease and the peers' leases in, the kernel state flannel would build out."""
    routes, neighs, fdbs = set(), set(), set()
    for sn, lease in peers.items():
        mac = peer_mac(lease)
        if mac is None:
            continue
        pip = lease.attrs.public_ip
        if opts.direct_routing and pip in direct:
            routes.add(Route(sn, ext_name, pip))
            continue
        gw = sn.network_address
        neighs.add(Neigh(opts.dev, gw, mac))
        fdbs.add(Fdb(opts.dev, mac, pip))
        routes.add(Route(sn, opts.dev, gw, onlink=True))
    own_addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
    return DesiredState(network, (link,), (Address(opts.dev, own_addr, network),), frozenset(routes),
                        frozenset(neighs), frozenset(fdbs), frozenset({opts.dev}))


class VxlanBackend(KernelBackend):
    name = "vxlan"
    lease_types = ("vxlan",)

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        for warning in check_keys(config, KNOWN_KEYS, "vxlan"):
            log.warning(warning)
        self.opts = parse_options(config, ext.mtu)
        self.mac = ""
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

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, None, "vxlan", {"VNI": self.opts.vni, "VtepMAC": self.mac})

    def mtu(self) -> int:
        return self.opts.mtu - OVERHEAD

    def peer_problem(self, lease: Lease) -> str | None:
        if peer_mac(lease) is None:
            return f"its BackendData has no valid VtepMAC: {lease.attrs.backend_data!r}"
        return None

    async def prepare(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.mac = await asyncio.to_thread(self._existing_mac) or random_mac()
        try:
            await asyncio.to_thread(self._ensure_device)
        except KernelError as err:
            raise LocalConfigError(str(err)) from err

    def _existing_mac(self) -> str | None:
        """The MAC of a compatible flannel.N left by our previous run: peers already know it."""
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.opts.dev)
            if not found:
                return None
            msg = ipr.get_links(found[0])[0]
            kind, attrs = link_kind_attrs(msg)
            if kind == "vxlan" and not incompatibilities(self.link_spec(), kind, attrs):
                return str(msg.get("address"))
        return None

    def _ensure_device(self) -> None:
        with IPRoute() as ipr:
            state = self.reconciler.ensure_link(ipr, self.link_spec())
        self.mac = state.mac
        netlink.set_sysctl(f"net/ipv6/conf/{self.opts.dev}/accept_ra", "0")

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        assert self.config.network is not None
        addr = ipaddress.IPv4Interface(f"{lease.subnet.network_address}/32")
        link = await asyncio.to_thread(netlink.link_by_name, self.opts.dev)
        if link is None:
            await asyncio.to_thread(self._ensure_device)
            link = await asyncio.to_thread(netlink.link_by_name, self.opts.dev)
        assert link is not None
        await asyncio.to_thread(netlink.ensure_only_address, link.index, addr, self.config.network)
        self.start_monitor((self.opts.dev, self.ext.name), owned_devs=(self.opts.dev,))

    def _direct(self) -> frozenset[ipaddress.IPv4Address]:
        if not self.opts.direct_routing:
            return frozenset()
        out = set()
        for pip in {le.attrs.public_ip for le in self.peers.values()}:
            try:
                if netlink.route_gateway(pip) is None:
                    out.add(pip)
            except KernelError:
                continue
        return frozenset(out)

    def desired(self) -> DesiredState:
        assert self.lease is not None and self.config.network is not None
        return plan_vxlan(self.opts, self.config.network, self.lease, self.link_spec(), self.ext.name, self.peers,
                          self._direct())
