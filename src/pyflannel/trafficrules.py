"""The daemon's iptables/nftables rules: one ``kernel.traffic.TrafficManager`` per family the
network runs, installed at start (recycling the rules of the previous network and subnet that
subnet.env names) and re-checked every ``-iptables-resync`` seconds, restored if someone flushed
them. ``daemon.Conductor`` owns one and runs ``run`` as its ``traffic-check`` task."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from .core.backoff import LogOnce
from .core.config import NetworkConfig
from .core.errors import KernelError, LocalConfigError
from .core.lease import Lease
from .core.subnetenv import PreviousRun
from .kernel.traffic import TrafficManager

log = logging.getLogger("flanneld")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrafficRules:
    def __init__(self, *, ip_masq: bool, forward_rules: bool, random_fully: bool, resync_s: float) -> None:
        self.ip_masq, self.forward_rules, self.random_fully = ip_masq, forward_rules, random_fully
        self.resync_s = resync_s
        self.managers: list[TrafficManager] = []  # IPv4's first when it runs, then IPv6's
        self._log = LogOnce(log)

    @property
    def repairs(self) -> int:
        return sum(m.repairs for m in self.managers)

    async def setup(self, config: NetworkConfig, lease: Lease, prev: PreviousRun) -> None:
        """Each family's rules, recycling those of the previous network and subnet subnet.env names
        (as Go's SetupAndEnsureMasqRules with prevNetwork/prevSubnet and prevIPv6Network/prevIPv6Subnet)."""
        try:
            if config.enable_ipv4:
                assert config.network is not None
                await self._add(4, config.enable_nftables, config.network, lease.subnet, prev.network, prev.subnet)
            if config.enable_ipv6 and config.ipv6_network is not None and lease.ipv6_subnet is not None:
                await self._add(6, config.enable_nftables, config.ipv6_network, lease.ipv6_subnet, prev.ipv6_network,
                                prev.ipv6_subnet)
        except KernelError as err:
            raise LocalConfigError(f"cannot install the iptables/nftables rules: {err}") from err
        for manager in self.managers:
            log.info("traffic rules: %s", manager.describe())

    async def _add(self, family: int, nftables: bool, network: Net, subnet: Net, prev_network: Net | None,
                   prev_subnet: Net | None) -> None:
        manager = TrafficManager(nftables=nftables, ip_masq=self.ip_masq, forward_rules=self.forward_rules,
                                 random_fully=self.random_fully, family=family)
        self.managers.append(manager)
        await asyncio.to_thread(manager.setup, network, subnet, prev_network, prev_subnet)

    async def run(self) -> None:
        """Re-check our rules every ``resync_s`` seconds; restore them if someone flushed them."""
        while True:
            await asyncio.sleep(self.resync_s)
            if not self.managers:
                continue
            try:
                for manager in self.managers:
                    if await asyncio.to_thread(manager.ensure):
                        log.warning("%s rules were changed by someone else: restored them",
                                    "IPv6 ip6tables/nftables" if manager.family == 6 else "iptables/nftables")
                self._log.ok("iptables/nftables rules can be checked again")
            except (KernelError, LocalConfigError) as err:
                self._log.error("cannot check the iptables/nftables rules, retrying: %s", err)
            except OSError as err:  # e.g. EMFILE: no descriptor left to run iptables with
                self._log.error("cannot check the iptables/nftables rules, retrying: cannot run %s: %s",
                                "nft" if self.managers[0].nftables else "iptables", err.strerror or err)


__all__ = ["TrafficRules"]
