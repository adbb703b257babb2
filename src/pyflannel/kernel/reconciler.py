"""Make the kernel match a ``DesiredState``: read, diff (pure, in core), apply. Level-triggered.

Two ways in. ``apply`` is the full run, on a timer and on link events: read the kernel, diff,
apply; whatever was missed (an event, a compaction, an entry or a whole device deleted by hand) is
put right. ``apply_delta`` is the fast path for a lease event: it diffs against what the last run
left in the kernel (remembered, not read again) and sends only the difference, usually one
message; a route to a subnet new to us is added exclusively, so a route somebody else created
meanwhile is never overwritten. Any surprise (a refused message, changed devices) falls back to a
full run. The full run reads with the lean dumps of ``nldump`` (a few µs per entry); every route,
neighbour and FDB change is sent as a lean request (``nlsend``: the bytes pyroute2 sent, ~20 µs
each instead of ~0.5 ms), devices and addresses still through pyroute2; every netlink error
becomes a ``KernelError`` naming the object and the fix (``netlink.guard``). A small delta can run
on the caller's thread with ``fallback=False`` (the converger does so on its event loop, no thread
hop): whatever would need a kernel read returns None instead, for the caller to run in a worker.

Only our entries are ever removed: routes carrying ``RTPROT_FLANNEL`` inside our network, and
permanent neighbour/FDB entries on devices we own. One exception to "someone else's route is left
alone": a route with the default protocol (``boot``) that is exactly a route we want (dst, device,
gateway, onlink) is what Go flannel leaves behind when a host is switched to pyflannel in place; it
is adopted, i.e. replaced by the same route with our protocol (one atomic replace, no packet lost).
A device is recreated only when it is missing or incompatible, so a restart changes nothing that
is already right.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute

from ..core.desired import ActualState, DesiredState, Fdb, IPNet, LinkSpec, Neigh, Plan, Route, diff
from . import netlink
from .netlink import (
    RTPROT_BOOT,
    RTPROT_FLANNEL,
    KernelError,
    Requests,
    ensure_only_address,
    fdb_msg,
    guard,
    is_gone,
    neigh_msg,
    route_msg,
)

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x04
INLINE_MAX = 32  # the most changes a delta sends on the caller's thread (``fallback=False``)


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    mac: str
    recreated: bool


def link_kind_attrs(msg: object) -> tuple[str, dict[str, object]]:
    info = msg.get("IFLA_LINKINFO")  # type: ignore[attr-defined]
    if info is None:
        return "", {}
    data = info.get("IFLA_INFO_DATA")
    return info.get("IFLA_INFO_KIND") or "", (dict(data["attrs"]) if data is not None else {})


def incompatibilities(spec: LinkSpec, kind: str, attrs: dict[str, object]) -> list[str]:
    """flannel's vxlanLinksIncompat: why an existing device cannot be reused as ``spec``."""
    if kind != spec.kind:
        return [f"type {kind or 'unknown'} (want {spec.kind})"]
    v = spec.vxlan
    if v is None:
        return []
    out = []
    if attrs.get("IFLA_VXLAN_ID") != v.vni:
        out.append(f"VNI {attrs.get('IFLA_VXLAN_ID')} (want {v.vni})")
    dev = attrs.get("IFLA_VXLAN_LINK") or 0
    if dev and v.dev_index and dev != v.dev_index:
        out.append(f"underlay device index {dev} (want {v.dev_index})")
    local = attrs.get("IFLA_VXLAN_LOCAL6" if v.local.version == 6 else "IFLA_VXLAN_LOCAL")
    if local and ipaddress.ip_address(str(local)) != v.local:
        out.append(f"local {local} (want {v.local})")
    port = attrs.get("IFLA_VXLAN_PORT") or 0
    if port and v.port and port != v.port:
        out.append(f"port {port} (want {v.port})")
    if bool(attrs.get("IFLA_VXLAN_L2MISS")):
        out.append("l2miss on")
    if bool(attrs.get("IFLA_VXLAN_GBP")) != v.gbp:
        out.append(f"gbp {not v.gbp} (want {v.gbp})")
    return out


def after_plan(desired: DesiredState, foreign: frozenset[IPNet]) -> ActualState:
    """What the kernel holds once ``diff(desired, ...)`` has been applied without an error: all
    of ``desired`` except routes someone else owns (those were left alone)."""
    routes = frozenset(r for r in desired.routes if r.dst not in foreign) if foreign else desired.routes
    return ActualState(routes, desired.neighs, desired.fdbs, foreign)


class Reconciler:
    """The kernel target: one per daemon. Safe from any thread; one call runs at a time (the
    converger's lock)."""

    def __init__(self) -> None:
        self._noted: set[str] = set()
        self._believed: ActualState | None = None  # the kernel as our last successful run left it
        self._believed_shape: object = None  # the devices/addresses/network that state belongs to
        self._believed_dsts: frozenset[IPNet] = frozenset()  # the dsts of its routes (kept up to date per delta)
        self._index: dict[str, int] = {}  # device name -> ifindex as of the last full run
        self._local = threading.local()
        self.full_runs = 0
        self.delta_runs = 0
        # keys of entries we are deleting ourselves, so that the kernel monitor can tell their
        # deletion events from someone else's (see kernel.monitor.KernelMonitor)
        self.expected_gone: set[tuple[object, ...]] = set()

    def forget(self) -> None:
        """The next run reads the kernel in full."""
        self._believed = None

    def _socket(self) -> Requests:
        """The netlink socket changes are sent on, one per thread (opened in that thread's
        namespace, as the tests' threads enter theirs), kept open; opened on first use."""
        nl = getattr(self._local, "nl", None)
        if nl is None:
            nl = self._local.nl = Requests()
        return nl

    @staticmethod
    def _shape(desired: DesiredState) -> object:
        return (desired.networks, desired.links, desired.addresses, desired.owned_devs)

    def ensure_link(self, ipr: IPRoute, spec: LinkSpec) -> LinkState:
        """``spec`` exists, is compatible, up, with its MTU and MAC: a vxlan device is created or
        recreated; a missing TUN device cannot be (its backend holds the only descriptor)."""
        with guard(f"look up device {spec.name}"):
            found = ipr.link_lookup(ifname=spec.name)
        recreated = False
        if found:
            with guard(f"read device {spec.name}"):
                msg = ipr.get_links(found[0])[0]
            kind, attrs = link_kind_attrs(msg)
            if kind != spec.kind:
                raise KernelError(f"a device named {spec.name} exists but is a {kind or 'non-' + spec.kind} device: "
                                  f"remove or rename it (pyflannel will not delete a device it does not own)")
            why = incompatibilities(spec, kind, attrs)
            if why:
                log.warning("recreating %s: incompatible %s", spec.name, ", ".join(why))
                with guard(f"delete incompatible device {spec.name}"):
                    ipr.link("del", index=found[0])
                found = []
        if not found:
            if spec.kind != "vxlan":
                raise KernelError(f"device {spec.name} is gone: restart flanneld to create it again")
            self._create(ipr, spec)
            recreated = True
        with guard(f"bring up device {spec.name}"):
            index = ipr.link_lookup(ifname=spec.name)[0]
            msg = ipr.get_links(index)[0]
            kw: dict[str, object] = {}
            if msg.get("mtu") != spec.mtu:
                kw["mtu"] = spec.mtu
            if spec.mac and msg.get("address") != spec.mac:
                kw["address"] = spec.mac
            if spec.txqlen is not None and msg.get("txqlen") != spec.txqlen:
                kw["txqlen"] = spec.txqlen
            if not msg["flags"] & 1 or kw:
                ipr.link("set", index=index, state="up", **kw)
            mac = ipr.get_links(index)[0].get("address")
        return LinkState(spec.name, index, mac, recreated)

    def _create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        v = spec.vxlan
        assert v is not None, "only vxlan devices are created by the reconciler"
        kw: dict[str, object] = dict(
            ifname=spec.name, kind="vxlan", vxlan_id=v.vni, vxlan_ttl=0, vxlan_tos=0,
            vxlan_learning=int(v.learning), vxlan_proxy=0, vxlan_rsc=0, vxlan_l2miss=0, vxlan_l3miss=0,
            vxlan_udp_zero_csum6_tx=0, vxlan_udp_zero_csum6_rx=0, mtu=spec.mtu, txqlen=0,
        )
        kw["vxlan_local6" if v.local.version == 6 else "vxlan_local"] = str(v.local)
        if v.dev_index:
            kw["vxlan_link"] = v.dev_index
        if v.port:
            kw["vxlan_port"] = v.port
        if v.gbp:
            kw["vxlan_gbp"] = True
        if spec.mac:
            kw["address"] = spec.mac
        with guard(f"create vxlan device {spec.name} (VNI {v.vni}, local {v.local})"):
            ipr.link("add", **kw)
        log.info("created %s vni=%d local=%s mac=%s", spec.name, v.vni, v.local, spec.mac)

    def read(self, desired: DesiredState, index: dict[str, int]) -> ActualState:
        """Our routes (protocol-marked, inside the network: each family's), the dsts of everyone
        else's routes there, and the permanent neighbour/FDB entries on our devices (``nldump``:
        lean). A ``boot`` route exactly as we want it (Go flannel's, after an in-place switch) is
        neither: missing from ours, it is put again, i.e. replaced with our protocol."""
        names = {i: n for n, i in index.items()}
        wanted = {r.dst: r for r in desired.routes}
        adopted: list[IPNet] = []
        routes: set[Route] = set()
        foreign: set[IPNet] = set()
        for network in desired.networks:
            self._read_routes(network, names, wanted, routes, foreign, adopted)
        if adopted:
            log.info("adopting %d route(s) exactly as ours but with protocol boot (Go flannel's, after an in-place "
                     "switch): %s", len(adopted), ", ".join(map(str, adopted[:5])))
        neighs, fdbs = set(), set()
        families = [(socket.AF_INET, ipaddress.IPv4Address)] + (
            [(socket.AF_INET6, ipaddress.IPv6Address)] if desired.network6 is not None else [])
        for dev in desired.owned_devs:
            idx = index.get(dev)
            if idx is None:
                continue
            with guard(f"read the neighbour and FDB entries of {dev}"):
                nrows = [(kind, row) for fam, kind in families for row in netlink.dump_neighbours(idx, fam)]
                frows = netlink.dump_fdb(idx)
            for kind, (ip, mac, state) in nrows:
                if state & NUD_PERMANENT and mac:
                    neighs.add(Neigh(dev, kind(ip), mac))
            for mac, dst, _state in frows:
                if dst is not None and mac:
                    kind = ipaddress.IPv4Address if dst[0] == 4 else ipaddress.IPv6Address
                    fdbs.add(Fdb(dev, mac, kind(dst[1])))
        return ActualState(frozenset(routes), frozenset(neighs), frozenset(fdbs), frozenset(foreign))

    @staticmethod
    def _read_routes(network: IPNet, names: dict[int, str], wanted: dict[IPNet, Route], routes: set[Route],
                     foreign: set[IPNet], adopted: list[IPNet]) -> None:
        v6 = network.version == 6
        net, plen, mask = int(network.network_address), network.prefixlen, int(network.netmask)
        kind_net = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
        kind_ip = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
        with guard("read the routing table"):
            rows = netlink.dump_routes(family=socket.AF_INET6 if v6 else socket.AF_INET)
        for dst, dst_len, proto, oif, gw, flags in rows:
            if dst_len < plen or dst & mask != net:
                continue  # outside our network: another network's flanneld, or not overlay at all
            dnet = kind_net((dst, dst_len))
            route = Route(dnet, names.get(oif, "?"), kind_ip(gw) if gw is not None else None,
                          bool(flags & RTNH_F_ONLINK))
            if proto == RTPROT_BOOT and wanted.get(dnet) == route:
                adopted.append(dnet)
            elif proto != RTPROT_FLANNEL:
                foreign.add(dnet)
            else:
                routes.add(route)

    def apply(self, desired: DesiredState, prune: bool = True) -> tuple[Plan, list[LinkState]]:
        """Converge by reading the kernel in full; returns what was changed and our devices' state.
        ``prune=False`` (before the first lease snapshot) adds and fixes but deletes nothing."""
        self._believed = None
        self.full_runs += 1
        self.expected_gone.clear()  # a leftover (an entry that was already gone) must not hide a later deletion
        # A device's own setting (disable_ipv6, accept_ra) goes before the device is brought up
        # (flannel0 would otherwise send the kernel's IPv6 router solicitations into the pump), but
        # it is gone while the device is (deleted by hand): those are set once the device is back,
        # since failing on one first would keep the device from ever being made again.
        later = [(p, v) for p, v in desired.sysctls if not netlink.set_sysctl(p, v, missing_ok=True)]
        with netlink.session("reconcile") as ipr:
            links = [self.ensure_link(ipr, spec) for spec in desired.links]
            for path, value in later:
                netlink.set_sysctl(path, value)
            with guard("list devices"):
                self._index = {m.get("ifname"): m["index"] for m in ipr.get_links()}
            for a in desired.addresses:
                idx = self._index.get(a.dev)
                if idx is None:
                    raise KernelError(f"device {a.dev} is missing: restart flanneld to create it again")
                ensure_only_address(idx, a.address, a.within)
            actual = self.read(desired, self._index)
            plan = diff(desired, actual)
            if not prune:
                plan = Plan(plan.put_routes, (), plan.put_neighs, (), plan.put_fdbs, (), plan.notes)
            self._execute(self._socket(), plan, self._index)
        if prune:
            self._believed, self._believed_shape = after_plan(desired, actual.foreign), self._shape(desired)
            self._believed_dsts = frozenset(r.dst for r in self._believed.routes)
        return plan, links

    def apply_delta(self, desired: DesiredState, fallback: bool = True) -> tuple[Plan, list[LinkState]] | None:
        """Converge by sending only what changed since our last run (a lease event). Falls back to
        ``apply`` when there is no trustworthy last run or the kernel refuses a message; with
        ``fallback=False`` returns None instead (nothing read, at most the refused delta sent),
        and also for a delta of more than ``INLINE_MAX`` changes (nothing sent): the caller then
        runs ``apply_delta`` again where a full run may take its time."""
        believed = self._believed
        if believed is None or self._believed_shape != self._shape(desired):
            return self.apply(desired) if fallback else None
        plan = diff(desired, believed)
        if not len(plan):
            self._log_notes(plan)
            return plan, []
        if not fallback and len(plan) > INLINE_MAX:
            return None
        self._believed = None  # until this run has gone through
        self.delta_runs += 1
        try:
            self._execute(self._socket(), plan, self._index, known=self._believed_dsts)
        except (KernelError, KeyError) as err:
            log.info("incremental kernel update refused (%s): reading the kernel state in full", err)
            return self.apply(desired) if fallback else None
        self._believed = after_plan(desired, believed.foreign)
        # one route per dst: the new dsts are the old but the deleted, plus the put (hashing a
        # handful of subnets, not every one)
        self._believed_dsts = self._believed_dsts.difference([r.dst for r in plan.del_routes]).union(
            [r.dst for r in plan.put_routes])
        return plan, []

    def _log_notes(self, plan: Plan) -> None:
        for note in plan.notes:
            if note not in self._noted:
                self._noted.add(note)
                log.warning("%s", note)

    def _execute(self, nl: Requests, plan: Plan, index: dict[str, int],
                 known: frozenset[IPNet] | None = None) -> None:
        """Send ``plan``. With ``known`` (the delta path), a route to a dst not in it is added
        exclusively: if a route to it appeared since our last full read, the add fails (EEXIST)
        and the full run decides, instead of a `replace` overwriting someone else's route."""
        self._log_notes(plan)
        send = nl.send
        for n in plan.put_neighs:
            with guard(f"set neighbour {n.ip} lladdr {n.mac} on {n.dev}"):
                send(neigh_msg("replace", n.ip, n.mac, index[n.dev]))
        for f in plan.put_fdbs:
            with guard(f"set FDB entry {f.mac} dst {f.dst} on {f.dev}"):
                send(fdb_msg("replace", f.mac, f.dst, index[f.dev]))
        for r in plan.put_routes:
            exclusive = known is not None and r.dst not in known
            with guard(f"{'add' if exclusive else 'set'} route {r.dst} via {r.gateway or '-'} dev {r.dev}"):
                send(route_msg("add" if exclusive else "replace", r.dst, index[r.dev], r.gateway,
                               RTNH_F_ONLINK if r.onlink else 0, RTPROT_FLANNEL))
        self.expected_gone.update([("route", r.dst) for r in plan.del_routes]
                                  + [("neigh", n.dev, n.ip) for n in plan.del_neighs]
                                  + [("fdb", f.dev, f.mac, f.dst) for f in plan.del_fdbs])
        for r in plan.del_routes:
            _ignore_gone(f"delete route {r.dst}",
                         lambda r=r: send(route_msg("del", r.dst, index.get(r.dev, 0), proto=RTPROT_FLANNEL)))
        for n in plan.del_neighs:
            _ignore_gone(f"delete neighbour {n.ip} on {n.dev}",
                         lambda n=n: send(neigh_msg("del", n.ip, n.mac, index[n.dev])))
        for f in plan.del_fdbs:
            _ignore_gone(f"delete FDB entry {f.mac} on {f.dev}",
                         lambda f=f: send(fdb_msg("del", f.mac, f.dst, index[f.dev])))
        if len(plan):
            log.info("reconciled routes +%d -%d neigh +%d -%d fdb +%d -%d", len(plan.put_routes),
                     len(plan.del_routes), len(plan.put_neighs), len(plan.del_neighs), len(plan.put_fdbs),
                     len(plan.del_fdbs))


def _ignore_gone(what: str, fn: Callable[[], object]) -> None:
    try:
        with guard(what):
            fn()
    except KernelError as err:
        if not is_gone(err):
            raise
