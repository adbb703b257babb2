"""What the backends share: Backend option parsing with Go-like checks, and ``PlanningBackend``,
the common shape of a backend that plans kernel state (udp, vxlan, host-gw)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from ..core.config import NetworkConfig
from ..core.errors import ConfigError
from ..core.gojson import Fields
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs, SubnetId
from ..core.plan import Plan, Selection, Verdicts, select_peers
from . import HostOps, Target

Net = SubnetId  # a lease's ident (core/lease.py)


def check_keys(config: NetworkConfig, known: Iterable[str], backend: str) -> list[str]:
    """Warnings naming Backend keys this backend does not know (Go ignores them silently)."""
    fields = Fields((*known, "Type"))
    return [f"{backend} backend: ignoring unknown key {k!r} in Backend (known: {', '.join(sorted(known))})"
            for k in config.backend if fields.match(k) is None]


def ipv4_only(config: NetworkConfig, backend: str, why: str = "") -> list[str]:
    """The start-up warning of a backend that carries IPv4 only, when EnableIPv6 is set."""
    if not config.enable_ipv6:
        return []
    return [f"{backend} backend carries IPv4 only{why}: the IPv6 network {config.ipv6_network} is leased (the "
            "subnet key and subnet.env name an IPv6 subnet) but gets no IPv6 routes; use vxlan or host-gw for IPv6"]


def int_option(config: NetworkConfig, name: str, default: int, lo: int, hi: int, backend: str) -> int:
    value = config.backend_option(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{backend} backend: {name} must be an integer {lo}..{hi}, got {value!r}")
    return value


def bool_option(config: NetworkConfig, name: str, backend: str) -> bool:
    value = config.backend_option(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{backend} backend: {name} must be true or false, got {value!r}")
    return value


class PlanningBackend:
    """A backend that plans kernel state from leases. Subclasses set ``name``, ``lease_types``,
    ``lease_attrs``/``mtu`` and ``plan``; ``peer_problem`` rejects a peer whose data is unusable."""

    name = ""
    lease_types: tuple[str, ...] = ()  # BackendType values of peers we can reach
    stored_mac = ""  # kube mode: the VTEP MAC our node's annotation names (a restart keeps it)
    stored_mac6 = ""  # kube mode: the same for IPv6 (backend-v6-data)
    needs_onlink = False
    ipv6_only = False  # runs an IPv6-only network (EnableIPv4 false): vxlan, host-gw and wireguard

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        self.ext = ext
        self.config = config
        # None on an IPv6-only network (EnableIPv4 false), whatever "Network" says
        self.network: ipaddress.IPv4Network | None = config.network if config.enable_ipv4 else None
        self._verdicts: Verdicts = {}

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        return []

    def peer_problem(self, lease: Lease) -> str | None:
        """Why a peer of our type cannot be programmed (bad BackendData), or None."""
        return None

    def select(self, peers: Mapping[Net, Lease]) -> Selection:
        return select_peers(peers, self.network, self.lease_types, self.peer_problem, self.name, self._verdicts)

    async def prepare(self, host: HostOps) -> LeaseAttrs:
        return self.lease_attrs()

    def lease_attrs(self) -> LeaseAttrs:
        raise NotImplementedError

    def mtu(self) -> int:
        raise NotImplementedError

    async def start(self, own: Lease) -> dict[str, Target]:
        return {}

    def plan(self, own: Lease, peers: Mapping[Net, Lease] | None, facts: HostFacts) -> tuple[Plan, ...]:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {}

    def peer_stats(self) -> list[dict[str, object]]:
        return []

    async def close(self) -> None:
        """vxlan and host-gw leave their kernel state in place: restarts lose no packet."""
