"""Every netlink call of pyflannel goes through here: idempotent steps (``ensure_*``), look-ups,
the fast dumps of the full kernel check (``nldump``), the lean route/neighbour/FDB requests of the
reconciler (``nlsend``), and ``guard``, the one place where a pyroute2 or socket error becomes a
``KernelError`` whose one line names the object, the errno and the fix.

Each helper opens its own short-lived netlink socket, so callers may run them from any thread of
the process (never after a setns).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.errors import KernelError
from .nldump import dump_fdb, dump_neighbours, dump_routes
from .nlsend import Requests, fdb_msg, neigh_msg, route_msg

__all__ = ["KernelError", "Requests", "dump_fdb", "dump_neighbours", "dump_routes", "fdb_msg", "guard", "neigh_msg",
           "route_msg", "session"]

RTPROT_FLANNEL = 151  # our routes carry this protocol number; only such routes are ever removed
RTPROT_BOOT = 3  # the default: `ip route add`, and Go flannel's routes
RT_SCOPE_UNIVERSE = 0
IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80


_FIXES = {
    errno.EPERM: "run flanneld as root (it needs CAP_NET_ADMIN)",
    errno.EACCES: "run flanneld as root (it needs CAP_NET_ADMIN)",
    errno.EEXIST: "something else holds that name or entry: remove it, or pick other settings",
    errno.EADDRINUSE: "another device uses that VNI, port or address: remove it, or pick another VNI/Port",
    errno.EOPNOTSUPP: "the kernel lacks the feature: load its module (e.g. `modprobe vxlan`)",
    errno.EAFNOSUPPORT: "the kernel lacks the feature: load its module (e.g. `modprobe vxlan`)",
    errno.ENODEV: "the device vanished meanwhile; it is set up again on the next run",
    errno.ENOENT: "the object vanished meanwhile; it is set up again on the next run",
    errno.ENETUNREACH: "the gateway is not reachable on that device: check the underlay addresses",
    errno.EINVAL: "the kernel refused the values: check the backend options in the network config",
    errno.ENOBUFS: "the kernel is short of memory for netlink; it is retried",
    errno.ENOMEM: "the kernel is short of memory; it is retried",
}


def describe(what: str, err: BaseException) -> str:
    """One line: what failed, the errno by name, and the fix."""
    code = getattr(err, "code", None) if isinstance(err, NetlinkError) else getattr(err, "errno", None)
    if isinstance(code, int) and code > 0:
        name = errno.errorcode.get(code, str(code))
        fix = _FIXES.get(code, "see the kernel log (`dmesg`)")
        return f"{what} failed: {os.strerror(code)} ({name}); {fix}"
    return f"{what} failed: {err}"


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn any pyroute2/OS error inside into a ``KernelError`` naming ``what`` and the fix."""
    try:
        yield
    except KernelError:
        raise
    except (NetlinkError, OSError) as err:
        raise KernelError(describe(what, err)) from err


def is_gone(err: KernelError) -> bool:
    """The object was already gone (a deletion that found nothing to delete)."""
    cause = err.__cause__
    code = getattr(cause, "code", None) if isinstance(cause, NetlinkError) else getattr(cause, "errno", None)
    return code in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


@contextlib.contextmanager
def session(what: str = "netlink") -> Iterator[IPRoute]:
    """A short-lived IPRoute whose errors become ``KernelError`` (naming ``what``)."""
    with guard(what), IPRoute() as ipr:
        yield ipr


_ipr = session


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    mtu: int
    up: bool


@dataclass(frozen=True)
class Addr:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    index: int
    flags: int


def links() -> list[Link]:
    with _ipr("list links") as ipr:
        return [
            Link(m.get("ifname"), m["index"], m.get("mtu") or 0, bool(m["flags"] & 1))
            for m in ipr.get_links()
        ]


def link_by_name(name: str) -> Link | None:
    return next((link for link in links() if link.name == name), None)


def ipv4_addrs(index: int | None = None) -> list[Addr]:
    return _addrs(2, index)


def ipv6_addrs(index: int | None = None) -> list[Addr]:
    return _addrs(10, index)


def _addrs(family: int, index: int | None) -> list[Addr]:
    kind = ipaddress.IPv4Interface if family == 2 else ipaddress.IPv6Interface
    with _ipr("list addresses") as ipr:
        out = []
        for m in ipr.get_addr(family=family):
            if index is not None and m["index"] != index:
                continue
            flags = m.get("IFA_FLAGS") or m["flags"]
            out.append(Addr(kind(f"{m.get('address')}/{m['prefixlen']}"), m["index"], flags))
        return out


def default_route_oif(version: int = 4) -> int | None:
    with _ipr("list routes") as ipr:
        for r in ipr.get_routes(family=10 if version == 6 else 2, table=254):
            if r["dst_len"] == 0 and r.get("oif"):
                return int(r.get("oif"))
    return None


def route_get(dst: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """``ip route get``: (output ifindex, preferred source address)."""
    with _ipr(f"route get {dst}") as ipr:
        r = ipr.route("get", dst=str(dst), family=10 if dst.version == 6 else 2)[0]
        src = r.get("RTA_PREFSRC")
        return int(r.get("RTA_OIF")), ipaddress.ip_address(src) if src else None


def route_gateway(dst: ipaddress.IPv4Address | ipaddress.IPv6Address
                  ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The gateway of the route the kernel uses to reach ``dst`` (either family); None when
    directly connected (Go's ip.DirectRouting)."""
    with _ipr(f"route get {dst}") as ipr:
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        gw = ipr.route("get", dst=str(dst), family=family)[0].get("RTA_GATEWAY")
        return ipaddress.ip_address(gw) if gw else None


def ensure_link_up(index: int, mtu: int | None = None, txqueuelen: int | None = None) -> None:
    kw: dict[str, int] = {}
    if mtu is not None:
        kw["mtu"] = mtu
    if txqueuelen is not None:
        kw["txqlen"] = txqueuelen
    with _ipr(f"set link {index} up") as ipr:
        ipr.link("set", index=index, state="up", **kw)


def ensure_only_address(index: int, want: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                        network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Give the link ``want`` and remove its other addresses of that family inside ``network``
    (flannel's EnsureV4AddressOnLink, and its IPv6 twin)."""
    have = ipv6_addrs(index) if want.version == 6 else ipv4_addrs(index)
    with _ipr(f"set address {want} on link {index}") as ipr:
        for a in have:
            if a.address != want and a.address.ip in network:
                ipr.addr("del", index=index, address=str(a.address.ip), prefixlen=a.address.network.prefixlen)
        if all(a.address != want for a in have):
            ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.network.prefixlen)


def ensure_route(dst: ipaddress.IPv4Network, oif: int, gateway: ipaddress.IPv4Address | None = None) -> None:
    """``ip route replace DST [via GW] dev OIF proto 151``."""
    kw: dict[str, object] = {"dst": str(dst), "oif": oif, "proto": RTPROT_FLANNEL, "scope": RT_SCOPE_UNIVERSE}
    if gateway is not None:
        kw["gateway"] = str(gateway)
    with _ipr(f"replace route {dst} dev {oif}") as ipr:
        ipr.route("replace", **kw)


def set_sysctl(path: str, value: str, *, missing_ok: bool = False) -> bool:
    """Write /proc/sys/<path> (of this process's network namespace) if it differs. An IPv6 setting
    on a kernel without IPv6 (booted with ipv6.disable=1: no /proc/sys/net/ipv6) has nothing to
    set and is skipped. ``missing_ok``: a setting that does not exist (yet: its device is missing)
    is not set and False is returned, instead of a KernelError; True otherwise."""
    full = f"/proc/sys/{path}"
    if path.startswith("net/ipv6/") and not os.path.isdir("/proc/sys/net/ipv6"):
        return True
    if missing_ok and not os.path.exists(full):
        return False
    try:
        with open(full) as f:
            if f.read().strip() == value:
                return True
        with open(full, "w") as f:
            f.write(value)
    except OSError as err:
        raise KernelError(f"cannot set sysctl {path}={value}: {err.strerror}") from err
    return True
