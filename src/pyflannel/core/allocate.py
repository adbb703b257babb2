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


def candidate_count(config: NetworkConfig) -> int:
    assert config.subnet_min is not None and config.subnet_max is not None
    size = 1 << (32 - config.subnet_len)
    return max(0, (int(config.subnet_max) - int(config.subnet_min)) // size + 1)


def free_count(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network]) -> int:
    """How many candidate subnets are still free (for messages and `leases list`)."""
    t = _Taken(taken)
    size = 1 << (32 - config.subnet_len)
    base = int(config.subnet_min or 0)
    return sum(1 for i in range(candidate_count(config)) if not t.overlaps(base + i * size, base + (i + 1) * size - 1))


def pick_subnet(
    config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network], rng: random.Random
) -> ipaddress.IPv4Network:
    """A random free subnet of ``config.subnet_len`` in SubnetMin..SubnetMax, or AllocationError."""
    if config.network is None or config.subnet_min is None:
        raise AllocationError("no IPv4 network configured: set Network in the network config")
    taken = list(taken)
    t = _Taken(taken)
    size = 1 << (32 - config.subnet_len)
    base = int(config.subnet_min)
    n = candidate_count(config)

    def free(i: int) -> bool:
        start = base + i * size
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
            f"out of subnets: network {config.network} holds {n} subnets of /{config.subnet_len} between "
            f"SubnetMin {config.subnet_min} and SubnetMax {config.subnet_max}, and all {n} are taken "
            f"({len(taken)} leases in the store); fix: revoke stale leases, or widen Network or "
            f"SubnetMin..SubnetMax in the network config"
        )
    return ipaddress.IPv4Network((base + choice * size, config.subnet_len))
