"""Choosing a subnet for this host: pure, so every rule is a unit test.

Flannel's order (docs/compatibility.md#lease-acquisition): reuse the lease that carries our public IP, else the subnet
remembered in subnet.env, else a random free one. The random pick is uniform over *all* free
subnets (flannel takes the first 100 free from SubnetMin up), which makes two hosts joining at
once less likely to race for the same key. Networks with more than 65536 candidate subnets are
probed at random instead of enumerated.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Iterable
from typing import NamedTuple

from .config import NetworkConfig
from .errors import AllocationError

_ENUMERATE_LIMIT = 1 << 16
_RANDOM_PROBES = 4096


def is_compatible(config: NetworkConfig, subnet: ipaddress.IPv4Network) -> bool:
    """flannel's isSubnetConfigCompat for IPv4: inside SubnetMin..SubnetMax with the right length."""
    if config.network is None or config.subnet_min is None or config.subnet_max is None:
        return False
    return (
        subnet.prefixlen == config.subnet_len
        and config.subnet_min <= subnet.network_address <= config.subnet_max
    )


def is_compatible_v6(config: NetworkConfig, subnet: ipaddress.IPv6Network | None) -> bool:
    """The IPv6 half of isSubnetConfigCompat: with IPv6 off a lease must have no IPv6 subnet; with
    it on, one inside IPv6SubnetMin..IPv6SubnetMax of IPv6SubnetLen."""
    if not config.enable_ipv6:
        return subnet is None
    if subnet is None or config.ipv6_subnet_min is None or config.ipv6_subnet_max is None:
        return False
    return (subnet.prefixlen == config.ipv6_subnet_len
            and config.ipv6_subnet_min <= subnet.network_address <= config.ipv6_subnet_max)


def lease_fits(config: NetworkConfig, subnet: ipaddress.IPv4Network,
               ipv6_subnet: ipaddress.IPv6Network | None) -> bool:
    """Both halves of isSubnetConfigCompat (an IPv6-only lease's IPv4 half is 0.0.0.0/0)."""
    v4 = is_compatible(config, subnet) if config.enable_ipv4 else subnet == NO_IPV4
    return v4 and is_compatible_v6(config, ipv6_subnet)


NO_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")  # the IPv4 half of an IPv6-only lease, as Go keys it


class _Taken:
    """Merged [start, end] intervals of taken address space, for O(log n) overlap checks."""

    def __init__(self, taken: Iterable[ipaddress.IPv4Network]) -> None:
        ivs = sorted((int(n.network_address), int(n.broadcast_address)) for n in taken)
        merged: list[list[int]] = []
        for s, e in ivs:
            if merged and s <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, end) - 1
        return i >= 0 and self.ends[i] >= start


class _Range(NamedTuple):
    """One family's allocation range: subnets of ``length`` from ``low`` to ``high`` inclusive."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    bits: int
    length: int
    low: int
    high: int
    what: str  # the config fields, for the message


def _range(config: NetworkConfig, v6: bool) -> _Range:
    if v6:
        low6, high6 = config.ipv6_subnet_min, config.ipv6_subnet_max
        return _Range(config.ipv6_network, 128, config.ipv6_subnet_len, int(low6 or 0), int(high6 or 0),
                      f"IPv6SubnetMin {low6} and IPv6SubnetMax {high6}")
    return _Range(config.network, 32, config.subnet_len, int(config.subnet_min or 0), int(config.subnet_max or 0),
                  f"SubnetMin {config.subnet_min} and SubnetMax {config.subnet_max}")


def _count(r: _Range) -> int:
    return max(0, (r.high - r.low) // (1 << (r.bits - r.length)) + 1)


def candidate_count(config: NetworkConfig, v6: bool = False) -> int:
    assert (config.ipv6_subnet_min if v6 else config.subnet_min) is not None
    return _count(_range(config, v6))


def free_count(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
               v6: bool = False) -> int:
    """How many candidate subnets are still free (for messages and `leases list`)."""
    t = _Taken(taken)
    r = _range(config, v6)
    size = 1 << (r.bits - r.length)
    return sum(1 for i in range(_count(r)) if not t.overlaps(r.low + i * size, r.low + (i + 1) * size - 1))


def pick_subnet(
    config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network], rng: random.Random
) -> ipaddress.IPv4Network:
    """A random free subnet of ``config.subnet_len`` in SubnetMin..SubnetMax, or AllocationError."""
    if config.network is None or config.subnet_min is None:
        raise AllocationError("no IPv4 network configured: set Network in the network config")
    return ipaddress.IPv4Network(_pick(_range(config, False), list(taken), rng))


def pick_subnet_v6(
    config: NetworkConfig, taken: Iterable[ipaddress.IPv6Network], rng: random.Random
) -> ipaddress.IPv6Network:
    """A random free subnet of ``IPv6SubnetLen`` in IPv6SubnetMin..IPv6SubnetMax, or AllocationError
    (chosen independently of the IPv4 one, as flannel does)."""
    if config.ipv6_network is None or config.ipv6_subnet_min is None:
        raise AllocationError('no IPv6 network configured: set "IPv6Network" in the network config')
    return ipaddress.IPv6Network(_pick(_range(config, True), list(taken), rng))


def _pick(r: _Range, taken: list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network],
          rng: random.Random) -> tuple[int, int]:
    t = _Taken(taken)
    size = 1 << (r.bits - r.length)
    n = _count(r)

    def free(i: int) -> bool:
        start = r.low + i * size
        return not t.overlaps(start, start + size - 1)

    choice: int | None = None
    if n <= _ENUMERATE_LIMIT:
        frees = [i for i in range(n) if free(i)]
        if frees:
            choice = rng.choice(frees)
    else:
        for _ in range(_RANDOM_PROBES):
            i = rng.randrange(n)
            if free(i):
                choice = i
                break
        else:
            start = rng.randrange(n)
            choice = next((j % n for j in range(start, start + n) if free(j % n)), None)
    if choice is None:
        raise AllocationError(
            f"out of subnets: network {r.network} holds {n} subnets of /{r.length} between "
            f"{r.what}, and all {n} are taken ({len(taken)} leases in the store); fix: revoke stale "
            f"leases, or widen the network or its subnet range in the network config"
        )
    return r.low + choice * size, r.length
