"""Backends, registered by name as in flannel: udp, vxlan, host-gw (cloud routes next).

A backend turns (our lease, every peer's lease) into kernel state. The registry maps a config's
``Backend.Type`` to a constructor, imported only when chosen, so nothing runs at import time.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
from collections.abc import Mapping
from typing import Protocol

from ..core.config import NetworkConfig
from ..core.errors import ConfigError
from ..core.lease import Lease, LeaseAttrs
from ..kernel.iface import ExternalInterface

_CONSTRUCTORS: dict[str, str] = {
    "udp": "pyflannel.backend.udp:UdpBackend",
    "vxlan": "pyflannel.backend.vxlan:VxlanBackend",
    "host-gw": "pyflannel.backend.hostgw:HostGwBackend",
    "aws-vpc": "pyflannel.backend.awsvpc:AwsVpcBackend",
    "gce": "pyflannel.backend.gce:GceBackend",
}


class Backend(Protocol):
    name: str

    changed: asyncio.Event  # set when the kernel changed under us (a link event): reconcile now

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        """Raise ConfigError for a bad Backend object; return warnings (unknown keys)."""
        ...

    async def prepare(self) -> None:
        """Before the lease is acquired: what lease_attrs needs (vxlan: its device and MAC)."""
        ...

    def lease_attrs(self) -> LeaseAttrs:
        """What we publish in our lease (PublicIP, BackendType, BackendData)."""
        ...

    def mtu(self) -> int:
        """FLANNEL_MTU for subnet.env."""
        ...

    def accepts(self, lease: Lease) -> bool:
        """Whether a peer's lease is one this backend can reach."""
        ...

    async def setup(self, lease: Lease) -> None:
        """Create devices, addresses and routes for our lease; start any data path."""
        ...

    async def apply_peers(self, peers: Mapping[ipaddress.IPv4Network, Lease]) -> None:
        """Converge forwarding to exactly these peers (level-triggered, idempotent)."""
        ...

    async def resync(self) -> None:
        """Re-assert our kernel state (a route deleted by hand comes back)."""
        ...

    async def close(self) -> None: ...


class BackendCtor(Protocol):
    def __call__(self, ext: ExternalInterface, config: NetworkConfig) -> Backend: ...

    def check_config(self, config: NetworkConfig) -> list[str]: ...


def names() -> list[str]:
    return sorted(_CONSTRUCTORS)


def get_backend(backend_type: str) -> BackendCtor:
    """The constructor for a (lower-cased) backend type; ConfigError for an unknown one."""
    target = _CONSTRUCTORS.get(backend_type.lower())
    if target is None:
        raise ConfigError(
            f"unknown backend type: {backend_type!r} (supported: {', '.join(names())}); "
            'fix Backend.Type in the network config, e.g. "Backend": {"Type": "udp"}'
        )
    module, _, attr = target.partition(":")
    ctor: BackendCtor = getattr(importlib.import_module(module), attr)
    return ctor
