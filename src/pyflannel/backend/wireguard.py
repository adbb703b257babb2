"""The wireguard backend (docs/compatibility.md#wireguard): an encrypted overlay, as Go flannel's.

Device ``flannel-wg`` (the kernel's WireGuard when it has it, else Debian's wireguard-go), MTU =
underlay MTU - 80, carrying ``<our subnet's network address>/32`` and a route for the network.
Our lease: ``{"PublicIP":…,"PublicIPv6":null,"BackendType":"wireguard","BackendData":
{"PublicKey":"<base64>","Port":51820}}``. One peer per lease: its public key, endpoint
``PublicIP:Port`` (Port 0: our own port, as Go), allowed IPs = its subnet.

Two plans per run: the device's peer set (``WgPlan``, applied by ``wg`` first) and the kernel
state (``DesiredState``: link up and MTU, address, the network route).

Better than Go: the device, its key and its peers outlive a flanneld restart (Go deletes the
device on exit), so a restart loses no packet; a stale peer is removed by its lease's public key,
never by endpoint, so several hosts behind one NAT address work.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, LinkSpec, Route
from ..core.errors import ConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs
from ..core.plan import Plan, WgPeer, WgPlan
from ..core.wgconf import valid_key
from . import HostOps, PeerTarget, Target
from .base import PlanningBackend, check_keys, int_option, ipv4_only

log = logging.getLogger(__name__)

OVERHEAD = 80
DEV = "flannel-wg"
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KNOWN_KEYS = ("ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode")
MODES = ("separate", "auto", "ipv4", "ipv6")


@dataclass(frozen=True)
class WgOptions:
    listen_port: int = 51820
    listen_port_v6: int = 51821
    mtu: int = 1500  # the underlay MTU; the device gets mtu - 80
    psk: str = ""
    keepalive: int = 0  # seconds
    mode: str = "separate"


def parse_options(config: NetworkConfig, ext_mtu: int) -> WgOptions:
    psk = config.backend_option("PSK", "")
    if psk != "" and not valid_key(psk):
        raise ConfigError("wireguard backend: PSK must be a WireGuard key (32 bytes, base64, as `wg genpsk` "
                          "prints); leave it out for none")
    mode = config.backend_option("Mode", "separate")
    if mode not in MODES:
        raise ConfigError(f"wireguard backend: no valid Mode configured: {mode!r} (one of {', '.join(MODES)})")
    if mode == "ipv6":
        raise ConfigError('wireguard backend: Mode "ipv6" needs IPv6, which pyflannel does not run; use "separate"')
    return WgOptions(
        listen_port=int_option(config, "ListenPort", 51820, 1, 65535, "wireguard"),
        listen_port_v6=int_option(config, "ListenPortV6", 51821, 1, 65535, "wireguard"),
        mtu=int_option(config, "MTU", ext_mtu, 68 + OVERHEAD, 65535, "wireguard"),
        psk=psk,
        keepalive=int_option(config, "PersistentKeepaliveInterval", 0, 0, 65535, "wireguard"),
        mode=mode,
    )


def peer_key(lease: Lease) -> str | None:
    data = lease.attrs.backend_data
    key = data.get("PublicKey") if isinstance(data, dict) else None
    return key if valid_key(key) else None


def peer_port(lease: Lease, own_port: int) -> int | None:
    """The peer's port from its lease; 0 or absent means ours (older flannel), as Go."""
    data = lease.attrs.backend_data
    port = data.get("Port", 0) if isinstance(data, dict) else 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    return port or own_port


def plan_peers(opts: WgOptions, peers: Mapping[ipaddress.IPv4Network, Lease]) -> tuple[WgPeer, ...]:
    """Pure: one WireGuard peer per (selected) lease."""
    out = []
    for sn, lease in peers.items():
        key, port = peer_key(lease), peer_port(lease, opts.listen_port)
        if key is None or port is None:
            continue
        out.append(WgPeer(key, f"{lease.attrs.public_ip}:{port}", (str(sn),), opts.keepalive))
    return tuple(sorted(out))


def plan_kernel(network: ipaddress.IPv4Network, own: Lease, link: LinkSpec) -> DesiredState:
    addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
    return DesiredState(network, links=(link,), addresses=(Address(link.name, addr, network),),
                        routes=frozenset({Route(network, link.name)}))


class WireguardBackend(PlanningBackend):
    name = "wireguard"
    lease_types = ("wireguard",)

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        for warning in check_keys(config, KNOWN_KEYS, "wireguard"):
            log.warning(warning)
        self.opts = parse_options(config, ext.mtu)
        self.key_file = os.environ.get("WIREGUARD_KEY_FILE") or DEFAULT_KEY_FILE
        self.public_key = ""
        self.kind = ""  # the device's link kind: "wireguard" (kernel) or "tun" (wireguard-go)
        self._host: HostOps | None = None
        self._target: PeerTarget | None = None

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        parse_options(config, 1500)
        return check_keys(config, KNOWN_KEYS, "wireguard") + ipv4_only(config, "wireguard", " in this pyflannel")

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, None, "wireguard",
                          {"PublicKey": self.public_key, "Port": self.opts.listen_port})

    def mtu(self) -> int:
        return self.opts.mtu - OVERHEAD

    def link_spec(self) -> LinkSpec:
        return LinkSpec(DEV, self.kind, self.mtu())

    def peer_problem(self, lease: Lease) -> str | None:
        if peer_key(lease) is None:
            return f"its BackendData has no valid PublicKey: {lease.attrs.backend_data!r}"
        if peer_port(lease, self.opts.listen_port) is None:
            return f"its BackendData has no valid Port: {lease.attrs.backend_data!r}"
        return None

    async def prepare(self, host: HostOps) -> LeaseAttrs:
        """The key (reused, or made once) and the device, before the lease: its public key goes
        into the lease. A device left by our previous run is kept with its peers."""
        host.claim_device(DEV, f"network {self.network}", "one host runs one wireguard network")
        self.public_key = await asyncio.to_thread(host.wg_key, self.key_file)
        self.kind = await asyncio.to_thread(host.wg_device, DEV, self.mtu())
        self._host = host
        return self.lease_attrs()

    async def start(self, own: Lease) -> dict[str, Target]:
        assert self._host is not None
        log.info("wireguard backend ready dev=%s (%s) mtu=%d listen=%d public key %s", DEV,
                 "kernel" if self.kind == "wireguard" else "wireguard-go", self.mtu(), self.opts.listen_port,
                 self.public_key)
        self._target = self._host.wg_target(DEV, self.public_key)
        return {"wg": self._target}

    def plan(self, own: Lease, peers: Mapping[ipaddress.IPv4Network, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        wg = WgPlan(DEV, self.key_file, self.opts.listen_port, plan_peers(self.opts, peers or {}), self.opts.psk,
                    prune=peers is not None, mtu=self.mtu())
        return wg, plan_kernel(self.network, own, self.link_spec())

    def peer_stats(self) -> list[dict[str, object]]:
        """Each peer's handshake and bytes as the target last read them (metrics)."""
        return self._target.peer_stats() if self._target is not None else []
