"""What the cloud route backends (aws-vpc, gce) share: errors that name the fix, the pure
stale-route plan, and the converge loop.

A cloud backend programs no kernel state. Each host writes one route for its own subnet into the
cloud network's route table, pointing at itself; the cloud's router forwards. So the desired state
is "our route exists and points at us" plus cleanup, and the loop converges a route table over
an API instead of netlink. API calls are blocking SDK calls: they run in a thread, one pass at a
time (the daemon's converger), and an error is logged once and retried with backoff.

Cleanup (flannel left these behind) must never fight between hosts nor delete a live host's route:

- a blackhole route inside the network (its target is gone) is removed by every host, as flannel;
- a route inside the network with no lease that points at *us* is ours from an older lease: removed;
- a route of subnet size inside the network with no lease, pointing at an instance that holds no
  lease, is removed only by the host holding the lowest live subnet, and only once it has been
  stale for ``stale_grace_s`` (a joining host's route may be seen before its lease);
- a route whose subnet is leased is its owner's business and is never deleted by anyone else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..core.config import NetworkConfig
from ..core.errors import ConfigError, LocalConfigError, TransientError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs
from ..core.plan import CloudPlan, Selection
from .base import int_option

log = logging.getLogger("pyflannel.backend")

Net = ipaddress.IPv4Network


class MissingPermission(LocalConfigError):
    """The cloud API refused a call for lack of an IAM permission; names the permission."""

    def __init__(self, permission: str, what: str, detail: str, fix: str) -> None:
        self.permission = permission
        super().__init__(f"missing permission {permission}: {what} was denied ({detail}); {fix}")


class RouteLimitError(LocalConfigError):
    """The route table (AWS) or network (GCE) holds as many routes as it may."""

    def __init__(self, table: str, detail: str, fix: str) -> None:
        self.table = table
        super().__init__(f"route limit reached in {table}: {detail}; every host needs one route there: {fix}, "
                         'or use the vxlan backend ("Backend": {"Type": "vxlan"}), which needs no cloud routes')


class MetadataUnavailable(LocalConfigError):
    """No instance metadata service answered: not on that cloud, or the endpoint is wrong."""


class CloudError(TransientError):
    """A cloud API call failed for another reason (after the SDK's own retries); retried later."""


@dataclass(frozen=True)
class CloudRoute:
    table: str  # AWS route table ID; GCE network name
    dest: Net
    target: str  # ENI/instance ID (AWS) or instance path (GCE); "" for any other kind of next hop
    name: str = ""  # GCE route name
    blackhole: bool = False

    @property
    def key(self) -> str:
        return f"{self.table} {self.dest} {self.target} {self.name}"


@dataclass(frozen=True)
class Cleanup:
    delete: tuple[tuple[CloudRoute, str], ...]  # delete now, with the reason
    suspects: tuple[CloudRoute, ...]  # unleased routes to another target: delete if that target is dead


def plan_cleanup(routes: Iterable[CloudRoute], network: Net, subnet_len: int, own: Net, own_target: str,
                 live: Iterable[Net] | None, cleaner: bool) -> Cleanup:
    """Pure: which routes of the tables are stale, following the rules in the module docstring.
    ``live`` None means the leases are not known yet (no snapshot): then only blackholes go."""
    live_set = set(live) if live is not None else None
    delete: list[tuple[CloudRoute, str]] = []
    suspects: list[CloudRoute] = []
    for r in routes:
        if not r.dest.subnet_of(network) or r.dest == own:
            continue
        if r.blackhole:
            delete.append((r, "blackhole route inside the network"))
        elif live_set is None or r.dest in live_set or not r.target or r.dest.prefixlen != subnet_len:
            continue
        elif r.target == own_target:
            delete.append((r, f"points at us but our lease is {own}"))
        elif cleaner:
            suspects.append(r)
    return Cleanup(tuple(delete), tuple(suspects))


def route_limit(config: NetworkConfig, default: int, backend: str) -> int:
    return int_option(config, "RouteLimit", default, 1, 100_000, backend)


def require_ipv4(config: NetworkConfig, backend: str) -> list[str]:
    if config.network is None:
        raise ConfigError(f"{backend} backend: needs an IPv4 Network (EnableIPv4), got none")
    if config.enable_ipv6:
        return [f"{backend} backend: routes only IPv4; the IPv6 network {config.ipv6_network} gets no cloud routes"]
    return []


class CloudBackend:
    """A backend whose plan is a cloud route table (module docstring). It is its own target
    (``start`` returns it): ``apply`` talks to the cloud API in the converger's thread; the
    converger owns the lock, the counters, logging once and the timer (``full_check_s``)."""

    name = ""
    needs_onlink = False
    inline = False
    full_check_s = 60.0  # a full pass on the timer at most this often (API rate limits)
    stale_grace_s = 30.0
    near_limit_ratio = 0.8
    own_target = ""  # what our routes point at: our ENI ID (AWS), our instance path (GCE)

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        self.ext = ext
        self.config = config
        self.lease: Lease | None = None  # as of the pass being applied
        self.cleaner = False
        self.changes = 0
        self.sweep_pending = True  # no full cleanup pass with the leases known yet
        self.clock: Callable[[], float] = time.monotonic
        self._near_limit: set[str] = set()
        self._stale_since: dict[str, float] = {}
        self._last: CloudPlan | None = None

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr)  # {"PublicIP":"…","PublicIPv6":null}, no BackendType: flannel's

    def mtu(self) -> int:
        return self.ext.mtu

    def stats(self) -> dict[str, int]:
        return {}

    def peer_stats(self) -> list[dict[str, object]]:
        return []

    def select(self, peers: Mapping[Net, Lease]) -> Selection:
        """Every lease inside the network counts (whatever its backend): cleanup must know them all."""
        network = self.config.network
        ok = {sn: le for sn, le in peers.items() if network is None or sn.subnet_of(network)}
        return Selection(ok, tuple((le, f"its subnet is outside the network {network}")
                                   for sn, le in peers.items() if sn not in ok))

    async def prepare(self, host: object) -> LeaseAttrs:
        """Before the lease: instance metadata and API checks (``discover``). Not on that cloud, no
        matching interface, a missing permission: we stop here, before taking a subnet."""
        await asyncio.to_thread(self.discover)
        return self.lease_attrs()

    def discover(self) -> None:
        raise NotImplementedError

    async def start(self, own: Lease) -> dict[str, object]:
        return {"cloud": self}

    def plan(self, own: Lease, peers: Mapping[Net, Lease] | None, facts: HostFacts) -> tuple[CloudPlan, ...]:
        """Pure: our route, and (once the leases are known) who cleans: the lowest live subnet."""
        if peers is None:
            return (CloudPlan(own, None, frozenset(), False),)
        live = frozenset(peers) | {own.subnet}
        ips = frozenset(str(le.attrs.public_ip) for le in peers.values()) | {str(own.attrs.public_ip)}
        return (CloudPlan(own, live, ips, own.subnet == min(live)),)

    def apply(self, plan: object, full: bool) -> int:
        """Blocking, in the converger's thread. A lease event costs no API call unless this host
        is the cleaner and a lease went (or it just became the cleaner); every owner keeps its own
        route, checked on the first passes and on the timer."""
        assert isinstance(plan, CloudPlan)
        last = self._last
        if not full and last is not None and last.live is not None and plan.live is not None:
            gone = last.live - plan.live
            if not (plan.cleaner and (gone or not last.cleaner)):
                self._last = plan
                return 0
        changes = self.converge(plan, initial=last is None)
        self._last = plan
        return changes

    def converge(self, plan: CloudPlan, initial: bool) -> int:
        """Our route in every table, then the cleanup ``plan_cleanup`` decides; entries changed."""
        assert self.config.network is not None
        self.lease, self.cleaner, self.changes = plan.own, plan.cleaner, 0
        routes = self.ensure_own(initial)
        if routes is not None:
            cleanup = plan_cleanup(routes, self.config.network, self.config.subnet_len, plan.own.subnet,
                                   self.own_target, plan.live, plan.cleaner)
            for route, why in cleanup.delete:
                self.delete(route, why)
            ips = self.target_ips({r.target for r in cleanup.suspects}) if cleanup.suspects else {}
            for route in self.ripe(r for r in cleanup.suspects if not ips.get(r.target, set()) & plan.live_ips):
                self.delete(route, "no lease for its subnet, and its target holds none")
        self.sweep_pending = self.sweep_pending and plan.live is None
        return self.changes

    async def close(self) -> None:
        """Our routes stay in the cloud: a restarted flanneld keeps its lease and its route."""

    def ensure_own(self, initial: bool) -> list[CloudRoute] | None:
        """Our route in every table; the routes to consider for cleanup (None: skip it). Per backend.
        ``self.lease`` is our lease, ``self.cleaner`` whether we clean; count changes in ``self.changes``."""
        raise NotImplementedError

    def delete(self, route: CloudRoute, why: str) -> None:
        raise NotImplementedError

    def target_ips(self, targets: set[str]) -> dict[str, set[str]]:
        """The addresses of each route target that still exists (to find live hosts). Per backend."""
        raise NotImplementedError

    def ripe(self, suspects: Iterable[CloudRoute]) -> list[CloudRoute]:
        """The suspects that have stayed stale for ``stale_grace_s``; forgets the ones that are gone."""
        now, suspects = self.clock(), list(suspects)
        keys = {r.key for r in suspects}
        self._stale_since = {k: t for k, t in self._stale_since.items() if k in keys}
        return [r for r in suspects if now - self._stale_since.setdefault(r.key, now) >= self.stale_grace_s]

    def check_near_limit(self, table: str, count: int, limit: int, fix: str) -> None:
        """Warn once when a table nears its route limit; again after it has dropped below."""
        if count >= math.ceil(self.near_limit_ratio * limit):
            if table not in self._near_limit:
                self._near_limit.add(table)
                log.warning("%s holds %d routes of its limit of %d: each host needs one, so about %d more hosts "
                            "fit; %s, or move to the vxlan backend", table, count, limit, max(limit - count, 0), fix)
        else:
            self._near_limit.discard(table)
