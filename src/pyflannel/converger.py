"""The one converger: the only code that applies what backends plan.

The watch loop only updates the peer table and calls ``mark_dirty`` (no await, no kernel work:
the store reader never waits on the kernel). The converger task wakes on dirty, on a kernel
monitor event (``kick``, thread-safe) or on a target's full-check timer; it then drains — every
lease event that arrived meanwhile is in the same run — selects the peers the backend can
program, gathers the host facts the backend asked for, plans once, and hands each plan to its
target:

- ``kernel``: the reconciler (``kernel.reconciler``): a lease event sends only the difference
  (a small one right on the event loop, anything else in a worker thread), a kernel event or the
  timer reads the kernel in full;
- ``pump``: the udp pump's table, swapped whole;
- ``cloud``: the cloud route table, over its API;
- ``wg`` (and ``wg-v6``): each WireGuard device's peers, through ``wg`` (``kernel.wireguard``):
  one target per device, so a device that fails is retried alone.

It owns the lock, the counters (read by the metrics collector), logging a failure once per
distinct message, and the retry backoff. Nothing is pruned before the first lease snapshot, so a
restarted flanneld never deletes a route it simply has not heard about yet.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .backend import Backend, Target
from .core.backoff import Backoff, LogOnce
from .core.desired import DesiredState
from .core.errors import FlannelError, KernelError, LocalConfigError, TransientError
from .core.host import HostFacts
from .core.lease import Lease, SubnetId
from .core.plan import Plan, PumpPlan, public_of, shared_public_ips, target_of
from .kernel.host import OnlinkCache
from .kernel.monitor import KernelMonitor
from .kernel.reconciler import Reconciler

log = logging.getLogger("pyflannel.converger")

Net = SubnetId  # a lease's ident (core/lease.py)


# upper bounds of the run-time histogram (flannel_reconcile_duration_seconds): a delta run takes
# about a millisecond, a full kernel read of a few hundred peers tens of ms, a cloud API call seconds
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ConvergeStats:
    """Plain counters, written by the converger task only, read by the metrics collector."""

    runs: int = 0
    full_runs: int = 0
    errors: int = 0
    changes: int = 0
    seconds: float = 0.0
    peers: int = 0  # peers programmed by the last successful run
    last_ok: float = 0.0  # time.time() of the last successful run
    per_target: dict[str, int] = field(default_factory=dict)  # changes per target
    errors_per_target: dict[str, int] = field(default_factory=dict)
    # finished runs by time taken: [i] counts runs of at most DURATION_BUCKETS[i] (and more than
    # the bound before); the last, runs longer than every bound
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        """One finished run that took ``seconds``."""
        self.seconds += seconds
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, runs that took at most that long), the last bound being +inf: the
        buckets of a Prometheus histogram."""
        out, total = [], 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


class KernelTarget:
    """The reconciler as a converger target."""

    inline = False

    def __init__(self, reconciler: Reconciler, full_check_s: float) -> None:
        self.reconciler = reconciler
        self.full_check_s = full_check_s
        self.prune = False  # before the first lease snapshot: add and fix, delete nothing
        self.peers = 0

    def apply(self, plan: Plan, full: bool) -> int:
        assert isinstance(plan, DesiredState)
        if full or not self.prune:
            changes, links = self.reconciler.apply(plan, prune=self.prune)
        else:
            changes, links = self.reconciler.apply_delta(plan)
        for link in links:
            if link.recreated and self.prune:
                log.warning("%s was missing or incompatible: recreated it with mac %s and all %d peers",
                            link.name, link.mac, self.peers)
        return len(changes)

    def apply_now(self, plan: Plan, full: bool) -> int | None:
        """A lease event's small delta, sent right here on the event loop (a few netlink messages
        of ~20 µs; no thread hop). None when the run needs more (a full run, a kernel read, a
        big delta, a refused message): the converger then runs ``apply`` in a worker thread."""
        if full or not self.prune:
            return None
        assert isinstance(plan, DesiredState)
        done = self.reconciler.apply_delta(plan, fallback=False)
        return None if done is None else len(done[0])


class Converger:
    def __init__(self, backend: Backend, *, full_check_s: float = 10.0,
                 reconciler: Reconciler | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.reconciler = reconciler if reconciler is not None else Reconciler()
        self.kernel = KernelTarget(self.reconciler, full_check_s)
        self.targets: dict[str, Target] = {}
        self.stats = ConvergeStats()
        self.own: Lease | None = None
        self.table: Mapping[Net, Lease] | None = None  # the peer table (ours included); None before a snapshot
        self.monitor: KernelMonitor | None = None
        self.onlink = OnlinkCache()
        self.clock = clock
        self._dirty = asyncio.Event()
        self._full: set[str] = set()  # targets that must run in full next time
        self._next_full: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._warned: set[tuple[Net, str]] = set()
        self._shared: dict[ipaddress.IPv4Address, frozenset[Net]] = {}
        self._log: dict[str, LogOnce] = {}  # per target
        self._backoff = Backoff(0.2, 10.0)
        self._retry_at: float | None = None
        self.programmed: Mapping[Net, Lease] = {}
        self.applied: dict[str, Plan] = {}  # the last plan each target took without an error

    # ---- inputs (called on the event loop, O(1)) -------------------------------------------------
    def mark_dirty(self, table: Mapping[Net, Lease] | None = None) -> None:
        """The peer table changed (the watcher); ``table`` is the live mapping, read at plan time."""
        if table is not None:
            self.table = table
        self._dirty.set()

    def kick(self, why: str = "", key: tuple[object, ...] = ()) -> None:
        """Thread-safe: someone else changed our kernel state: a full kernel run now, unless the
        event is the deletion of an entry the reconciler deleted itself."""
        expected = self.reconciler.expected_gone
        if key in expected:
            expected.discard(key)
            return
        loop = self._loop
        if loop is not None:
            if why:
                log.debug("kernel event: %s", why)
            loop.call_soon_threadsafe(self._kick_full)

    def _kick_full(self) -> None:
        self._full.add("kernel")
        self.onlink.forget()  # the underlay may have changed too
        self._dirty.set()

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self, own: Lease, targets: Mapping[str, Target]) -> None:
        """Our own part, before READY: devices, addresses and our routes, pruning nothing. An error
        stops flanneld here (the operator must act), except a transient one (a cloud API that is
        throttled or down), which is logged and retried by the run loop."""
        self._loop = asyncio.get_running_loop()
        self.own = own
        self.targets = {"kernel": self.kernel, **targets}
        for name in self.targets:  # every target's counters exist from the start, at zero
            self.stats.per_target.setdefault(name, 0)
            self.stats.errors_per_target.setdefault(name, 0)
        now = self.clock()
        for name, target in self.targets.items():
            if target.full_check_s is not None:
                self._next_full[name] = now + target.full_check_s
        plans = self.backend.plan(own, None, HostFacts())
        for plan in plans:
            name = target_of(plan)
            try:
                await self._apply(name, plan, full=True)
            except KernelError as err:
                raise LocalConfigError(f"cannot set up the {self.backend.name} backend's kernel state: {err}") from err
            except TransientError as err:
                self._failed(name, err)
                self._full.add(name)
                self._retry_at = self.clock() + self._backoff.next()
            if isinstance(plan, DesiredState):
                self._start_monitor(plan)

    def _start_monitor(self, plan: DesiredState) -> None:
        links = {spec.name for spec in plan.links} | {a.dev for a in plan.addresses} | set(plan.watch)
        self.monitor = KernelMonitor(self.kick, links=links, network=plan.network, owned_devs=plan.owned_devs,
                                     network6=plan.network6)
        self.monitor.start()

    async def close(self) -> None:
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)
            self.monitor = None

    async def full_check(self) -> None:
        """One run now in which every target is checked in full (what the timers do)."""
        self._full.update(self.targets)
        await self.converge_once()

    async def run(self) -> None:
        """The converger task: wait, drain, plan once, apply; forever."""
        while True:
            await self._wait()
            await self.converge_once()

    async def _wait(self) -> None:
        deadlines = list(self._next_full.values()) + ([self._retry_at] if self._retry_at is not None else [])
        timeout = max(0.0, min(deadlines) - self.clock()) if deadlines else None
        # a timer that sets the event, not wait_for: that wraps the wait in a new task every time
        timer = asyncio.get_running_loop().call_later(timeout, self._dirty.set) if timeout is not None else None
        try:
            await self._dirty.wait()
        finally:
            if timer is not None:
                timer.cancel()
        now = self.clock()
        for name, at in self._next_full.items():
            if now >= at:
                self._full.add(name)

    async def converge_once(self) -> None:
        """One run over everything that arrived since the last: plan once, apply each target."""
        async with self._lock:
            self._dirty.clear()
            self._retry_at = None
            full, self._full = self._full, set()
            own = self.own
            if own is None:
                return
            start = time.monotonic()
            self.stats.runs += 1
            self.stats.full_runs += bool(full)
            plans, selected = await self._plan(own)
            failed = False
            for plan in plans:
                name = target_of(plan)
                if self.table is not None and name == "kernel":
                    self.kernel.prune = True
                try:
                    await self._apply(name, plan, full=name in full)
                except FlannelError as err:
                    self._failed(name, err)
                    self._full.add(name)  # a failed delta cannot be trusted: read in full on the retry
                    failed = True
            took = time.monotonic() - start
            self.stats.observe(took)
            log.debug("converge run %d: %d peers planned, %s, %s in %.1f ms", self.stats.runs, len(selected),
                      f"full read of {', '.join(sorted(full))}" if full else "delta", "failed" if failed else "done",
                      took * 1000)
            if failed:
                self._retry_at = self.clock() + self._backoff.next()
            else:
                self._backoff.reset()
                self.stats.last_ok = time.time()
                self.stats.peers = len(selected)
                self.programmed = selected  # an immutable copy made for this run; sorted only when asked
            now = self.clock()
            for name in full & set(self._next_full):
                self._next_full[name] = now + (self.targets[name].full_check_s or 0.0)

    async def _plan(self, own: Lease) -> tuple[tuple[Plan, ...], Mapping[Net, Lease]]:
        table = self.table
        if table is None:
            return self.backend.plan(own, None, HostFacts()), {}
        peers = dict(table)  # a copy keeps the keys' hashes (an IPv4Network's is computed in Python)
        peers.pop(own.ident, None)
        selection = self.backend.select(peers)
        for lease, why in selection.skipped:
            if (lease.ident, why) not in self._warned:
                self._warned.add((lease.ident, why))
                log.warning("skipping peer %s (%s): %s", lease.ident, public_of(lease), why)
        for lease, why in selection.notes:
            if (lease.ident, why) not in self._warned:
                self._warned.add((lease.ident, why))
                log.warning("peer %s (%s): %s", lease.ident, public_of(lease), why)
        self._warn_shared(own, selection.peers)
        facts = HostFacts()
        if self.backend.needs_onlink:
            # both families (a dual-stack or IPv6-only peer's PublicIPv6 too); an IPv6-only lease's 0.0.0.0 is none
            ips = {ip for le in selection.peers.values() for ip in (le.attrs.public_ip, le.attrs.public_ipv6)
                   if ip is not None and not ip.is_unspecified}
            facts = HostFacts(onlink=await asyncio.to_thread(self.onlink.onlink, ips))
        self.kernel.peers = len(selection.peers)
        return self.backend.plan(own, selection.peers, facts), selection.peers

    def _warn_shared(self, own: Lease, peers: Mapping[Net, Lease]) -> None:
        """Two leases of one network claiming one PublicIP: one of them is stale or forged. Both
        stay programmed (neither can be proven wrong from here); say so once per set of leases."""
        for ip, subnets in shared_public_ips(own, peers):
            claimed = frozenset(subnets)
            if self._shared.get(ip) != claimed:
                self._shared[ip] = claimed
                log.warning("leases %s all claim public IP %s: one is stale or forged; check with "
                            "`flannelctl leases list` and revoke the wrong one",
                            ", ".join(map(str, sorted(subnets))), ip)

    async def _apply(self, name: str, plan: Plan, full: bool) -> None:
        target = self.targets.get(name)
        if target is None:
            raise LocalConfigError(f"the {self.backend.name} backend planned for {name!r}, which it did not start")
        changes = self.kernel.apply_now(plan, full) if target is self.kernel else None
        if changes is None:
            changes = target.apply(plan, full) if target.inline else await asyncio.to_thread(target.apply, plan, full)
        self.applied[name] = plan
        self.stats.changes += changes
        self.stats.per_target[name] = self.stats.per_target.get(name, 0) + changes
        self._logger(name).ok(f"{name} reconcile works again")

    def _logger(self, name: str) -> LogOnce:
        once = self._log.get(name)
        if once is None:
            once = self._log[name] = LogOnce(log)
        return once

    def _failed(self, name: str, err: FlannelError) -> None:
        self.stats.errors += 1
        self.stats.errors_per_target[name] = self.stats.errors_per_target.get(name, 0) + 1
        self._logger(name).error(f"{name} reconcile failed, retrying with backoff: {err}")

    # ---- for the health endpoint -----------------------------------------------------------------
    def pump_table(self) -> PumpPlan | None:
        """What the udp pump forwards by right now (the table last swapped into it), or None."""
        plan = self.applied.get("pump")
        return plan if isinstance(plan, PumpPlan) else None
