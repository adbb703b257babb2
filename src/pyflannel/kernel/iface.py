"""Choosing the external interface and public IP, as flannel's LookupExtIface (docs/compatibility.md#interface).

Order: each --iface (a name or an IP), then each --iface-regex (against addresses first, then
names), then --iface-can-reach; with none of them, the interface owning --public-ip, else the
default route's interface. The address is the first usable IPv4 address, global before
link-local, permanent before dynamic, non-temporary before temporary. With IPv6 enabled, the same
interface's first global IPv6 address (or -public-ipv6) is added; unlike Go flannel (its issue
2081), -iface, -iface-regex and -iface-can-reach also take IPv6 addresses.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from typing import Any, Literal, overload

from ..core.errors import LocalConfigError
from ..core.host import ExternalInterface
from ..core.lease import public_ip_problem
from . import netlink
from .netlink import IFA_F_DEPRECATED, IFA_F_PERMANENT, IFA_F_TEMPORARY, Addr, Link

__all__ = ["ExternalInterface", "select_external_interface"]

_Found = tuple[Link, Any]  # the link and its address of the family asked for
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _usable(a: Addr) -> bool:
    ip = a.address.ip
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified or a.flags & IFA_F_DEPRECATED)


def _rank(a: Addr) -> tuple[int, int, int]:
    ip = a.address.ip
    return (int(ip.is_link_local), int(not a.flags & IFA_F_PERMANENT), int(bool(a.flags & IFA_F_TEMPORARY)))


def _first_addr(link: Link, addrs: list[Addr], version: int = 4) -> Any:
    mine = sorted((a for a in addrs if a.index == link.index and a.address.version == version and _usable(a)),
                  key=_rank)
    return mine[0].address.ip if mine else None


def _by_ip(ip: _IP, links: list[Link], addrs: list[Addr], version: int = 4) -> _Found | None:
    for a in addrs:
        if a.address.ip == ip:
            link = next((lk for lk in links if lk.index == a.index), None)
            if link is None:
                continue
            if ip.version != version:  # an address of the other family names the interface
                other = _first_addr(link, addrs, version)
                if other is None:
                    raise LocalConfigError(f"interface {link.name} (which has {ip}) has no usable IPv{version} "
                                           f"address: {_fix(link.name, version)}")
                return link, other
            return link, ip
    return None


def _fix(name: str, version: int) -> str:
    if version == 6:
        return (f"give it a global one (ip -6 addr add ADDR/64 dev {name}), or pick another --iface "
                "(this network is IPv6-only: EnableIPv4 false)")
    return "give it one, or pick another --iface"


def _by_name(name: str, links: list[Link], addrs: list[Addr], version: int = 4) -> _Found | None:
    link = next((lk for lk in links if lk.name == name), None)
    if link is None:
        return None
    ip = _first_addr(link, addrs, version)
    if ip is None:
        raise LocalConfigError(f"interface {name} has no usable IPv{version} address: {_fix(name, version)}")
    return link, ip


def _by_regex(pattern: str, links: list[Link], addrs: list[Addr], version: int = 4) -> _Found | None:
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise LocalConfigError(f"bad --iface-regex {pattern!r}: {err}") from err
    for a in addrs:
        if _usable(a) and rx.search(str(a.address.ip)):
            found = _by_ip(a.address.ip, links, addrs, version)
            if found:
                return found
    for link in links:
        if rx.search(link.name):
            ip = _first_addr(link, addrs, version)
            if ip is not None:
                return link, ip
    return None


def _explicit(ifaces: list[str], regexes: list[str], can_reach: str, links: list[Link], addrs: list[Addr],
              version: int = 4) -> _Found:
    for spec in ifaces:
        try:
            found = _by_ip(ipaddress.ip_address(spec), links, addrs, version)
        except ValueError:
            found = _by_name(spec, links, addrs, version)
        if found:
            return found
    for pattern in regexes:
        found = _by_regex(pattern, links, addrs, version)
        if found:
            return found
    if can_reach:
        try:
            oif, src = netlink.route_get(ipaddress.ip_address(can_reach))
        except ValueError as err:
            raise LocalConfigError(f"bad --iface-can-reach {can_reach!r}: not an IP address") from err
        except netlink.KernelError as err:
            raise LocalConfigError(f"--iface-can-reach {can_reach}: no route to it ({err})") from err
        link = next((lk for lk in links if lk.index == oif), None)
        if link is not None:
            ip = src if src is not None and src.version == version else _first_addr(link, addrs, version)
            if ip is not None:
                return link, ip
    names = ", ".join(lk.name for lk in links)
    raise LocalConfigError(
        "Failed to find interface to use that matches the interfaces and/or regexes provided "
        f"(--iface={ifaces or '-'} --iface-regex={regexes or '-'} --iface-can-reach={can_reach or '-'}; "
        f"this host has: {names})"
    )


def select_external_interface(
    ifaces: list[str], regexes: list[str], can_reach: str = "", public_ip: str = "", public_ipv6: str = "",
    ipv6: bool = False, ipv4: bool = True,
) -> ExternalInterface:
    """The external interface; with ``ipv6`` (EnableIPv6) also its IPv6 address and PublicIPv6.
    Without ``ipv4`` (an IPv6-only network) it is chosen by its IPv6 addresses alone, and its IPv4
    address and PublicIP are 0.0.0.0 (Go's lease then says ``"PublicIP":"0.0.0.0"``)."""
    links, addrs = netlink.links(), netlink.ipv4_addrs() + netlink.ipv6_addrs()
    if not ipv4:
        return _select_v6(ifaces, regexes, can_reach, public_ip, public_ipv6, links, addrs)
    ext = _select_v4(ifaces, regexes, can_reach, public_ip, links, addrs)
    if not ipv6:
        return ext
    link = next(lk for lk in links if lk.index == ext.index)
    return replace(ext, **_v6_addrs(link, addrs, public_ipv6))


def _v6_addrs(link: Link, addrs: list[Addr], public_ipv6: str) -> dict[str, Any]:
    pub6 = _parse_public(public_ipv6, 6, "--public-ipv6")
    ip6 = _first_addr(link, [a for a in addrs if not a.address.ip.is_link_local], 6)
    if ip6 is None and pub6 is None:
        raise LocalConfigError(
            f"IPv6 is enabled (EnableIPv6 in the network config) but interface {link.name} has no global IPv6 "
            f"address: give it one (ip -6 addr add ADDR/64 dev {link.name}), pick another --iface, or set "
            "EnableIPv6 to false")
    problem = public_ip_problem(pub6 or ip6)
    if problem is not None:
        raise LocalConfigError(f"cannot use {pub6 or ip6} as this host's PublicIPv6: {problem}; give --public-ipv6 "
                               "an address the other hosts reach this one on")
    return {"iface_v6_addr": ip6 or pub6, "ext_v6_addr": pub6 or ip6}


@overload
def _parse_public(value: str, version: Literal[4], flag: str) -> ipaddress.IPv4Address | None: ...


@overload
def _parse_public(value: str, version: Literal[6], flag: str) -> ipaddress.IPv6Address | None: ...


def _parse_public(value: str, version: int, flag: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``value`` of ``flag`` (--public-ip, --public-ipv6) as an IPv``version`` address; None when not given."""
    if not value:
        return None
    try:
        return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    except ValueError as err:
        raise LocalConfigError(f"bad {flag} {value!r}: not an IPv{version} address") from err


def _select_v6(ifaces: list[str], regexes: list[str], can_reach: str, public_ip: str, public_ipv6: str,
               links: list[Link], addrs: list[Addr]) -> ExternalInterface:
    """An IPv6-only network's interface: as ``_select_v4``, by global IPv6 addresses."""
    if public_ip:
        raise LocalConfigError(f"--public-ip {public_ip}: this network is IPv6-only (EnableIPv4 false), so a host "
                               "publishes no IPv4 address; give --public-ipv6 instead")
    addrs = [a for a in addrs if not (a.address.version == 6 and a.address.ip.is_link_local)]
    pub6 = _parse_public(public_ipv6, 6, "--public-ipv6")
    if ifaces or regexes or can_reach:
        link, ip6 = _explicit(ifaces, regexes, can_reach, links, addrs, 6)
    elif pub6 is not None:
        found = _by_ip(pub6, links, addrs, 6)
        if found is None:
            raise LocalConfigError(f"--public-ipv6 {pub6} is not an address of any interface of this host: behind "
                                   "NAT, also give --iface to name the interface to use")
        link, ip6 = found
    else:
        oif = netlink.default_route_oif(6)
        found_link = next((lk for lk in links if lk.index == oif), None)
        if found_link is None:
            raise LocalConfigError("no IPv6 default route to pick the external interface from (this network is "
                                   "IPv6-only: EnableIPv4 false): give --iface=NAME")
        link, ip6 = found_link, _first_addr(found_link, addrs, 6)
        if ip6 is None:
            raise LocalConfigError(f"interface {link.name} has no usable IPv6 address: {_fix(link.name, 6)}")
    if link.mtu <= 0:
        raise LocalConfigError(f"failed to determine MTU for {link.name} interface")
    problem = public_ip_problem(pub6 or ip6)
    if problem is not None:
        raise LocalConfigError(f"cannot use {pub6 or ip6} as this host's PublicIPv6: {problem}; give --public-ipv6 "
                               "an address the other hosts reach this one on")
    none = ipaddress.IPv4Address(0)
    return ExternalInterface(link.name, link.index, link.mtu, none, none, ip6, pub6 or ip6)


def _select_v4(ifaces: list[str], regexes: list[str], can_reach: str, public_ip: str, links: list[Link],
               addrs: list[Addr]) -> ExternalInterface:
    pub = _parse_public(public_ip, 4, "--public-ip")
    if ifaces or regexes or can_reach:
        link, ip = _explicit(ifaces, regexes, can_reach, links, addrs)
    elif pub is not None:
        found = _by_ip(pub, links, addrs)
        if found is None:
            raise LocalConfigError(
                f"--public-ip {pub} is not an address of any interface of this host: behind NAT, "
                "also give --iface to name the interface to use"
            )
        link, ip = found
    else:
        oif = netlink.default_route_oif()
        link_or_none = next((lk for lk in links if lk.index == oif), None)
        if link_or_none is None:
            raise LocalConfigError("no default route to pick the external interface from: give --iface=NAME")
        link = link_or_none
        got = _first_addr(link, addrs)
        if got is None:
            raise LocalConfigError(f"default route interface {link.name} has no IPv4 address: give --iface")
        ip = got
    if link.mtu <= 0:
        raise LocalConfigError(f"failed to determine MTU for {link.name} interface")
    problem = public_ip_problem(pub or ip)
    if problem is not None:
        how = "--public-ip" if pub is not None else f"the address of {link.name}"
        raise LocalConfigError(f"cannot use {how} as this host's public IP: {problem}; give --public-ip "
                               "an address the other hosts reach this one on (or --iface another interface)")
    return ExternalInterface(link.name, link.index, link.mtu, ip, pub or ip)
