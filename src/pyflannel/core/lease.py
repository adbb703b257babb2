"""Leases as flannel stores them: the subnet key codec and the lease JSON, byte for byte.

A Go flannel node and a pyflannel node must read each other's keys, so the renderers here emit
exactly what Go's ``json.Marshal(LeaseAttrs)`` emits (field order PublicIP, PublicIPv6, BackendType,
BackendData, BackendV6Data; compact RawMessage) and the parsers accept what Go's decoder accepts
(case-insensitive keys). Parsers raise ``StoreDataError``: a bad key or value is someone else's
garbage, to be skipped, never a reason to forget the other peers.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import gojson
from .errors import StoreDataError

# flannel's regex (pkg/subnet/subnet.go), unanchored at the start so it matches a full key's tail.
_SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z", re.ASCII)


def render_subnet_key(subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None = None) -> str:
    """``10.0.53.0/24`` -> ``10.0.53.0-24`` (dual stack: ``10.0.53.0-24&fd00:1::-64``)."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address.compressed}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """Parse a subnet key (or the tail of a full etcd key) as flannel's ParseSubnetKey does."""
    m = _SUBNET_KEY_RE.search(key)
    if m is None:
        raise StoreDataError(f"not a subnet key: {key!r} (expected A.B.C.D-LEN, e.g. 10.0.53.0-24)")
    try:
        plen = int(m.group(2))
        if plen > 31:
            raise ValueError(f"prefix length {plen} > 31")
        subnet = ipaddress.IPv4Network(f"{m.group(1)}/{plen}")
        v6 = None
        if m.group(3) is not None:
            plen6 = int(m.group(4))
            if plen6 > 127:
                raise ValueError(f"IPv6 prefix length {plen6} > 127")
            v6 = ipaddress.IPv6Network(f"{m.group(3)}/{plen6}")
    except ValueError as err:
        raise StoreDataError(f"bad subnet key {key!r}: {err}") from err
    return subnet, v6


SubnetId = ipaddress.IPv4Network | ipaddress.IPv6Network


def subnet_id(subnet: ipaddress.IPv4Network, ipv6_subnet: ipaddress.IPv6Network | None) -> SubnetId:
    """What names a lease among its network's leases: its IPv4 subnet; for an IPv6-only lease,
    whose key's IPv4 half is Go's ``0.0.0.0-0`` on every host, its IPv6 subnet."""
    if subnet.prefixlen == 0 and ipv6_subnet is not None:
        return ipv6_subnet
    return subnet


@dataclass(frozen=True)
class LeaseAttrs:
    """The JSON value stored at ``<prefix>/subnets/<key>``."""

    public_ip: ipaddress.IPv4Address
    public_ipv6: ipaddress.IPv6Address | None = None
    backend_type: str = ""
    backend_data: Any = None  # decoded JSON (dict) or None when absent
    backend_v6_data: Any = None
    ipv6_problem: str = field(default="", compare=False)  # a peer's PublicIPv6 that did not parse (v4 kept)


@dataclass(frozen=True)
class Lease:
    """A subnet leased to one host, as seen in the store."""

    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    ipv6_subnet: ipaddress.IPv6Network | None = None
    lease_id: int = 0  # etcd lease id; 0 = a reservation (a key without a TTL)
    mod_revision: int = 0
    expiration: float | None = field(default=None, compare=False)  # unix time; None = unknown/never
    # etcd's create revision of the key (0: not known): which of two keys for one subnet came first
    create_revision: int = field(default=0, compare=False)

    @property
    def key(self) -> str:
        return render_subnet_key(self.subnet, self.ipv6_subnet)

    @property
    def ident(self) -> SubnetId:
        """The subnet that names this lease (``subnet_id``): the peer table's key."""
        return subnet_id(self.subnet, self.ipv6_subnet)

    @property
    def is_reservation(self) -> bool:
        return self.lease_id == 0


def render_lease_attrs(attrs: LeaseAttrs) -> bytes:
    """Exactly Go's ``json.Marshal(LeaseAttrs)``: e.g. ``{"PublicIP":"1.2.3.4","PublicIPv6":null}``.
    Raises ``StoreDataError`` for a public IP no host can have: such a lease is never written."""
    check_public_ips(attrs.public_ip, attrs.public_ipv6)
    parts = [f'"PublicIP":{json.dumps(str(attrs.public_ip))}']
    parts.append('"PublicIPv6":' + (json.dumps(attrs.public_ipv6.compressed) if attrs.public_ipv6 else "null"))
    if attrs.backend_type:
        parts.append(f'"BackendType":{json.dumps(attrs.backend_type)}')
    if attrs.backend_data is not None:
        parts.append('"BackendData":' + json.dumps(attrs.backend_data, separators=(",", ":")))
    if attrs.backend_v6_data is not None:
        parts.append('"BackendV6Data":' + json.dumps(attrs.backend_v6_data, separators=(",", ":")))
    return ("{" + ",".join(parts) + "}").encode()


def public_ip_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` cannot be a host's public (underlay) address, or None. Such a lease would point
    routes, FDB entries or tunnels at nothing (0.0.0.0), at a group (224.0.0.1), at every host or
    at the peer itself, so it is never read, written or programmed."""
    if ip.is_unspecified:
        return f"{ip} is unspecified (a missing or empty PublicIP)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    return None


def check_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, what: str = "PublicIP") -> None:
    """Raise ``StoreDataError`` when ``ip`` cannot be a host's public address."""
    problem = public_ip_problem(ip)
    if problem is not None:
        raise StoreDataError(f"lease {what} {problem}: no host can be reached there")


def check_public_ips(ip: ipaddress.IPv4Address, ipv6: ipaddress.IPv6Address | None) -> None:
    """A lease's addresses: PublicIP may be unset (0.0.0.0, as Go writes it) only on an IPv6-only
    host, whose PublicIPv6 then says where it is."""
    if ipv6 is not None:
        check_public_ip(ipv6, "PublicIPv6")
        if ip.is_unspecified:
            return
    check_public_ip(ip)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _ip_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise StoreDataError(f"lease {what} must be a string, got {value!r}")
    if "%" in value:
        raise StoreDataError(f"lease {what} must not carry a zone: {value!r}")
    return value


def parse_lease_attrs(data: bytes | str) -> LeaseAttrs:
    """Decode a lease value; raises ``StoreDataError`` naming what is wrong."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise StoreDataError(f"lease value is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise StoreDataError(f"lease value is not a JSON object: {type(obj).__name__}")
    try:
        pip = gojson.lookup(obj, "PublicIP")
        public_ip = ipaddress.IPv4Address(_ip_text(pip, "PublicIP")) if pip is not None else ipaddress.IPv4Address(0)
    except (ValueError, TypeError) as err:
        raise StoreDataError(f"lease value has a bad public IP: {err}") from err
    public_ipv6, problem6 = _public_ipv6(gojson.lookup(obj, "PublicIPv6"), public_ip)
    check_public_ips(public_ip, public_ipv6)
    btype = gojson.lookup(obj, "BackendType")
    if btype is None:
        btype = ""
    if not isinstance(btype, str):
        raise StoreDataError(f"lease BackendType is not a string: {btype!r}")
    return LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=btype,
        backend_data=gojson.lookup(obj, "BackendData"),
        backend_v6_data=gojson.lookup(obj, "BackendV6Data"),
        ipv6_problem=problem6,
    )


def _public_ipv6(value: Any, public_ip: ipaddress.IPv4Address) -> tuple[ipaddress.IPv6Address | None, str]:
    """PublicIPv6, or (None, why) when it is malformed and the lease still has an IPv4 PublicIP:
    the IPv4 half of a dual-stack peer stays usable (an IPv6-only lease with a bad one is bad)."""
    if value is None:
        return None, ""
    try:
        ip6 = ipaddress.IPv6Address(_ip_text(value, "PublicIPv6"))
        if public_ip.is_unspecified:
            return ip6, ""
        check_public_ip(ip6, "PublicIPv6")
        return ip6, ""
    except (ValueError, TypeError, StoreDataError) as err:
        if public_ip.is_unspecified:
            raise StoreDataError(f"lease value has a bad PublicIPv6: {err}") from err
        return None, f"its PublicIPv6 {value!r} is unusable ({err})"
