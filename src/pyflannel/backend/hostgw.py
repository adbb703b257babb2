"""The host-gw backend (docs/compatibility.md#host-gw): a route per peer, ``<peer subnet> via <peer
PublicIP> dev <external interface>`` (IPv6: ``via <peer PublicIPv6>``, also on an IPv6-only
network). No encapsulation, so every host must be on one L2 segment, and behind NAT it cannot
work: refused with flannel's message."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from ..core.config import NetworkConfig
from ..core.desired import DesiredState, Route
from ..core.errors import LocalConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs, SubnetId
from ..core.plan import Plan
from .base import PlanningBackend, check_keys

log = logging.getLogger(__name__)


def plan_hostgw(network: ipaddress.IPv4Network | None, ext_name: str, peers: Mapping[SubnetId, Lease],
                network6: ipaddress.IPv6Network | None = None,
                memo: dict[int, tuple[Lease, Route]] | None = None) -> DesiredState:
    """Pure: peers' leases in, one route per peer out; in dual stack (``network6``) also one IPv6
    route per peer, ``<peer IPv6 subnet> via <peer PublicIPv6>``; IPv6-only (``network`` None)
    only those. ``memo`` (optional, replaced in place) keeps each peer's route while its lease
    object is the same (keyed by the lease's id), so a run after one lease event builds one route,
    and the diff finds the others unchanged by identity instead of comparing and hashing addresses."""
    if network is None:
        routes: list[Route] = []
    elif memo is None:
        routes = [Route(le.subnet, ext_name, le.attrs.public_ip) for le in peers.values()]
    else:
        fresh: dict[int, tuple[Lease, Route]] = {}
        for le in peers.values():
            hit = memo.get(id(le))
            fresh[id(le)] = hit if hit is not None and hit[0] is le else (le, Route(le.subnet, ext_name,
                                                                                    le.attrs.public_ip))
        memo.clear()
        memo.update(fresh)
        routes = [route for _le, route in fresh.values()]
    if network6 is not None:
        routes += [Route(le.ipv6_subnet, ext_name, le.attrs.public_ipv6) for le in peers.values()
                   if le.ipv6_subnet is not None and le.attrs.public_ipv6 is not None]
    return DesiredState(network, routes=frozenset(routes), watch=(ext_name,), network6=network6)


class HostGwBackend(PlanningBackend):
    name = "host-gw"
    lease_types = ("host-gw",)
    ipv6_only = True

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        if ext.ext_addr != ext.iface_addr or ext.ext_v6_addr != ext.iface_v6_addr:
            raise LocalConfigError(
                "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not "
                f"supported by host-gw backend (public IP {ext.ext_addr} {ext.ext_v6_addr or ''}, {ext.name} has "
                f"{ext.iface_addr} {ext.iface_v6_addr or ''}; "
                "use the vxlan backend behind NAT)")
        super().__init__(ext, config)
        self._memo: dict[int, tuple[Lease, Route]] = {}

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        return check_keys(config, (), "host-gw")

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, self.ext.ext_v6_addr, "host-gw")

    def mtu(self) -> int:
        return self.ext.mtu

    def plan(self, own: Lease, peers: Mapping[SubnetId, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        v6 = self.config.ipv6_network if self.config.enable_ipv6 and self.ext.ext_v6_addr is not None else None
        return (plan_hostgw(self.network, self.ext.name, peers or {}, v6, self._memo),)
