"""flanneld's conductor: the one owner of lifecycle and tasks (FLANNEL-COMPAT §0).

config -> external interface and public IP -> lease -> backend -> subnet.env -> READY=1 ->
{watcher, renewer, resyncer} under one TaskGroup -> on SIGTERM, cancel, close the backend and
exit 0 with the lease left in etcd, so a restart reuses it. A task that dies unexpectedly is
logged by name and ends the process with 1, for systemd to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass, field

from .backend import Backend, get_backend
from .core.config import NetworkConfig, parse_config
from .core.errors import AllocationError, ConfigError, LeaseLost, LocalConfigError, StoreUnavailable
from .core.events import Changes, PeerTable, Snapshot
from .core.lease import Lease
from .core.subnetenv import render_subnet_env, subnet_env_for
from .kernel.iface import select_external_interface
from .kernel.netlink import KernelError
from .kernel.traffic import TrafficManager
from .observe import HttpServer, Stats, View
from .store.etcd import EtcdOptions, EtcdRegistry
from .store.manager import DEFAULT_TTL, LeaseManager, log_bad, watch_leases
from .subnetfile import read_previous_subnet, write_subnet_file
from .systemd import sd_notify

log = logging.getLogger("flanneld")


@dataclass(frozen=True)
class Options:
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    ifaces: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str = ""
    public_ip: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    renew_margin_min: int = 60
    lease_ttl_s: int = DEFAULT_TTL
    ip_masq: bool = False
    ip_masq_random_fully: bool = True
    forward_rules: bool = True
    resync_s: float = 5.0  # iptables/nftables check (-iptables-resync)
    kernel_check_s: float = 10.0  # full kernel read (Go's route check); deletions are caught by events at once
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0


class Conductor:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.registry = EtcdRegistry(opts.etcd)
        self.config: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.manager: LeaseManager | None = None
        self.lease: Lease | None = None
        self.peers = PeerTable()
        self._bad_seen: set[str] = set()
        self.stats = Stats()
        self.http: HttpServer | None = None
        self.traffic: TrafficManager | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._retaking: asyncio.Task[None] | None = None
        self._traffic_error = ""

    def view(self) -> View:
        def datapath() -> dict[str, int]:
            fn = getattr(self.backend, "stats", None)
            return fn() if callable(fn) else {}

        def sync_stats() -> None:
            s, b = self.stats, self.backend
            s.etcd_errors = self.registry.errors
            s.bad_leases = len(self._bad_seen)
            for name in ("reconcile_runs", "reconcile_errors", "reconcile_changes", "reconcile_seconds"):
                setattr(s, name, getattr(b, name, 0))

        def peers() -> int:
            sync_stats()
            return len(getattr(self.backend, "peers", {}) or {})

        return View(self.stats, lambda: self.lease, lambda: self.backend.name if self.backend else "", peers,
                    datapath)

    async def start_http(self) -> None:
        if self.opts.healthz_port > 0:
            self.http = HttpServer(self.opts.healthz_ip, self.opts.healthz_port, self.view())
            try:
                await self.http.start()
            except OSError as err:
                raise LocalConfigError(f"cannot serve health on {self.opts.healthz_ip}:{self.opts.healthz_port}: "
                                       f"{err.strerror} (pick another --healthz-port)") from err

    async def wait_for_config(self) -> NetworkConfig:
        key, last = self.registry.config_key, ""  # log each kind of problem once, not once per retry
        while True:
            try:
                data = await self.registry.get_config()
                if data is not None:
                    config = parse_config(data)
                    # an unknown Backend.Type or a bad Backend option is a config error too
                    for warning in get_backend(config.backend_type).check_config(config):
                        log.warning(warning)
                    return config
                msg = (f"network config not found at {key} in etcd {self.registry.endpoints}: write it with "
                       f"`flannelctl -etcd-prefix={self.registry.prefix} config set FILE` or "
                       f"`etcdctl put {key} '{{\"Network\": \"10.0.0.0/16\"}}'` (etcd v3 API); retrying every second")
            except StoreUnavailable as err:
                msg = f"cannot read the network config: {err}; retrying (check --etcd-endpoints)"
                if last.startswith("cannot read the network config"):
                    msg = last  # the same outage, however the error is worded this time
            except ConfigError as err:
                msg = f"invalid network config at {key}: {err}; fix it with `flannelctl config set`, retrying"
            if msg != last:
                log.error(msg)
                last = msg
            await asyncio.sleep(1.0)

    async def acquire(self, config: NetworkConfig, manager: LeaseManager) -> Lease:
        delay, last = 0.2, ""
        while True:
            try:
                got = await manager.acquire(config)
                log.info("lease acquired subnet=%s how=%s attempts=%d reservation=%s", got.lease.subnet,
                         got.how, got.attempts, got.lease.is_reservation)
                return got.lease
            except StoreUnavailable as err:
                if str(err) != last:
                    log.error("cannot acquire a lease, retrying: %s", err)
                    last = str(err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def run(self) -> None:
        opts = self.opts
        await self.start_http()
        self.config = config = await self.wait_for_config()
        log.info("network config network=%s subnet_len=%d backend=%s", config.network, config.subnet_len,
                 config.backend_type)
        ext = await asyncio.to_thread(
            select_external_interface, list(opts.ifaces), list(opts.iface_regex), opts.iface_can_reach, opts.public_ip
        )
        log.info("using interface name=%s addr=%s public_ip=%s mtu=%d", ext.name, ext.iface_addr, ext.ext_addr,
                 ext.mtu)
        self.backend = backend = get_backend(config.backend_type)(ext, config)
        await backend.prepare()
        prev_subnet, prev_network = read_previous_subnet(opts.subnet_file)
        self.manager = LeaseManager(self.registry, backend.lease_attrs(), ttl=opts.lease_ttl_s,
                                    previous_subnet=prev_subnet)
        self.lease = await self.acquire(config, self.manager)
        await backend.setup(self.lease)
        assert config.network is not None
        self.traffic = TrafficManager(nftables=config.enable_nftables, ip_masq=opts.ip_masq,
                                      forward_rules=opts.forward_rules, random_fully=opts.ip_masq_random_fully)
        try:
            await asyncio.to_thread(self.traffic.setup, config.network, self.lease.subnet, prev_network, prev_subnet)
        except KernelError as err:
            raise LocalConfigError(f"cannot install the iptables/nftables rules: {err}") from err
        log.info("traffic rules: %s", self.traffic.describe())
        env = subnet_env_for(config.network, self.lease.subnet, backend.mtu(), opts.ip_masq)
        write_subnet_file(opts.subnet_file, render_subnet_env(env))
        self.stats.ready = True
        log.info("flannel is ready: wrote %s subnet=%s mtu=%d", opts.subnet_file, env.subnet, env.mtu)
        if prev_subnet is not None and prev_subnet != self.lease.subnet:
            log.error("SUBNET CHANGED from %s to %s: restart docker (or the container runtime) so that its "
                      "bridge moves to the new subnet", prev_subnet, self.lease.subnet)
        sd_notify("READY=1")
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._guard("watcher", self.watch_loop()))
            tg.create_task(self._guard("renewer", self.renew_loop()))
            tg.create_task(self._guard("resyncer", self.resync_loop()))
            tg.create_task(self._guard("traffic-check", self.traffic_loop()))
            tg.create_task(self._guard("store-probe", self.probe_loop()))

    async def _guard(self, name: str, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as err:
            log.exception("task %s died: %s", name, err)
            raise

    async def watch_loop(self) -> None:
        assert self.backend is not None
        first = True
        async for ev in watch_leases(self.registry):
            if isinstance(ev, Snapshot):
                self.stats.watch_relists += 0 if first else 1
                first = False
            log_bad(ev.bad, self._bad_seen)
            await self._check_own(ev)
            before = dict(self.peers.peers(self._own()))
            if self.peers.apply(ev):
                after = self.peers.peers(self._own())
                for sn in sorted(set(after) - set(before)):
                    self._bad_seen.discard(after[sn].key)
                    log.info("peer added subnet=%s public_ip=%s", sn, after[sn].attrs.public_ip)
                for sn in sorted(set(before) - set(after)):
                    log.info("peer removed subnet=%s public_ip=%s", sn, before[sn].attrs.public_ip)
                await self.backend.apply_peers(after)

    async def probe_loop(self, period: float = 1.0) -> None:
        """Notice an etcd outage (the watch reconnects silently): log it once, report not-ready,
        keep the kernel as it is; log once more when etcd answers again."""
        down_since: float | None = None
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.wait_for(self.registry.get_config(), 2 * period)
            except (StoreUnavailable, TimeoutError) as err:
                if down_since is None:
                    down_since = time.monotonic()
                    self.stats.store_ok = False
                    log.error("etcd is unreachable (%s): keeping every route and the lease as they are, "
                              "retrying every %gs", err or "no answer", period)
                continue
            if down_since is not None:
                log.info("etcd answers again after %.1fs; the lease watch resumes where it stopped",
                         time.monotonic() - down_since)
                down_since = None
                self.stats.store_ok = True

    def _own(self) -> ipaddress.IPv4Network | None:
        return self.lease.subnet if self.lease else None

    async def _check_own(self, ev: Snapshot | Changes) -> None:
        """Keep our own lease: follow our renewals, re-create it if somebody deleted it."""
        assert self.lease is not None and self.manager is not None
        own = self.lease.subnet
        puts = {le.subnet: le for le in ev.leases} if isinstance(ev, Snapshot) else {le.subnet: le for le in ev.puts}
        gone = own not in puts if isinstance(ev, Snapshot) else own in ev.deletes and own not in puts
        if own in puts:
            mine = puts[own]
            if mine.attrs.public_ip != self.lease.attrs.public_ip:
                raise LeaseLost(f"our subnet {own} now belongs to {mine.attrs.public_ip}: someone else took it; "
                                "exiting so that a restart leases a new subnet (then restart docker)")
            self.lease = Lease(own, self.lease.attrs, mine.ipv6_subnet, mine.lease_id, mine.mod_revision,
                               self.lease.expiration)
        elif gone and (self._retaking is None or self._retaking.done()):
            log.warning("our lease %s was deleted from etcd; taking it again", own)
            assert self._tg is not None
            self._retaking = self._tg.create_task(self._guard("retake", self._retake(own)))

    async def _retake(self, own: ipaddress.IPv4Network) -> None:
        """Re-create our deleted lease, riding out an unavailable etcd; LeaseLost if another host
        took the subnet meanwhile. Runs beside the watcher, so peers keep being followed."""
        assert self.manager is not None and self.lease is not None
        delay, logged = 0.2, False
        while True:
            try:
                new = await self.manager.recreate(own)
                if new is None:  # the key exists: our own earlier attempt, or another host
                    snap = await self.registry.list_leases()
                    new = next((le for le in snap.leases if le.subnet == own), None)
                    if new is None:
                        continue
                    if new.attrs.public_ip != self.lease.attrs.public_ip:
                        raise LeaseLost(f"our lease {own} was deleted and {new.attrs.public_ip} took the subnet; "
                                        "exiting so that a restart leases a new one (then restart docker)")
                self.lease = new
                log.info("lease %s taken again", own)
                return
            except StoreUnavailable as err:
                if not logged:
                    log.error("cannot re-create our lease %s yet, retrying: %s", own, err)
                    logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def renew_loop(self) -> None:
        assert self.manager is not None and self.lease is not None
        margin = self.opts.renew_margin_min * 60
        while True:
            lease = self.lease
            if lease.is_reservation or lease.expiration is None:
                await asyncio.sleep(3600)
                continue
            remaining = lease.expiration - time.time()
            await asyncio.sleep(max(remaining - margin, remaining / 2, 0.5))
            try:
                new = await self.manager.renew(self.lease)
            except StoreUnavailable as err:
                log.error("cannot renew lease %s, retrying in 10s: %s", lease.subnet, err)
                await asyncio.sleep(10)
                continue
            if new is None:  # changed under us: let the watcher's view settle, then try again
                await asyncio.sleep(1)
                continue
            self.lease = new
            log.info("lease renewed subnet=%s expires_in=%ds", new.subnet, int((new.expiration or 0) - time.time()))

    async def resync_loop(self) -> None:
        """A full kernel reconcile when a kernel event asks for one (the backend's monitor), and
        every ``kernel_check_s`` as the backstop."""
        assert self.backend is not None
        changed = self.backend.changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.opts.kernel_check_s)
            changed.clear()
            await self.backend.resync()

    async def traffic_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.resync_s)
            await self._ensure_traffic()

    async def _ensure_traffic(self) -> None:
        """Re-check our iptables/nftables rules; restore them if someone flushed them."""
        if self.traffic is None:
            return
        try:
            if await asyncio.to_thread(self.traffic.ensure):
                log.warning("iptables/nftables rules were changed by someone else: restored them")
            self._traffic_error = ""
        except (KernelError, LocalConfigError) as err:
            if str(err) != self._traffic_error:
                log.error("cannot check the iptables/nftables rules, retrying: %s", err)
                self._traffic_error = str(err)
        self.stats.masq_repairs = self.traffic.repairs

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()
        if self.http is not None:
            await self.http.close()
        await self.registry.close()


async def _main(opts: Options) -> int:
    conductor = Conductor(opts)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)  # a second signal kills us the default way
        task.cancel()

    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, on_signal, s)
    try:
        await conductor.run()
        return 0
    except asyncio.CancelledError:
        log.info("exiting cleanly; the lease stays in etcd for the next start")
        return 0
    except Exception as err:
        for e in _flatten(err):
            if isinstance(e, _EXPECTED):
                log.error("%s", e)
            else:
                log.error("flanneld failed: %s", e, exc_info=e)
        return 1
    finally:
        await conductor.close()


_EXPECTED = (LocalConfigError, ConfigError, AllocationError, LeaseLost)


def _flatten(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for sub in err.exceptions for leaf in _flatten(sub)]
    return [err]


def run(opts: Options) -> int:
    """The composition root: run flanneld until SIGTERM; the process exit code."""
    try:
        return asyncio.run(_main(opts))
    except KeyboardInterrupt:
        return 0
