"""flanneld's conductor: the one owner of lifecycle and tasks (docs/architecture.md).

config -> external interface and public IP -> backend.prepare -> lease -> converger.start (our
devices and routes) -> iptables -> tasks under one TaskGroup:

- subnet-file: writes subnet.env, then READY=1; while it cannot, retries, not ready, forwarding;

- watcher: etcd watch -> peer table -> ``converger.mark_dirty`` (never waits on the kernel);
- converger: plans once per batch and applies (``converger.py``);
- keeper: our own lease: renew, retake, lost (``keeper.py``);
- traffic-check: the iptables/nftables rules, every ``-iptables-resync`` seconds;
- store-probe: notices an etcd outage and a changed network config (``storeprobe.py``).

On SIGTERM (``lifecycle.py``): cancel, close the backend, exit 0 with the lease left in etcd, so a
restart reuses it. A task that dies unexpectedly is logged by name and ends the process with 1.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from . import kubemode, preflight
from .backend import Backend, get_backend
from .backend.udp_pump import available as pump_built
from .converger import Converger
from .core import kubenode
from .core.backoff import Backoff, LogOnce
from .core.config import NetworkConfig, parse_config
from .core.errors import ConfigError, LeaseLost, LocalConfigError, StoreUnavailable
from .core.events import Changes, PeerTable, Snapshot
from .core.lease import Lease, SubnetId
from .core.leasecheck import screen, screen_held
from .core.plan import public_of
from .core.subnetenv import SubnetEnv, render_subnet_env, subnet_env_for
from .core.trace import device
from .keeper import LeaseKeeper
from .kernel.host import KernelHost
from .kernel.iface import select_external_interface
from .observe import HttpServer, Stats, View
from .store.etcd import EtcdOptions, EtcdRegistry
from .store.etcd_v2 import only_in_v2, v2_config
from .store.kube import KubeOptions, KubeRegistry
from .store.kube_manager import KubeLeaseManager
from .store.manager import DEFAULT_TTL, LeaseManager, track_bad, watch_leases
from .storeprobe import StoreProbe
from .subnetfile import read_previous_subnet, try_write_subnet_file, unwritable_fix
from .systemd import sd_notify
from .trafficrules import TrafficRules

log = logging.getLogger("flanneld")

# a peer's deleted lease leaves the data path this much later, unless its owner puts it back first
# (keeper.py retakes it within milliseconds): a lease deleted by hand then costs no packet
LEASE_DELETE_GRACE_S = 2.0
SUBNET_FILE_RETRY_S = 5.0  # longest wait between two tries at an unwritable subnet.env
SUBNET_FILE_EXTEND_S = 30.0  # each try extends systemd's start timeout by this much


@dataclass(frozen=True)
class Options:
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    kube: KubeOptions | None = None  # -kube-subnet-mgr: Node objects instead of etcd (kubemode.py)
    ifaces: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str = ""
    public_ip: str = ""
    public_ipv6: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    renew_margin_min: int = 60
    lease_ttl_s: int = DEFAULT_TTL
    ip_masq: bool = False
    ip_masq_random_fully: bool = True
    forward_rules: bool = True
    iptables_resync_s: float = 5.0  # iptables/nftables check (-iptables-resync)
    kernel_check_s: float = 10.0  # full kernel read (Go's route check); deletions are caught by events at once
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    unsupported: tuple[str, ...] = ()  # warnings for accepted flags that do nothing yet, logged at start


class Conductor:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.registry: EtcdRegistry | KubeRegistry = KubeRegistry(opts.kube) if opts.kube else EtcdRegistry(opts.etcd)
        self.store_name = self.registry.store_name
        self.config: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.converger: Converger | None = None
        self.keeper: LeaseKeeper | None = None
        self.peers = PeerTable(grace=LEASE_DELETE_GRACE_S)
        self._expiry: asyncio.TimerHandle | None = None  # when the next deleted lease leaves the table
        self._bad_seen: set[str] = set()
        self._v6_seen: set[str] = set()
        self.stats = Stats()
        self.probe = StoreProbe(self.registry, self.stats)
        self.http: HttpServer | None = None
        self.rules = TrafficRules(ip_masq=opts.ip_masq, forward_rules=opts.forward_rules,
                                  random_fully=opts.ip_masq_random_fully, resync_s=opts.iptables_resync_s)

    @property
    def lease(self) -> Lease | None:
        return self.keeper.lease if self.keeper is not None else None

    def view(self) -> View:
        """What the metrics collector and the health endpoint read at scrape time."""
        def reconcile() -> object:
            return self.converger.stats if self.converger is not None else None

        return View(
            self.stats, lease=lambda: self.lease, backend=lambda: self.backend.name if self.backend else "",
            peers=lambda: self.converger.stats.peers if self.converger is not None else 0,
            datapath=lambda: self.backend.stats() if self.backend is not None else {},
            etcd_errors=lambda: self.registry.errors, bad_leases=lambda: len(self._bad_seen),
            reconcile=reconcile, masq_repairs=lambda: self.rules.repairs,
            programmed=self.programmed, known=self._known_peers, compiled_pump=pump_built,
            network=lambda: "" if self.config is None else str(self.config.network if self.config.enable_ipv4
                                                              else self.config.ipv6_network),
            wg_peers=lambda: self.backend.peer_stats() if self.backend is not None else [])

    def _known_peers(self) -> int:
        own = self.lease.ident if self.lease is not None else None
        return sum(1 for subnet in self.peers.leases if subnet != own)

    def programmed(self) -> dict[str, object]:
        """The peers as the data path has them now: for udp the pump's table itself."""
        conv = self.converger
        out: dict[str, object] = {"backend": self.backend.name if self.backend else "",
                                  "subnet": str(self.lease.ident) if self.lease else None}
        if conv is None:
            return out | {"peers": []}
        table = conv.pump_table()
        if table is not None:
            out["peers"] = [{"subnet": f"{ipaddress.IPv4Address(net)}/{plen}",
                             "public_ip": str(ipaddress.IPv4Address(ip)), "port": port}
                            for net, plen, ip, port in table.routes]
        else:
            out["peers"] = [{"subnet": str(sn), "public_ip": str(public_of(le))}
                            for sn, le in sorted(conv.programmed.items(), key=lambda kv: (kv[0].version, kv[0]))]
        return out

    async def start_http(self) -> None:
        if self.opts.healthz_port > 0:
            self.http = HttpServer(self.opts.healthz_ip, self.opts.healthz_port, self.view())
            try:
                await self.http.start()
            except OSError as err:
                raise LocalConfigError(f"cannot serve health on {self.opts.healthz_ip}:{self.opts.healthz_port}: "
                                       f"{err.strerror} (pick another --healthz-port)") from err

    async def wait_for_config(self) -> NetworkConfig:
        key = self.registry.config_key
        # log each kind of problem once, not once per retry; an outage is one problem however worded
        once = LogOnce(log, same=lambda m: m.split(":")[0] if m.startswith("cannot read the network config") else m)
        in_v2: bool | None = None  # the v2 store is asked once, the first time v3 has no config
        while True:
            try:
                data = await self.registry.get_config()
                if data is not None:
                    config = parse_config(data)
                    self.probe.config_seen = data
                    # an unknown Backend.Type or a bad Backend option is a config error too; what the
                    # backend ignores is said here, once (its constructor says nothing)
                    for warning in get_backend(config.backend_type).check_config(config):
                        log.warning(warning)
                    return config
                if in_v2 is None:
                    in_v2 = await v2_config(self.registry.options, key) is not None
                if in_v2:
                    msg = only_in_v2(key, self.registry.endpoints, self.registry.prefix) + "; retrying every second"
                else:
                    msg = (f"network config not found at {key} in etcd {self.registry.endpoints}: write it with "
                           f"`flannelctl -etcd-prefix={self.registry.prefix} config set FILE` or "
                           f"`etcdctl put {key} '{{\"Network\": \"10.0.0.0/16\"}}'` (etcd v3 API); retrying "
                           "every second")
            except StoreUnavailable as err:
                msg = f"cannot read the network config: {err}; retrying (check --etcd-endpoints)"
            except ConfigError as err:
                msg = f"invalid network config at {key}: {err}; fix it with `flannelctl config set`, retrying"
            once.error(msg)
            await asyncio.sleep(1.0)

    async def acquire(self, config: NetworkConfig, manager: LeaseManager | KubeLeaseManager) -> Lease:
        backoff, once = Backoff(0.2, 1.0), LogOnce(log)
        while True:
            try:
                got = await manager.acquire(config)
                sn6 = got.lease.ipv6_subnet  # named apart in dual stack; IPv6-only: it is the subnet
                log.info("lease acquired subnet=%s%s how=%s attempts=%d reservation=%s", got.lease.ident,
                         f" ipv6_subnet={sn6}" if sn6 not in (None, got.lease.ident) else "",
                         got.how, got.attempts, got.lease.is_reservation)
                return got.lease
            except StoreUnavailable as err:
                once.error("cannot acquire a lease, retrying: %s", err)
            await asyncio.sleep(backoff.next())

    async def run(self) -> None:
        opts = self.opts
        await self.start_http()
        if isinstance(self.registry, KubeRegistry):
            await self.registry.connect()
            self.config = config = await kubemode.read_config(self.registry)
            self.registry.families = kubenode.Families(config.enable_ipv4, config.enable_ipv6)
        else:
            self.config = config = await self.wait_for_config()
        if config.enable_ipv4:
            log.info("network config network=%s subnet_len=%d backend=%s", config.network, config.subnet_len,
                     config.backend_type)
        else:
            log.info("network config IPv6-only ipv6_network=%s ipv6_subnet_len=%d backend=%s", config.ipv6_network,
                     config.ipv6_subnet_len, config.backend_type)
        self._warn_unsupported()
        if not config.enable_ipv4:
            self._check_ipv6_only(config)
        ext = await asyncio.to_thread(
            select_external_interface, list(opts.ifaces), list(opts.iface_regex), opts.iface_can_reach, opts.public_ip,
            opts.public_ipv6, config.enable_ipv6, config.enable_ipv4,
        )
        log.info("using interface name=%s addr=%s public_ip=%s mtu=%d%s", ext.name, ext.iface_addr if config.enable_ipv4
                 else "-", ext.ext_addr if config.enable_ipv4 else "-", ext.mtu,
                 f" addr_v6={ext.iface_v6_addr} public_ipv6={ext.ext_v6_addr}" if config.enable_ipv6 else "")
        self.backend = backend = get_backend(config.backend_type)(ext, config)
        self.converger = converger = Converger(backend, full_check_s=opts.kernel_check_s)
        if isinstance(self.registry, KubeRegistry):
            backend.stored_mac, backend.stored_mac6 = await kubemode.stored_macs(self.registry)
        attrs = await backend.prepare(KernelHost(converger.reconciler))
        prev = read_previous_subnet(opts.subnet_file, config.subnet_len)
        manager: LeaseManager | KubeLeaseManager
        if isinstance(self.registry, KubeRegistry):
            manager = KubeLeaseManager(self.registry, attrs)
        else:
            # an IPv6-only network's subnet.env has no FLANNEL_SUBNET: that is no problem there
            problem = prev.problem if config.enable_ipv4 or prev.ipv6_subnet is None else ""
            manager = LeaseManager(self.registry, attrs, ttl=opts.lease_ttl_s, previous_subnet=prev.subnet,
                                   previous_problem=problem and f"subnet.env {opts.subnet_file} names no "
                                                                f"usable subnet: {problem}",
                                   previous_ipv6_subnet=prev.ipv6_subnet)
        lease = await self.acquire(config, manager)
        self.keeper = LeaseKeeper(lease, manager, self.registry, opts.renew_margin_min * 60)
        await converger.start(lease, await backend.start(lease))
        await self.rules.setup(config, lease, prev)
        v4 = config.enable_ipv4
        env = subnet_env_for(config.network if v4 else None, lease.subnet if v4 else None, backend.mtu(),
                             opts.ip_masq, config.ipv6_network if config.enable_ipv6 else None, lease.ipv6_subnet)
        # Everything built so far (modules, clients, the backend) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it again and again.
        gc.freeze()
        async with asyncio.TaskGroup() as tg:
            # first, so that its first write is not queued behind the others' start-up
            tg.create_task(self._guard("subnet-file", self.publish_subnet_file(env, prev.subnet)))
            tg.create_task(self._guard("watcher", self.watch_loop()))
            tg.create_task(self._guard("converger", converger.run()))
            tg.create_task(self._guard("keeper", self.keeper.run()))
            tg.create_task(self._guard("traffic-check", self.rules.run()))
            tg.create_task(self._guard("store-probe", self.probe.run(config)))
            if config.enable_ipv4:  # its checks and probes are IPv4's
                tg.create_task(preflight.run(config, device(config), lease.subnet, lambda: self.peers.leases))
            if isinstance(manager, KubeLeaseManager) and opts.kube is not None and opts.kube.set_network_unavailable:
                tg.create_task(self._guard("node-condition", manager.complete()))

    async def publish_subnet_file(self, env: SubnetEnv, prev_subnet: ipaddress.IPv4Network | None) -> None:
        """Write subnet.env, then report ready (READY=1). While it cannot be written (read-only, full,
        a directory in its place...) the data path forwards all the same: not ready with the cause
        (/readyz, flannel_ready 0, systemd's STATUS=), one error naming the fix, a retry at most
        every SUBNET_FILE_RETRY_S. READY=1 waits for the file, since docker's options come from it;
        EXTEND_TIMEOUT_USEC keeps systemd's start timeout from killing a forwarding flanneld."""
        path, text = self.opts.subnet_file, render_subnet_env(env)
        backoff, once = Backoff(0.5, SUBNET_FILE_RETRY_S), LogOnce(log)
        while (err := await asyncio.to_thread(try_write_subnet_file, path, text)) is not None:
            cause = f"cannot write {path}: {err.strerror or err}"
            once.error("%s; %s. The network keeps forwarding; flanneld reports not ready and retries at most %gs apart",
                       cause, unwritable_fix(path, err), SUBNET_FILE_RETRY_S)
            self.stats.not_ready = cause
            sd_notify(f"STATUS=not ready: {cause} (forwarding continues)\n"
                      f"EXTEND_TIMEOUT_USEC={int(SUBNET_FILE_EXTEND_S * 1e6)}")
            await asyncio.sleep(backoff.next())
        recovered = once.ok("%s can be written again", path)
        self.stats.not_ready = ""
        self.stats.subnet_file_written = True
        lease = self.lease
        log.info("flannel is ready: wrote %s subnet=%s mtu=%d", path, env.subnet or env.ipv6_subnet, env.mtu)
        if prev_subnet is not None and lease is not None and prev_subnet != lease.subnet:
            log.error("SUBNET CHANGED from %s to %s: restart docker (or the container runtime) so that its "
                      "bridge moves to the new subnet", prev_subnet, lease.subnet)
        # as Go flannel: READY=1 alone; after a failure, also a STATUS= replacing the one with the cause
        sd_notify("READY=1" + (f"\nSTATUS=ready: subnet {env.subnet or env.ipv6_subnet}" if recovered else ""))

    def _check_ipv6_only(self, config: NetworkConfig) -> None:
        """An IPv6-only network (EnableIPv4 false) runs on vxlan, host-gw and wireguard, in etcd or kube mode."""
        if not getattr(get_backend(config.backend_type), "ipv6_only", False):
            raise LocalConfigError(f"the {config.backend_type} backend cannot run an IPv6-only network (EnableIPv4 "
                                   f"false, IPv6Network {config.ipv6_network}): use the vxlan, host-gw or wireguard "
                                   "backend, or set EnableIPv4 true with a Network for a dual-stack network")

    def _warn_unsupported(self) -> None:
        """Accepted settings that do nothing yet say so, once, at start-up (a backend that carries no
        IPv6 says so in its ``check_config``)."""
        for warning in self.opts.unsupported:
            log.warning("%s", warning)

    async def _guard(self, name: str, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as err:
            log.exception("task %s died: %s", name, err)
            raise

    async def watch_loop(self) -> None:
        """etcd -> the peer table -> mark the converger dirty. Per event O(size of the event); the
        converger plans once for everything that arrived while it was busy."""
        assert self.converger is not None and self.keeper is not None and self.config is not None
        first, own, config = True, self.keeper.subnet, self.config
        async for raw in watch_leases(self.registry):
            # a misshapen lease is a bad key: warned about, never programmed
            warnings: list[str] = []
            ev = screen(raw, config, self.registry.subnets_prefix, warnings,
                        any_len=isinstance(self.registry, KubeRegistry))
            # a second key for a subnet another key holds is a bad key too (and its delete no delete)
            ev = screen_held(ev, self.peers, self.registry.subnets_prefix, prefer=self.keeper.lease.key)
            for warning in warnings:
                if warning not in self._v6_seen:  # once per key and cause
                    self._v6_seen.add(warning)
                    log.warning("%s", warning)
            if isinstance(ev, Snapshot):
                self.stats.watch_relists += 0 if first else 1
            track_bad(ev, self._bad_seen, self.registry.subnets_prefix,
                      raw.deleted_keys if isinstance(raw, Changes) else ())
            self.keeper.observe(ev)
            delta = self.peers.apply(ev, time.monotonic())
            self._schedule_expiry()
            log.debug("store %s at revision %d: %d added, %d removed, %d changed, %d bad; %d leases known",
                      type(ev).__name__.lower(), ev.revision, len(delta.added), len(delta.removed),
                      len(delta.changed), len(ev.bad), len(self.peers.leases))
            for le in delta.added:
                if le.ident != own:
                    log.info("peer added subnet=%s public_ip=%s", le.ident, public_of(le))
            self._log_removed(delta.removed, own)
            if delta or first:
                self.converger.mark_dirty(self.peers.leases)
            first = False

    def _log_removed(self, removed: tuple[Lease, ...], own: SubnetId) -> None:
        for le in removed:
            if le.ident != own:
                log.info("peer removed subnet=%s public_ip=%s", le.ident, public_of(le))

    def _schedule_expiry(self) -> None:
        """A timer for the first deleted lease still in its grace (PeerTable.expire), if any."""
        at = self.peers.next_expiry()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if at is not None:
            self._expiry = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        delta = self.peers.expire(time.monotonic())
        if self.keeper is not None and self.converger is not None and delta:
            self._log_removed(delta.removed, self.keeper.subnet)
            self.converger.mark_dirty(self.peers.leases)
        self._schedule_expiry()

    async def close(self) -> None:
        if self.converger is not None:
            await self.converger.close()
        if self.backend is not None:
            await self.backend.close()
        if self.http is not None:
            await self.http.close()
        await self.registry.close()
