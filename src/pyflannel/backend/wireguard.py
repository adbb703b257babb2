"""The wireguard backend (docs/compatibility.md#wireguard): an encrypted overlay, as Go flannel's.

Device ``flannel-wg`` (the kernel's WireGuard when it has it, else Debian's wireguard-go), MTU =
underlay MTU - 80, carrying ``<our subnet's network address>/32`` and a route for the network.
Our lease: ``{"PublicIP":…,"PublicIPv6":null,"BackendType":"wireguard","BackendData":
{"PublicKey":"<base64>","Port":51820}}``. One peer per lease: its public key, endpoint
``PublicIP:Port`` (Port 0: our own port, as Go), allowed IPs = its subnet.

Two plans per run: the device's peer set (``WgPlan``, applied by ``wg`` first) and the kernel
state (``DesiredState``: link up and MTU, address, the network route).

IPv6: on a dual-stack network the IPv6 half rides ``flannel-wg-v6`` (Mode ``separate``, Go's
default) or ``flannel-wg`` (the other Modes), with ``BackendV6Data``; on an IPv6-only network
(EnableIPv4 false) only the device carrying IPv6 is made (``flannel-wg-v6`` on ``ListenPortV6``
in Mode ``separate``), the lease says ``"PublicIP":"0.0.0.0"`` with ``BackendV6Data`` alone, and
no IPv4 address, route or peer exists (wireguard_plan.py has the Modes).

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

from ..core.config import NetworkConfig
from ..core.desired import LinkSpec
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs
from ..core.plan import Plan, Selection, WgPlan
from . import HostOps, PeerTarget, Target
from . import wireguard_plan as wp
from .base import Net, PlanningBackend, check_keys
from .wireguard_plan import DEV, DEV6, OVERHEAD, WgDevice, parse_options, plan_peers

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KNOWN_KEYS = ("ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode")
__all__ = ["DEV", "DEV6", "WireguardBackend", "parse_options", "plan_peers"]


class WireguardBackend(PlanningBackend):
    name = "wireguard"
    lease_types = ("wireguard",)
    ipv6_only = True  # runs an IPv6-only network: the IPv6 device alone

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        self.opts = parse_options(config, ext.mtu)
        self.network6 = config.ipv6_network if config.enable_ipv6 and ext.ext_v6_addr is not None else None
        self.devs: tuple[WgDevice, ...] = wp.devices(self.opts, config.enable_ipv4, self.network6 is not None)
        self.key_file = os.environ.get("WIREGUARD_KEY_FILE") or DEFAULT_KEY_FILE
        self.public_key = ""
        self.kinds: dict[str, str] = {}  # device -> link kind: "wireguard" (kernel) or "tun" (wireguard-go)
        self._host: HostOps | None = None
        self._targets: dict[str, PeerTarget] = {}

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        parse_options(config, 1500)
        return check_keys(config, KNOWN_KEYS, "wireguard")

    def lease_attrs(self) -> LeaseAttrs:
        """As Go's newSubnetAttrs: BackendData with IPv4, BackendV6Data with IPv6, each naming the port
        of the device that carries that family; IPv6-only leases say PublicIP 0.0.0.0."""
        v6 = self.network6 is not None
        public = self.ext.ext_addr if self.network is not None else ipaddress.IPv4Address(0)
        return LeaseAttrs(public, self.ext.ext_v6_addr if v6 else None, "wireguard",
                          wp.backend_data(self.devs, self.public_key, False),
                          wp.backend_data(self.devs, self.public_key, True) if v6 else None)

    def mtu(self) -> int:
        return self.opts.mtu - OVERHEAD

    def links(self) -> tuple[LinkSpec, ...]:
        return tuple(LinkSpec(d.name, self.kinds.get(d.name, ""), self.mtu()) for d in self.devs)

    def peer_problem(self, lease: Lease) -> str | None:
        if self.network is None:  # IPv6-only: the IPv6 half is all a peer has
            if lease.ipv6_subnet is None or lease.attrs.public_ipv6 is None:
                return "it has no IPv6 subnet or PublicIPv6 (this network is IPv6-only)"
            return wp.v6_problem(lease)
        if wp.peer_key(lease) is None:
            return f"its BackendData has no valid PublicKey: {lease.attrs.backend_data!r}"
        if wp.peer_port(lease, self.opts.listen_port) is None:
            return f"its BackendData has no valid Port: {lease.attrs.backend_data!r}"
        return None

    def select(self, peers: Mapping[Net, Lease]) -> Selection:
        """As every backend's, plus a note for each dual-stack peer whose IPv6 half we cannot
        program (its IPv4 half is)."""
        sel = super().select(peers)
        if self.network6 is None or self.network is None:
            return sel
        notes = tuple((le, f"{why}; using only its IPv4 part") for le in sel.peers.values()
                      if (why := wp.v6_problem(le)) is not None)
        return Selection(sel.peers, sel.skipped, notes) if notes else sel

    async def prepare(self, host: HostOps) -> LeaseAttrs:
        """The key (reused, or made once) and the devices, before the lease: the public key goes
        into the lease. A device left by our previous run is kept with its peers."""
        for dev in self.devs:
            host.claim_device(dev.name, f"network {self.network or self.network6}",
                              "one host runs one wireguard network")
        self.public_key = await asyncio.to_thread(host.wg_key, self.key_file)
        for dev in self.devs:
            self.kinds[dev.name] = await asyncio.to_thread(host.wg_device, dev.name, self.mtu())
        self._host = host
        return self.lease_attrs()

    async def start(self, own: Lease) -> dict[str, Target]:
        assert self._host is not None
        for dev in self.devs:
            families = "+".join(f for f, on in (("IPv4", dev.v4), ("IPv6", dev.v6)) if on)
            log.info("wireguard backend ready dev=%s (%s) mode=%s carries %s mtu=%d listen=%d public key %s",
                     dev.name, "kernel" if self.kinds[dev.name] == "wireguard" else "wireguard-go", self.opts.mode,
                     families, self.mtu(), dev.port, self.public_key)
            self._targets[dev.target] = self._host.wg_target(dev.name, self.public_key)
        return dict(self._targets)

    def plan(self, own: Lease, peers: Mapping[Net, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        """One ``WgPlan`` per device (its peer set), then the kernel state of them all."""
        own4, own6 = self.ext.ext_addr, self.ext.ext_v6_addr
        wgs = tuple(WgPlan(d.name, self.key_file, d.port, plan_peers(self.opts, d, peers or {}, own4, own6),
                           self.opts.psk, prune=peers is not None, mtu=self.mtu(), target=d.target)
                    for d in self.devs)
        return (*wgs, wp.plan_kernel(self.network, self.network6, own, self.devs, self.links()))

    def peer_stats(self) -> list[dict[str, object]]:
        """Each peer of each device, as the targets last read them (metrics)."""
        return [p for t in self._targets.values() for p in t.peer_stats()]
