"""Backends, registered by name as in flannel: udp, vxlan, host-gw, wireguard, aws-vpc, gce.

A backend only *plans*. The contract (``Backend``):

- ``check_config(config)``: raise ``ConfigError`` for a bad ``Backend`` object; return warnings;
- ``prepare(host)``: before the lease, create what must exist (vxlan: the device, whose MAC goes
  into the lease; udp: flannel0 and its socket; cloud: the instance metadata) through ``HostOps``,
  and return the lease attributes we publish (wireguard: the key and the device);
- ``start(own)``: once the lease is held, the targets besides the kernel that plans go to (the
  udp pump, the cloud route table);
- ``select(peers)`` and ``plan(own, peers, facts)``: pure; the peers it can program, and for them
  one plan per target (``core.plan``);
- ``close()``.

The daemon's converger (``pyflannel.converger``) is the only one that applies plans. The
registry maps ``Backend.Type`` to a constructor imported only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol

from ..core.config import NetworkConfig
from ..core.desired import LinkSpec
from ..core.errors import ConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs, SubnetId
from ..core.plan import Plan, Selection

_CONSTRUCTORS: dict[str, str] = {
    "udp": "pyflannel.backend.udp:UdpBackend",
    "vxlan": "pyflannel.backend.vxlan:VxlanBackend",
    "host-gw": "pyflannel.backend.hostgw:HostGwBackend",
    "aws-vpc": "pyflannel.backend.awsvpc:AwsVpcBackend",
    "gce": "pyflannel.backend.gce:GceBackend",
    "wireguard": "pyflannel.backend.wireguard:WireguardBackend",
}

Net = SubnetId  # a lease's ident (core/lease.py)


class HostOps(Protocol):
    """What a backend may ask of the host in ``prepare`` (the daemon passes ``kernel.host.KernelHost``)."""

    def claim_device(self, name: str, owner: str, fix: str) -> None: ...

    def existing_mac(self, spec: LinkSpec) -> str | None: ...

    def ensure_link(self, spec: LinkSpec) -> str: ...

    def set_sysctl(self, path: str, value: str) -> None: ...

    def open_tun(self, offload: bool) -> tuple[int, str, str | None]: ...

    def wg_key(self, path: str) -> str: ...

    def wg_device(self, name: str, mtu: int) -> str: ...

    def wg_target(self, name: str, public_key: str) -> PeerTarget: ...


class Target(Protocol):
    """Where the plans of one kind are applied; ``apply`` blocks (the converger runs it in a
    thread unless ``inline``) and returns how many entries it changed; a ``FlannelError`` is
    retried, ``LocalConfigError`` on the first run stops flanneld, anything else ends it."""

    inline: bool
    full_check_s: float | None  # the backstop timer of full runs (None: only on demand)

    def apply(self, plan: Plan, full: bool) -> int: ...


class PeerTarget(Target, Protocol):
    """A target that also knows each peer's tunnel state (wireguard's device)."""

    def peer_stats(self) -> list[dict[str, object]]: ...


class Backend(Protocol):
    name: str
    needs_onlink: bool  # plan needs HostFacts.onlink (vxlan DirectRouting)

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]: ...

    async def prepare(self, host: HostOps) -> LeaseAttrs: ...

    def mtu(self) -> int: ...

    async def start(self, own: Lease) -> dict[str, Target]: ...

    def select(self, peers: Mapping[Net, Lease]) -> Selection: ...

    def plan(self, own: Lease, peers: Mapping[Net, Lease] | None, facts: HostFacts) -> tuple[Plan, ...]:
        """``peers`` None: no lease snapshot has arrived yet (plan only what is ours)."""
        ...

    def stats(self) -> dict[str, int]:
        """Data-path counters for the metrics (the udp pump's), read at scrape time."""
        ...

    def peer_stats(self) -> list[dict[str, object]]:
        """Each peer's tunnel state for the metrics and the SIGUSR1 dump (wireguard: handshake and
        bytes, as its target last read them); [] for a backend without tunnels."""
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
