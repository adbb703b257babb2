"""The host-gw backend (docs/compatibility.md#host-gw): a route per peer, ``<peer subnet> via <peer
PublicIP> dev <external interface>``. No encapsulation, so every host must be on one L2 segment,
and behind NAT it cannot work: refused with flannel's message."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from ..core.config import NetworkConfig
from ..core.desired import DesiredState, Route
from ..core.errors import LocalConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs
from ..core.plan import Plan
from .base import PlanningBackend, check_keys, ipv4_only

log = logging.getLogger(__name__)


def plan_hostgw(network: ipaddress.IPv4Network, ext_name: str, peers: Mapping[ipaddress.IPv4Network, Lease]
                ) -> DesiredState:
    """Pure: peers' leases in, one route per peer out."""
    routes = frozenset(Route(sn, ext_name, le.attrs.public_ip) for sn, le in peers.items())
    return DesiredState(network, routes=routes, watch=(ext_name,))


class HostGwBackend(PlanningBackend):
    name = "host-gw"
    lease_types = ("host-gw",)

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        if ext.ext_addr != ext.iface_addr:
            raise LocalConfigError(
                "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not "
                f"supported by host-gw backend (public IP {ext.ext_addr}, {ext.name} has {ext.iface_addr}; "
                "use the vxlan backend behind NAT)")
        super().__init__(ext, config)
        for warning in check_keys(config, (), "host-gw"):
            log.warning(warning)

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        return check_keys(config, (), "host-gw") + ipv4_only(config, "host-gw", " in this pyflannel")

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, self.ext.ext_v6_addr, "host-gw")

    def mtu(self) -> int:
        return self.ext.mtu

    def plan(self, own: Lease, peers: Mapping[ipaddress.IPv4Network, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        return (plan_hostgw(self.network, self.ext.name, peers or {}),)
