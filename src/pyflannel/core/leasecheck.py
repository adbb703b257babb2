"""Which leases may reach the kernel: the shape rules a subnet key must meet against the network
config, applied to every store event before the peer table sees it.

A key someone wrote by hand (or an attacker) for a /25 inside host A's /24, or a /23 around it,
would otherwise be programmed on every host and pull half of A's containers towards the writer.
Go flannel programs such keys; pyflannel skips them, one warning per key (``store.manager.log_bad``).

The rules: a lease is exactly ``SubnetLen`` long, aligned (the key parser already refuses host
bits) and inside ``Network``. Two aligned subnets of one length are either the same key or
disjoint, so with these rules no lease can overlap another one: the overlap check of the issue
falls out of the length rule and needs no table walk per event.

In kube mode (``any_len``) the length rule is off: a subnet is a node's podCIDR, whose length is
the controller manager's ``--node-cidr-mask-size``, not SubnetLen (Go flannel ignores SubnetLen
there too), and the node IPAM controller hands out disjoint podCIDRs. Inside ``Network`` still holds.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .config import NetworkConfig
from .events import BadLease, Changes, Snapshot
from .lease import Lease


def subnet_problem(subnet: ipaddress.IPv4Network, config: NetworkConfig, *, any_len: bool = False) -> str | None:
    """Why a lease for ``subnet`` cannot belong to a host of this network, or None."""
    network = config.network
    if network is None:
        return None
    if subnet.prefixlen != config.subnet_len and not any_len:
        return (f"{subnet} is a /{subnet.prefixlen}, but every lease of {network} is a /{config.subnet_len} "
                "(SubnetLen): it would overlap other hosts' subnets")
    if not subnet.subnet_of(network):
        return f"{subnet} is outside the network {network}"
    return None


def ipv6_problem(lease: Lease, config: NetworkConfig) -> str | None:
    """Why the IPv6 half of a dual-stack peer's lease cannot be programmed, or None."""
    net6, sn6 = config.ipv6_network, lease.ipv6_subnet
    if not config.enable_ipv6 or net6 is None or sn6 is None:
        return None
    if lease.attrs.ipv6_problem:
        return lease.attrs.ipv6_problem
    if sn6.prefixlen != config.ipv6_subnet_len:
        return f"its IPv6 subnet {sn6} is not a /{config.ipv6_subnet_len} (IPv6SubnetLen)"
    if not sn6.subnet_of(net6):
        return f"its IPv6 subnet {sn6} is outside the IPv6 network {net6}"
    return None


def _drop_ipv6(lease: Lease, config: NetworkConfig, prefix: str, warnings: list[str] | None) -> Lease:
    problem = ipv6_problem(lease, config)
    if problem is None:
        return lease
    if warnings is not None:
        warnings.append(f"lease {prefix + lease.key}: {problem}; using only its IPv4 part {lease.subnet}")
    return dataclasses.replace(lease, attrs=dataclasses.replace(lease.attrs, public_ipv6=None, backend_v6_data=None),
                               ipv6_subnet=None)


def screen(event: Snapshot | Changes, config: NetworkConfig, prefix: str = "",
           warnings: list[str] | None = None, *, any_len: bool = False) -> Snapshot | Changes:
    """``event`` with every lease that breaks a shape rule moved to ``bad`` (O(size of event)),
    named by its full key (``prefix`` + subnet key, as the store names bad keys). Deletes pass:
    deleting a key that was never accepted changes nothing. A dual-stack lease whose IPv6 half is
    unusable keeps its IPv4 half (the reason goes to ``warnings``)."""
    leases = event.leases if isinstance(event, Snapshot) else event.puts
    misfits: list[BadLease] = []
    kept: list[Lease] = []
    changed = False
    for lease in leases:
        if config.enable_ipv6 and lease.ipv6_subnet is not None:
            fixed = _drop_ipv6(lease, config, prefix, warnings)
            changed, lease = changed or fixed is not lease, fixed
        problem = subnet_problem(lease.subnet, config, any_len=any_len)
        if problem is None and lease.attrs.public_ip.is_unspecified:
            problem = "its host has no IPv4 PublicIP (an IPv6-only host): pyflannel routes IPv4 only"
        if problem is None:
            kept.append(lease)
        else:
            misfits.append(BadLease(prefix + lease.key, problem))
    if not misfits and not changed:
        return event
    bad = event.bad + tuple(misfits)
    if isinstance(event, Snapshot):
        return Snapshot(tuple(kept), event.revision, bad)
    return Changes(tuple(kept), event.deletes, event.revision, bad)
