"""Store news as tagged values, so an ambiguous event can never mean "delete every peer".

Flannel's watcher sends "either Events or a Snapshot" in one type and reads an empty result as an
empty snapshot (docs/compatibility.md#watch). Here a snapshot, a batch of changes, a bad key and a lost
watch are different types, and ``PeerTable`` applies them: only an explicit DELETE or a fresh
snapshot that lacks a key removes a peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .lease import Lease, SubnetId


@dataclass(frozen=True)
class BadLease:
    """A key under ``<prefix>/subnets/`` whose key or value cannot be decoded."""

    key: str
    reason: str
    subnet: SubnetId | None = None  # the lease's ident (``Lease.ident``), known when only the value is bad
    mod_revision: int = 0  # the revision that wrote it (0: not known)


@dataclass(frozen=True)
class Snapshot:
    """Every lease under the prefix at ``revision``."""

    leases: tuple[Lease, ...]
    revision: int
    bad: tuple[BadLease, ...] = ()


@dataclass(frozen=True)
class Changes:
    """Puts and deletes seen by the watch, up to ``revision``."""

    puts: tuple[Lease, ...] = ()
    deletes: tuple[SubnetId, ...] = ()  # idents (``Lease.ident``) of the deleted keys
    revision: int = 0
    bad: tuple[BadLease, ...] = ()
    # the key (``Lease.key``) of each of ``deletes``, in the same order, when the store knows it: a
    # deleted key that does not hold its subnet (``leasecheck.screen_held``) removes nobody; after
    # them, the deleted keys that name no subnet at all (bad keys going away: flannel_bad_leases)
    deleted_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class WatchLost:
    """The watch ended (compaction, cancel); the watcher re-lists."""

    reason: str


StoreEvent = Snapshot | Changes | WatchLost


@dataclass(frozen=True)
class PeerDelta:
    """What one event changed in the table, for the log: leases added, removed, changed."""

    added: tuple[Lease, ...] = ()
    removed: tuple[Lease, ...] = ()
    changed: tuple[Lease, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass
class PeerTable:
    """Known leases by subnet (``Lease.ident``: an IPv6-only lease's IPv6 subnet; ours included).
    ``apply`` costs O(size of the event) for changes, O(N) for a snapshot, and says what changed
    for the data path: who is where. A renewal (a new lease id or revision) updates the entry but
    is no change.

    A DELETE takes effect ``grace`` seconds later (``expire``), not at once: a lease deleted by
    hand is put back by its owner within milliseconds (keeper.py), and removing its routes
    meanwhile only drops that host's packets. A put of the subnet within the grace cancels the
    removal (and changes the data path only if the lease says something else: another host took
    the subnet); a snapshot without the key removes it at once."""

    leases: dict[SubnetId, Lease] = field(default_factory=dict)
    revision: int = 0
    grace: float = 0.0
    departing: dict[SubnetId, float] = field(default_factory=dict)  # subnet (ident) -> when it goes
    by_ipv6: dict[ipaddress.IPv6Network, SubnetId] = field(default_factory=dict)  # IPv6 subnet -> ident

    def apply(self, event: Snapshot | Changes, now: float = 0.0) -> PeerDelta:
        self.revision = max(self.revision, event.revision)
        if isinstance(event, Snapshot):
            self.departing.clear()
            delta = self._replace(event)
            self.by_ipv6 = {le.ipv6_subnet: sn for sn, le in self.leases.items() if le.ipv6_subnet is not None}
            return delta
        added, removed, changed = [], [], []
        for subnet in event.deletes:
            if self.grace > 0:
                if subnet in self.leases:
                    self.departing.setdefault(subnet, now + self.grace)
                continue
            old = self.leases.pop(subnet, None)
            if old is not None:
                removed.append(old)
                self._unindex(old)
        for lease in event.puts:
            self.departing.pop(lease.ident, None)
            old = self.leases.get(lease.ident)
            self.leases[lease.ident] = lease
            if old is not None:
                self._unindex(old)
            if lease.ipv6_subnet is not None:
                self.by_ipv6[lease.ipv6_subnet] = lease.ident
            if old is None:
                added.append(lease)
            elif _identity(old) != _identity(lease):
                changed.append(lease)
        return PeerDelta(tuple(added), tuple(removed), tuple(changed))

    def next_expiry(self) -> float | None:
        """When the first deleted lease goes (the clock of ``apply``'s ``now``), or None."""
        return min(self.departing.values(), default=None)

    def expire(self, now: float) -> PeerDelta:
        """Remove the deleted leases whose grace is over and that were not put back."""
        gone = [sn for sn, at in self.departing.items() if at <= now]
        removed = []
        for subnet in gone:
            del self.departing[subnet]
            old = self.leases.pop(subnet, None)
            if old is not None:
                removed.append(old)
                self._unindex(old)
        return PeerDelta(removed=tuple(removed))

    def _unindex(self, lease: Lease) -> None:
        if lease.ipv6_subnet is not None and self.by_ipv6.get(lease.ipv6_subnet) == lease.ident:
            del self.by_ipv6[lease.ipv6_subnet]

    def _replace(self, event: Snapshot) -> PeerDelta:
        fresh = {lease.ident: lease for lease in event.leases}
        # A key whose value went bad keeps its last good lease: garbage is not a delete.
        for bad in event.bad:
            if bad.subnet is not None and bad.subnet in self.leases and bad.subnet not in fresh:
                fresh[bad.subnet] = self.leases[bad.subnet]
        old, self.leases = self.leases, fresh
        return PeerDelta(tuple(le for sn, le in fresh.items() if sn not in old),
                         tuple(le for sn, le in old.items() if sn not in fresh),
                         tuple(le for sn, le in fresh.items() if sn in old and _identity(old[sn]) != _identity(le)))

    def peers(self, own: SubnetId | None) -> Mapping[SubnetId, Lease]:
        return {sn: lease for sn, lease in self.leases.items() if sn != own}


def _identity(lease: Lease) -> object:
    # What matters to the data path: who is where.
    return (lease.attrs, lease.ipv6_subnet)
