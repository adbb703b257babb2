"""Facts about this host that backends plan with, gathered by the daemon (the kernel layer) and
handed in: backends never look anything up themselves."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ExternalInterface:
    """The interface that carries flannel's traffic to the other hosts (``-iface``)."""

    name: str
    index: int
    mtu: int
    iface_addr: ipaddress.IPv4Address  # on the interface: the UDP socket binds here
    ext_addr: ipaddress.IPv4Address  # published in the lease as PublicIP (-public-ip or iface_addr)
    iface_v6_addr: ipaddress.IPv6Address | None = None  # with EnableIPv6: the interface's IPv6 address
    ext_v6_addr: ipaddress.IPv6Address | None = None  # published as PublicIPv6 (-public-ipv6 or iface_v6_addr)


@dataclass(frozen=True)
class HostFacts:
    """What a plan may depend on besides the leases: today, which peer PublicIPs and PublicIPv6s
    are directly connected (vxlan DirectRouting). Gathered before planning, only for backends that
    ask."""

    onlink: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
