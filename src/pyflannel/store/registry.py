"""The store protocol the lease manager and the tools are written against."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Protocol

from ..core.events import Changes, Snapshot, WatchLost
from ..core.lease import Lease, LeaseAttrs


class Registry(Protocol):
    """Primitives over one network prefix. Every method raises ``StoreUnavailable`` when the
    store cannot be reached, never a client library's own exception."""

    prefix: str
    store_name: str  # for log lines: "etcd", "the Kubernetes API server"

    @property
    def config_key(self) -> str: ...

    async def get_config(self) -> bytes | None: ...

    async def put_config(self, data: bytes) -> None: ...

    async def list_leases(self) -> Snapshot: ...

    async def create_lease(
        self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int | None,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease | None:
        """Create-if-absent; ``ttl=None`` writes a reservation. None when the key exists."""
        ...

    async def update_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        """Re-put ``current`` with ``attrs`` if it is unchanged since it was read; None if not."""
        ...

    async def delete_lease(self, subnet: ipaddress.IPv4Network, mod_revision: int | None = None,
                           ipv6_subnet: ipaddress.IPv6Network | None = None) -> bool: ...

    async def watch_leases(self, start_revision: int) -> AsyncIterator[Changes | WatchLost]: ...

    async def close(self) -> None: ...
