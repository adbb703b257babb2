"""Make the kernel match a ``DesiredState``: read, diff (pure, in core), apply. Level-triggered.

Two ways in. ``apply`` is the full run, on a timer and on link events: read the kernel, diff,
apply; whatever was missed (an event, a compaction, an entry or a whole device deleted by hand) is
put right. ``apply_delta`` is the fast path for a lease event: it diffs against what the last run
left in the kernel (remembered, not read again) and sends only the difference, usually one
message; a route to a subnet new to us is added exclusively, so a route somebody else created
meanwhile is never overwritten. Any surprise (a refused message, changed devices) falls back to a
full run. Reading 100 peers' routes costs ~12 ms of pyroute2 parsing; one route ~0.3 ms.

Only our entries are ever removed: routes carrying ``RTPROT_FLANNEL`` inside our network, and
permanent neighbour/FDB entries on devices we own. A device is recreated only when it is missing
or incompatible, so a restart changes nothing that is already right.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.desired import ActualState, DesiredState, Fdb, LinkSpec, Neigh, Plan, Route, diff
from .netlink import RTPROT_FLANNEL, KernelError, ensure_only_address

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


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
    local = attrs.get("IFLA_VXLAN_LOCAL")
    if local and str(local) != str(v.local):
        out.append(f"local {local} (want {v.local})")
    port = attrs.get("IFLA_VXLAN_PORT") or 0
    if port and v.port and port != v.port:
        out.append(f"port {port} (want {v.port})")
    if bool(attrs.get("IFLA_VXLAN_L2MISS")):
        out.append("l2miss on")
    if bool(attrs.get("IFLA_VXLAN_GBP")) != v.gbp:
        out.append(f"gbp {not v.gbp} (want {v.gbp})")
    return out


def after_plan(desired: DesiredState, foreign: frozenset[ipaddress.IPv4Network]) -> ActualState:
    """What the kernel holds once ``diff(desired, ...)`` has been applied without an error: all
    of ``desired`` except routes someone else owns (those were left alone)."""
    return ActualState(frozenset(r for r in desired.routes if r.dst not in foreign), desired.neighs, desired.fdbs,
                       foreign)


class Reconciler:
    """One per daemon; every call opens its own netlink socket (safe from any thread), and one
    call runs at a time (the backend's lock)."""

    def __init__(self) -> None:
        self._noted: set[str] = set()
        self._believed: ActualState | None = None  # the kernel as our last successful run left it
        self._believed_shape: object = None  # the devices/addresses/network that state belongs to
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

    def _socket(self) -> IPRoute:
        """The fast path's netlink socket, one per worker thread, kept open (opening one costs
        as much as the message it carries); a pyroute2 IPRoute is used by one thread only."""
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = IPRoute()
        return ipr

    @staticmethod
    def _shape(desired: DesiredState) -> object:
        return (desired.network, desired.links, desired.addresses, desired.owned_devs)

    def ensure_link(self, ipr: IPRoute, spec: LinkSpec) -> LinkState:
        found = ipr.link_lookup(ifname=spec.name)
        recreated = False
        if found:
            msg = ipr.get_links(found[0])[0]
            kind, attrs = link_kind_attrs(msg)
            if kind != spec.kind:
                raise KernelError(f"a device named {spec.name} exists but is a {kind or 'non-vxlan'} device: "
                                  f"remove or rename it (pyflannel will not delete a device it does not own)")
            why = incompatibilities(spec, kind, attrs)
            if why:
                log.warning("recreating %s: incompatible %s", spec.name, ", ".join(why))
                ipr.link("del", index=found[0])
                found = []
        if not found:
            self._create(ipr, spec)
            recreated = True
        index = ipr.link_lookup(ifname=spec.name)[0]
        msg = ipr.get_links(index)[0]
        kw: dict[str, object] = {}
        if msg.get("mtu") != spec.mtu:
            kw["mtu"] = spec.mtu
        if spec.mac and msg.get("address") != spec.mac:
            kw["address"] = spec.mac
        if not msg["flags"] & 1 or kw:
            ipr.link("set", index=index, state="up", **kw)
        mac = ipr.get_links(index)[0].get("address")
        return LinkState(spec.name, index, mac, recreated)

    def _create(self, ipr: IPRoute, spec: LinkSpec) -> None:
        v = spec.vxlan
        assert v is not None, "only vxlan devices are created by the reconciler"
        kw: dict[str, object] = dict(
            ifname=spec.name, kind="vxlan", vxlan_id=v.vni, vxlan_local=str(v.local), vxlan_ttl=0, vxlan_tos=0,
            vxlan_learning=int(v.learning), vxlan_proxy=0, vxlan_rsc=0, vxlan_l2miss=0, vxlan_l3miss=0,
            vxlan_udp_zero_csum6_tx=0, vxlan_udp_zero_csum6_rx=0, mtu=spec.mtu, txqlen=0,
        )
        if v.dev_index:
            kw["vxlan_link"] = v.dev_index
        if v.port:
            kw["vxlan_port"] = v.port
        if v.gbp:
            kw["vxlan_gbp"] = True
        if spec.mac:
            kw["address"] = spec.mac
        ipr.link("add", **kw)
        log.info("created %s vni=%d local=%s mac=%s", spec.name, v.vni, v.local, spec.mac)

    def read(self, ipr: IPRoute, desired: DesiredState) -> ActualState:
        names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
        routes, foreign = set(), set()
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = ipaddress.IPv4Network(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}")
            if not dst.subnet_of(desired.network):
                continue  # outside our network: another network's flanneld, or not overlay at all
            if r["proto"] != RTPROT_FLANNEL:
                foreign.add(dst)
                continue
            gw = r.get("gateway")
            routes.add(Route(dst, names.get(r.get("oif"), "?"), ipaddress.IPv4Address(gw) if gw else None,
                             bool(r["flags"] & RTNH_F_ONLINK)))
        neighs, fdbs = set(), set()
        for dev in desired.owned_devs:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                continue
            for n in ipr.get_neighbours(ifindex=idx[0], family=socket.AF_INET):
                if n["state"] & NUD_PERMANENT and n.get("lladdr"):
                    neighs.add(Neigh(dev, ipaddress.IPv4Address(n.get("dst")), n.get("lladdr")))
            for n in ipr.fdb("dump", ifindex=idx[0]):
                if n["ifindex"] == idx[0] and n.get("dst") and n.get("lladdr"):
                    fdbs.add(Fdb(dev, n.get("lladdr"), ipaddress.IPv4Address(n.get("dst"))))
        return ActualState(frozenset(routes), frozenset(neighs), frozenset(fdbs), frozenset(foreign))

    def apply(self, desired: DesiredState) -> tuple[Plan, list[LinkState]]:
        """Converge by reading the kernel in full; returns what was changed and our devices' state."""
        self._believed = None
        self.full_runs += 1
        self.expected_gone.clear()  # a leftover (an entry that was already gone) must not hide a later deletion
        try:
            with IPRoute() as ipr:
                links = [self.ensure_link(ipr, spec) for spec in desired.links]
                for a in desired.addresses:
                    idx = ipr.link_lookup(ifname=a.dev)
                    if not idx:
                        raise KernelError(f"device {a.dev} is missing")
                    ensure_only_address(idx[0], a.address, a.within)
                actual = self.read(ipr, desired)
                plan = diff(desired, actual)
                self._index = {m.get("ifname"): m["index"] for m in ipr.get_links()}
                self._execute(ipr, plan, self._index)
        except NetlinkError as err:
            raise KernelError(f"reconcile failed: {err.args[1] if len(err.args) > 1 else err} "
                              f"(errno {err.code})") from err
        self._believed, self._believed_shape = after_plan(desired, actual.foreign), self._shape(desired)
        return plan, links

    def apply_delta(self, desired: DesiredState) -> tuple[Plan, list[LinkState]]:
        """Converge by sending only what changed since our last run (a lease event). Falls back to
        ``apply`` when there is no trustworthy last run or the kernel refuses a message."""
        believed = self._believed
        if believed is None or self._believed_shape != self._shape(desired):
            return self.apply(desired)
        plan = diff(desired, believed)
        if not len(plan):
            self._log_notes(plan)
            return plan, []
        self._believed = None  # until this run has gone through
        self.delta_runs += 1
        try:
            self._execute(self._socket(), plan, self._index, known={r.dst for r in believed.routes})
        except (NetlinkError, KeyError) as err:
            log.info("incremental kernel update refused (%s): reading the kernel state in full", err)
            return self.apply(desired)
        self._believed = after_plan(desired, believed.foreign)
        return plan, []

    def _log_notes(self, plan: Plan) -> None:
        for note in plan.notes:
            if note not in self._noted:
                self._noted.add(note)
                log.warning("%s", note)

    def _execute(self, ipr: IPRoute, plan: Plan, index: dict[str, int],
                 known: set[ipaddress.IPv4Network] | None = None) -> None:
        """Send ``plan``. With ``known`` (the delta path), a route to a dst not in it is added
        exclusively: if a route to it appeared since our last full read, the add fails (EEXIST)
        and the full run decides, instead of a `replace` overwriting someone else's route."""
        self._log_notes(plan)
        for n in plan.put_neighs:
            ipr.neigh("replace", dst=str(n.ip), lladdr=n.mac, ifindex=index[n.dev], state=NUD_PERMANENT)
        for f in plan.put_fdbs:
            ipr.fdb("replace", ifindex=index[f.dev], lladdr=f.mac, dst=str(f.dst), flags=NTF_SELF,
                    state=NUD_PERMANENT)
        for r in plan.put_routes:
            kw: dict[str, object] = {"dst": str(r.dst), "oif": index[r.dev], "proto": RTPROT_FLANNEL}
            if r.gateway is not None:
                kw["gateway"] = str(r.gateway)
            if r.onlink:
                kw["flags"] = RTNH_F_ONLINK
            ipr.route("add" if known is not None and r.dst not in known else "replace", **kw)
        self.expected_gone.update([("route", r.dst) for r in plan.del_routes]
                                  + [("neigh", n.dev, n.ip) for n in plan.del_neighs]
                                  + [("fdb", f.dev, f.mac, f.dst) for f in plan.del_fdbs])
        for r in plan.del_routes:
            _ignore_gone(lambda r=r: ipr.route("del", dst=str(r.dst), oif=index.get(r.dev, 0),
                                               proto=RTPROT_FLANNEL))
        for n in plan.del_neighs:
            _ignore_gone(lambda n=n: ipr.neigh("del", dst=str(n.ip), lladdr=n.mac, ifindex=index[n.dev]))
        for f in plan.del_fdbs:
            _ignore_gone(lambda f=f: ipr.fdb("del", ifindex=index[f.dev], lladdr=f.mac, dst=str(f.dst),
                                             flags=NTF_SELF))
        if len(plan):
            log.info("reconciled routes +%d -%d neigh +%d -%d fdb +%d -%d", len(plan.put_routes),
                     len(plan.del_routes), len(plan.put_neighs), len(plan.del_neighs), len(plan.put_fdbs),
                     len(plan.del_fdbs))


def _ignore_gone(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except NetlinkError as err:
        if err.code not in _GONE:
            raise
