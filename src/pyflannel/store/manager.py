"""Lease policy on top of a registry: flannel's LocalManager, minus its bugs.

- acquire: reuse the lease that carries our public IP, else the subnet from subnet.env, else a
  random free one; a lost create race is retried (up to 10 times), flannel exits instead
  (docs/compatibility.md#lease-acquisition);
- reservations (keys without an etcd lease) stay reservations when we take them
  (docs/compatibility.md#reservations);
- renew: re-put our lease with a fresh TTL only if nobody changed the key meanwhile;
- watch: list, then watch from the next revision; on compaction, a cancelled or failed watch,
  re-list and carry on. Callers get ``Snapshot`` and ``Changes`` values only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ..core.allocate import NO_IPV4, is_compatible, lease_fits, pick_subnet, pick_subnet_v6
from ..core.backoff import LogOnce
from ..core.config import NetworkConfig
from ..core.errors import AllocationError, StoreUnavailable
from ..core.events import BadLease, Changes, Snapshot, WatchLost
from ..core.lease import Lease, LeaseAttrs, render_subnet_key
from .registry import Registry

log = logging.getLogger(__name__)

RACE_RETRIES = 10
DEFAULT_TTL = 24 * 3600


@dataclass(frozen=True)
class AcquireResult:
    lease: Lease
    attempts: int
    how: str  # "reused", "previous", "allocated", "reservation"


def _taken(snap: Snapshot) -> list[ipaddress.IPv4Network]:
    return [le.subnet for le in snap.leases] + [b.subnet for b in snap.bad
                                                if isinstance(b.subnet, ipaddress.IPv4Network)]


def _taken6(snap: Snapshot) -> list[ipaddress.IPv6Network]:
    """IPv6 subnets in use, also those of IPv6-only keys whose value is bad (still someone's)."""
    return [le.ipv6_subnet for le in snap.leases if le.ipv6_subnet is not None] + [
        b.subnet for b in snap.bad if isinstance(b.subnet, ipaddress.IPv6Network)]


class LeaseManager:
    def __init__(
        self,
        registry: Registry,
        attrs: LeaseAttrs,
        *,
        ttl: int = DEFAULT_TTL,
        previous_subnet: ipaddress.IPv4Network | None = None,
        previous_problem: str = "",
        previous_ipv6_subnet: ipaddress.IPv6Network | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``previous_problem``: why the previous subnet.env names no usable subnet ("subnet.env
        PATH names no usable subnet: WHY"); said plainly once the outcome is known."""
        self.registry = registry
        self.attrs = attrs
        self.ttl = ttl
        self.previous_subnet = previous_subnet
        self.previous_ipv6_subnet = previous_ipv6_subnet
        self.previous_problem = previous_problem
        self.rng = rng or random.SystemRandom()

    async def acquire(self, config: NetworkConfig) -> AcquireResult:
        """Lease a subnet for ``self.attrs.public_ip``; raises AllocationError or StoreUnavailable."""
        for attempt in range(1, RACE_RETRIES + 1):
            snap = await self.registry.list_leases()
            got = await self._try_acquire(config, snap)
            if got is not None:
                return AcquireResult(got[0], attempt, got[1])
            log.info("lost a race for a subnet, retrying attempt=%d", attempt)
            await asyncio.sleep(self.rng.uniform(0.0, 0.05 * attempt))
        raise AllocationError(
            f"could not acquire a subnet in {config.network}: lost the race for a free subnet "
            f"{RACE_RETRIES} times in a row; many hosts are joining at once, try again"
        )

    def _is_mine(self, lease: Lease, config: NetworkConfig) -> bool:
        """Our lease carries our PublicIP; on an IPv6-only host (PublicIP 0.0.0.0 on every host) our
        PublicIPv6 instead, where Go would take the first lease of all (its issue, not copied)."""
        if config.enable_ipv4:
            return lease.attrs.public_ip == self.attrs.public_ip
        return self.attrs.public_ipv6 is not None and lease.attrs.public_ipv6 == self.attrs.public_ipv6

    async def _try_acquire(self, config: NetworkConfig, snap: Snapshot) -> tuple[Lease, str] | None:
        mine = [le for le in snap.leases if self._is_mine(le, config)]
        for lease in mine:
            if lease_fits(config, lease.subnet, lease.ipv6_subnet):
                ttl = None if lease.is_reservation else self.ttl
                new = await self.registry.update_lease(lease, self.attrs, ttl)
                if new is None:
                    return None
                names = f"{new.subnet} and {new.ipv6_subnet}" if new.ipv6_subnet else f"{new.subnet}"
                self._say_problem(f"our lease in etcd still names {names}: keeping it")
                return new, "reservation" if lease.is_reservation else "reused"
            if lease.is_reservation:
                log.warning("ignoring reservation %s for our public IP %s: it does not fit the network config "
                            "(SubnetLen /%d, SubnetMin %s..SubnetMax %s, IPv6 %s)", lease.key, self.attrs.public_ip,
                            config.subnet_len, config.subnet_min, config.subnet_max,
                            "on" if config.enable_ipv6 else "off")
                continue
            if config.enable_ipv6 and lease.ipv6_subnet is None and self.previous_subnet is None \
                    and config.enable_ipv4 and is_compatible(config, lease.subnet):
                self.previous_subnet = lease.subnet  # IPv6 switched on: keep the IPv4 subnet, add an IPv6 one
            log.warning("deleting our old lease %s: it does not fit the network config", lease.key)
            await self.registry.delete_lease(lease.subnet, lease.mod_revision, lease.ipv6_subnet)
            return None
        got = await self._try_previous(config, snap)
        if got is not None:
            return got if got[0] is not None else None  # type: ignore[return-value]
        self._say_problem("nothing else names our old subnet (no lease in etcd for our public IP "
                          f"{self.attrs.public_ip}): a new subnet will be leased; restart docker afterwards",
                          logging.ERROR)
        subnet = pick_subnet(config, _taken(snap), self.rng) if config.enable_ipv4 else NO_IPV4
        v6 = pick_subnet_v6(config, _taken6(snap), self.rng) if config.enable_ipv6 else None
        new = await self.registry.create_lease(subnet, self.attrs, self.ttl, v6)
        return (new, "allocated") if new is not None else None

    async def _try_previous(self, config: NetworkConfig, snap: Snapshot) -> tuple[Lease | None, str] | None:
        """The subnets subnet.env remembers, if free and still fitting: (lease or None after a lost
        race, "previous"), or None to allocate."""
        prev6 = self.previous_ipv6_subnet if config.enable_ipv6 else None
        # IPv6-only: the IPv6 subnet is the one remembered; the IPv4 half is always Go's 0.0.0.0-0
        prev = self.previous_subnet if config.enable_ipv4 else (NO_IPV4 if prev6 is not None else None)
        if prev is None:
            return None
        if config.enable_ipv6 and prev6 is None:  # a subnet.env (or lease) of before IPv6: a new IPv6 subnet
            prev6 = pick_subnet_v6(config, _taken6(snap), self.rng)
        # our own key overwritten with something that is no lease while we were down (a lease has a
        # TTL, garbage none: it would keep the subnet for good): ours to write back, as keeper.py
        # does while we run
        key = "/" + render_subnet_key(prev, prev6)
        garbage = next((b for b in snap.bad if b.subnet == prev and b.key.endswith(key) and b.mod_revision), None)
        snap = replace(snap, bad=tuple(b for b in snap.bad if b is not garbage))
        taken, taken6 = _taken(snap) if config.enable_ipv4 else [], _taken6(snap)
        free = not any(prev.overlaps(t) for t in taken) and not (prev6 and any(prev6.overlaps(t) for t in taken6))
        if lease_fits(config, prev, prev6) and free:
            if garbage is None:
                return await self.registry.create_lease(prev, self.attrs, self.ttl, prev6), "previous"
            log.warning("our previous subnet %s from subnet.env: its key holds something that is not a lease (%s); "
                        "writing our lease over it", prev, garbage.reason)
            over = Lease(prev, self.attrs, prev6, 0, garbage.mod_revision)
            return await self.registry.update_lease(over, self.attrs, self.ttl), "previous"
        log.info("not reusing previous subnet %s%s from subnet.env: taken or outside the network config", prev,
                 f" {prev6}" if prev6 else "")
        self.previous_subnet = self.previous_ipv6_subnet = None
        return None

    def _say_problem(self, outcome: str, level: int = logging.WARNING) -> None:
        """Once: the previous subnet.env named no usable subnet, and what that means now."""
        if self.previous_problem:
            log.log(level, "%s; %s", self.previous_problem, outcome)
            self.previous_problem = ""

    async def renew(self, lease: Lease) -> Lease | None:
        """Re-put our lease with a fresh TTL; None when the key was changed or deleted by someone."""
        if lease.is_reservation:
            return lease
        return await self.registry.update_lease(lease, self.attrs, self.ttl)

    async def restore(self, lease: Lease, over_revision: int) -> Lease | None:
        """Our key's value was overwritten with garbage at ``over_revision``: write our lease back
        over exactly that value (None when the key changed again meanwhile)."""
        return await self.registry.update_lease(replace(lease, mod_revision=over_revision), self.attrs,
                                                None if lease.is_reservation else self.ttl)

    async def recreate(self, subnet: ipaddress.IPv4Network,
                       ipv6_subnet: ipaddress.IPv6Network | None = None) -> Lease | None:
        """Our key was deleted: take the same subnets again if they are still free."""
        return await self.registry.create_lease(subnet, self.attrs, self.ttl, ipv6_subnet)


async def watch_leases(registry: Registry, *, retry_delay: float = 1.0) -> AsyncIterator[Snapshot | Changes]:
    """Snapshot first, then changes; after any loss of the watch, a fresh snapshot. Never ends."""
    outage = LogOnce(log, same=lambda msg: "outage")  # one outage, however each attempt words it
    while True:
        try:
            snap = await registry.list_leases()
        except StoreUnavailable as err:
            outage.error("cannot list leases, keeping the current peers until %s answers: %s",
                         registry.store_name, err)
            await asyncio.sleep(retry_delay)
            continue
        outage.ok("%s answers again, leases re-listed revision=%d", registry.store_name, snap.revision)
        yield snap
        async for item in registry.watch_leases(snap.revision + 1):
            if isinstance(item, WatchLost):
                log.warning("lease watch lost, re-listing: %s", item.reason)
                break
            yield item
        else:
            log.warning("lease watch ended, re-listing")
        await asyncio.sleep(0.05)


def track_bad(ev: Snapshot | Changes, seen: set[str], prefix: str, deleted_keys: tuple[str, ...] = ()) -> None:
    """Warn once per bad key in ``ev`` and keep ``seen`` as the set of keys bad right now (the
    flannel_bad_leases gauge): a snapshot says exactly which; a key put again as a good lease, or
    deleted, is no longer bad (and is warned about again if it breaks anew). ``deleted_keys``: every
    key the store reported deleted, before screening (``screen_held`` drops the delete of a key
    that held nothing, such as a revoked second key, which is exactly a bad key going away)."""
    log_bad(ev.bad, seen)
    if isinstance(ev, Snapshot):
        seen.intersection_update(b.key for b in ev.bad)
        return
    still = {b.key for b in ev.bad}
    for key in [prefix + le.key for le in ev.puts] + [prefix + key for key in deleted_keys or ev.deleted_keys]:
        if key not in still:
            seen.discard(key)


def log_bad(bad: tuple[BadLease, ...], seen: set[str]) -> None:
    """One warning per bad key (and again only after it was fixed and broke anew)."""
    for b in bad:
        if b.key not in seen:
            seen.add(b.key)
            if b.key.startswith("node "):  # kube mode: a Node object, not a key of ours
                log.warning("skipping %s: %s (fix its flannel annotations or podCIDR; the other nodes are kept)",
                            b.key, b.reason)
            else:
                log.warning("skipping bad lease key=%s: %s (someone else wrote it: fix it, or delete it with "
                            "`flannelctl leases revoke %s`)", b.key, b.reason, b.key.rsplit("/", 1)[-1])
