"""Store news as tagged values, so an ambiguous event can never mean "delete every peer".

Flannel's watcher sends "either Events or a Snapshot" in one type and reads an empty result as an
empty snapshot (FLANNEL-COMPAT §11.6). Here a snapshot, a batch of changes, a bad key and a lost
watch are different types, and ``PeerTable`` applies them: only an explicit DELETE or a fresh
snapshot that lacks a key removes a peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .lease import Lease


@dataclass(frozen=True)
class BadLease:
    """A key under ``<prefix>/subnets/`` whose key or value cannot be decoded."""

    key: str
    reason: str
    subnet: ipaddress.IPv4Network | None = None  # known when only the value is bad


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
    deletes: tuple[ipaddress.IPv4Network, ...] = ()
    revision: int = 0
    bad: tuple[BadLease, ...] = ()


@dataclass(frozen=True)
class WatchLost:
    """The watch ended (compaction, cancel); the watcher re-lists."""

    reason: str


StoreEvent = Snapshot | Changes | WatchLost


@dataclass
class PeerTable:
    """Known leases by subnet; apply snapshots and changes; report whether anything changed."""

    leases: dict[ipaddress.IPv4Network, Lease] = field(default_factory=dict)
    revision: int = 0

    def apply(self, event: Snapshot | Changes) -> bool:
        before = dict(self.leases)
        if isinstance(event, Snapshot):
            fresh = {lease.subnet: lease for lease in event.leases}
            # A key whose value went bad keeps its last good lease: garbage is not a delete.
            for bad in event.bad:
                if bad.subnet is not None and bad.subnet in self.leases and bad.subnet not in fresh:
                    fresh[bad.subnet] = self.leases[bad.subnet]
            self.leases = fresh
        else:
            for subnet in event.deletes:
                self.leases.pop(subnet, None)
            for lease in event.puts:
                self.leases[lease.subnet] = lease
        self.revision = max(self.revision, event.revision)
        return _identity(before) != _identity(self.leases)

    def peers(self, own: ipaddress.IPv4Network | None) -> Mapping[ipaddress.IPv4Network, Lease]:
        return {sn: lease for sn, lease in self.leases.items() if sn != own}


def _identity(leases: Mapping[ipaddress.IPv4Network, Lease]) -> dict[ipaddress.IPv4Network, object]:
    # What matters to the data path: who is where. A renewal (new lease id) is no change.
    return {sn: (le.attrs, le.ipv6_subnet) for sn, le in leases.items()}
