"""What every kernel-programming backend shares: peer filtering with one warning per peer,
config-key checks, and the level-triggered loop: peers in -> ``desired()`` -> reconciler.

A backend only says what it wants (``desired``); the reconciler makes it so. Nothing is
reconciled before the first lease snapshot has arrived, so a restarted flanneld never deletes
a route it simply has not heard about yet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable, Mapping

from ..core.config import NetworkConfig
from ..core.desired import DesiredState
from ..core.errors import ConfigError
from ..core.lease import Lease
from ..kernel.iface import ExternalInterface
from ..kernel.monitor import KernelMonitor
from ..kernel.netlink import KernelError
from ..kernel.reconciler import LinkState, Reconciler

log = logging.getLogger("pyflannel.backend")


def check_keys(config: NetworkConfig, known: Iterable[str], backend: str) -> list[str]:
    """Warnings naming Backend keys this backend does not know (Go ignores them silently)."""
    known_l = {k.lower() for k in known} | {"type"}
    return [f"{backend} backend: ignoring unknown key {k!r} in Backend (known: {', '.join(sorted(known))})"
            for k in config.backend if k.lower() not in known_l]


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


class KernelBackend:
    name = ""
    lease_types: tuple[str, ...] = ()  # BackendType values of peers we can reach

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        self.ext = ext
        self.config = config
        self.reconciler = Reconciler()
        self.lease: Lease | None = None
        self.peers: dict[ipaddress.IPv4Network, Lease] = {}
        self.synced = False
        self.changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._warned: set[tuple[ipaddress.IPv4Network, str]] = set()
        self._last_error = ""
        self.monitor: KernelMonitor | None = None
        self.reconcile_runs = 0
        self.reconcile_errors = 0
        self.reconcile_changes = 0
        self.reconcile_seconds = 0.0

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        """Raise ConfigError for a bad Backend object; return warnings. Overridden per backend."""
        return []

    def _warn_once(self, lease: Lease, why: str) -> None:
        if (lease.subnet, why) not in self._warned:
            self._warned.add((lease.subnet, why))
            log.warning("skipping peer %s (%s): %s", lease.subnet, lease.attrs.public_ip, why)

    def accepts(self, lease: Lease) -> bool:
        network = self.config.network
        if network is not None and not lease.subnet.subnet_of(network):
            self._warn_once(lease, f"its subnet is outside the network {network}")
            return False
        if lease.attrs.backend_type not in self.lease_types:
            self._warn_once(lease, f"its backend is {lease.attrs.backend_type or 'udp'!r}, this network runs "
                                   f"{self.name}")
            return False
        why = self.peer_problem(lease)
        if why:
            self._warn_once(lease, why)
            return False
        return True

    def peer_problem(self, lease: Lease) -> str | None:
        """Why a peer of our type cannot be programmed (bad BackendData), or None."""
        return None

    async def prepare(self) -> None:
        """Before the lease: whatever ``lease_attrs`` needs (vxlan: the device and its MAC)."""

    async def apply_peers(self, peers: Mapping[ipaddress.IPv4Network, Lease]) -> None:
        self.peers = {sn: le for sn, le in peers.items() if self.accepts(le)}
        self._warn_shared_public_ips()
        self.synced = True
        await self.reconcile(full=False)

    def _warn_shared_public_ips(self) -> None:
        """Two leases of one network claiming one PublicIP: one of them is stale or forged. Both
        stay programmed (neither can be proven wrong from here); say so once."""
        by_ip: dict[ipaddress.IPv4Address, list[ipaddress.IPv4Network]] = {}
        for sn, le in self.peers.items():
            by_ip.setdefault(le.attrs.public_ip, []).append(sn)
        if self.lease is not None:
            by_ip.setdefault(self.lease.attrs.public_ip, []).append(self.lease.subnet)
        for ip, subnets in by_ip.items():
            if len(subnets) > 1:
                key = (min(subnets), f"shared {ip} {sorted(subnets)}")
                if key not in self._warned:
                    self._warned.add(key)
                    names = ", ".join(map(str, sorted(subnets)))
                    log.warning("leases %s all claim public IP %s: one is stale or forged; check with "
                                "`flannelctl leases list` and revoke the wrong one", names, ip)

    async def resync(self) -> None:
        if self.synced:
            await self.reconcile()

    async def reconcile(self, full: bool = True) -> None:
        """One converge run: ``full`` reads the kernel (timer, link events), otherwise only the
        change since the last run is sent (lease events). A kernel error is logged (once per
        distinct message) and counted; the next lease event or timer tick tries again, and the
        data path keeps what it has."""
        apply = self.reconciler.apply if full else self.reconciler.apply_delta
        async with self._lock:
            start = time.monotonic()
            self.reconcile_runs += 1
            try:
                plan, links = await asyncio.to_thread(lambda: apply(self.desired()))
            except KernelError as err:
                self.reconcile_errors += 1
                if str(err) != self._last_error:
                    log.error("kernel reconcile failed, retrying on the next event or tick: %s", err)
                    self._last_error = str(err)
                return
            finally:
                self.reconcile_seconds += time.monotonic() - start
            if self._last_error:
                log.info("kernel reconcile works again")
                self._last_error = ""
            self.reconcile_changes += len(plan)
            self.after_reconcile(links)

    def desired(self) -> DesiredState:
        raise NotImplementedError

    def after_reconcile(self, links: list[LinkState]) -> None:
        for link in links:
            if link.recreated:
                log.warning("%s was missing or incompatible: recreated it with mac %s and all %d peers",
                            link.name, link.mac, len(self.peers))

    def kick(self, why: str = "", key: tuple[object, ...] = ()) -> None:
        """Thread-safe: ask for a full reconcile now (a kernel event: see ``start_monitor``),
        unless the event is the deletion of an entry we deleted ourselves."""
        expected = self.reconciler.expected_gone
        if key in expected:
            expected.discard(key)
            return
        loop = self._loop
        if loop is not None:
            if why:
                log.debug("kernel event: %s", why)
            loop.call_soon_threadsafe(self.changed.set)

    _loop: asyncio.AbstractEventLoop | None = None

    def start_monitor(self, links: tuple[str, ...], owned_devs: tuple[str, ...] = ()) -> None:
        """Reconcile in full as soon as someone else deletes one of our routes or entries, or
        changes a device in ``links`` (the periodic check stays as the backstop)."""
        self._loop = asyncio.get_running_loop()
        self.monitor = KernelMonitor(self.kick, links=links, network=self.config.network, owned_devs=owned_devs)
        self.monitor.start()

    async def close(self) -> None:
        """vxlan and host-gw leave their kernel state in place: zero-downtime restarts (§0)."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
