"""Kubernetes mode, pure: Node objects (decoded JSON) <-> leases, as Go flannel's kube subnet
manager reads and writes them (pkg/subnet/kube; docs/compatibility.md#kubernetes-mode).

A node is a flannel node when its ``<prefix>kube-subnet-manager`` annotation is ``"true"``; its
lease is its podCIDRs (``spec.podCIDRs``, else ``spec.podCIDR``: one IPv4 and/or one IPv6 CIDR)
with the public IPs, backend type and backend data from its annotations, per family as the network
config enables them (``Families``):

- IPv4 (``public-ip``, ``backend-data``) as in an IPv4-only network;
- dual stack: also ``public-ipv6``, ``backend-v6-data`` and the IPv6 podCIDR. An IPv6 part that is
  missing or malformed keeps the IPv4 part (``LeaseAttrs.ipv6_problem`` says why; the watcher warns
  once), where Go flannel skips the whole node;
- IPv6-only (EnableIPv4 false): the IPv6 part alone, keyed as Go keys such a lease (IPv4 subnet
  0.0.0.0/0, PublicIP 0.0.0.0).

Garbage in another node's annotations raises ``StoreDataError``: that node is skipped, the others
kept.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from .allocate import NO_IPV4
from .errors import ConfigError, StoreDataError
from .lease import Lease, LeaseAttrs, check_public_ip

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?\Z")


def annotation_prefix(prefix: str) -> str:
    """``-kube-annotation-prefix`` as Go normalises it: no ``/``: one is appended; one ``/`` not
    at the end: a ``-`` is appended. Raises ConfigError for anything Go refuses."""
    if prefix.count("/") > 1:
        raise ConfigError(f"-kube-annotation-prefix {prefix!r} has more than one '/': use e.g. "
                          f"{DEFAULT_PREFIX} or example.com/flannel")
    if "/" not in prefix:
        prefix += "/"
    elif not prefix.endswith(("/", "-")):
        prefix += "-"
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(f"-kube-annotation-prefix {prefix!r} is not a valid annotation prefix: use a DNS name "
                          f"of lower-case letters, digits, '-' and '_' (e.g. {DEFAULT_PREFIX})")
    return prefix


def node_name(node: dict[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


def annotations(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


@dataclass(frozen=True)
class Families:
    """Which halves of a node's lease the network config asks for (EnableIPv4, EnableIPv6)."""

    ipv4: bool = True
    ipv6: bool = False


PodCidrs = tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]


def pod_cidr_list(node: dict[str, Any]) -> list[str]:
    """``spec.podCIDRs``, else ``[spec.podCIDR]`` (as Go reads them); [] when unassigned."""
    spec = node.get("spec") or {}
    return [str(c) for c in spec.get("podCIDRs") or []] or ([str(spec["podCIDR"])] if spec.get("podCIDR") else [])


def pod_cidrs(node: dict[str, Any]) -> PodCidrs:
    """The node's IPv4 and IPv6 podCIDRs (None for a family it has none of). Raises StoreDataError
    for one that does not parse, or more than two (Go: IPv4/IPv6 only or dual stack)."""
    cidrs = pod_cidr_list(node)
    if len(cidrs) > 2:
        raise StoreDataError(f"its podCIDRs {cidrs} are more than two: they should be IPv4, IPv6 or one of each")
    v4: ipaddress.IPv4Network | None = None
    v6: ipaddress.IPv6Network | None = None
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as err:
            raise StoreDataError(f"its podCIDR {text!r} is not a CIDR") from err
        if isinstance(net, ipaddress.IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def pod_cidr(node: dict[str, Any]) -> ipaddress.IPv4Network | None:
    """The node's IPv4 podCIDR; None if unassigned. Raises StoreDataError as ``pod_cidrs``."""
    return pod_cidrs(node)[0]


def is_flannel_node(node: dict[str, Any], prefix: str) -> bool:
    return annotations(node).get(prefix + "kube-subnet-manager") == "true"


def node_to_lease(node: dict[str, Any], prefix: str, families: Families = Families()) -> Lease | None:
    """The lease a flannel node publishes; None for a node that is not (yet) a flannel node or has
    no podCIDR. Raises StoreDataError naming what is wrong with its annotations or podCIDRs."""
    ann = annotations(node)
    if ann.get(prefix + "kube-subnet-manager") != "true":
        return None
    v4, v6 = pod_cidrs(node)
    if v4 is None and v6 is None:
        return None
    if not families.ipv4:
        return _ipv6_only_lease(node, ann, prefix, v6)
    if v4 is None:
        raise StoreDataError(f"its podCIDRs {pod_cidr_list(node)} have no IPv4 CIDR, which this network needs")
    text = ann.get(prefix + "public-ip", "")
    try:
        public_ip = ipaddress.IPv4Address(text)
    except ValueError as err:
        raise StoreDataError(f"its annotation {prefix}public-ip {text!r} is not an IPv4 address") from err
    check_public_ip(public_ip)
    data = _json(ann, prefix + "backend-data")
    attrs = LeaseAttrs(public_ip, None, ann.get(prefix + "backend-type", ""), data)
    if not families.ipv6:
        return Lease(v4, attrs)
    try:
        public_ipv6, data6 = _ipv6_part(node, ann, prefix, v6)
    except StoreDataError as err:  # the IPv4 part stays usable: screen warns once and drops this half
        return Lease(v4, LeaseAttrs(public_ip, None, attrs.backend_type, data,
                                    ipv6_problem=f"node {node_name(node)}: {err}"), v6)
    return Lease(v4, LeaseAttrs(public_ip, public_ipv6, attrs.backend_type, data, data6), v6)


def _json(ann: dict[str, str], key: str) -> Any:
    raw = ann.get(key, "null")
    try:
        return json.loads(raw)
    except ValueError as err:
        raise StoreDataError(f"its annotation {key} {raw[:60]!r} is not JSON") from err


def _ipv6_part(node: dict[str, Any], ann: dict[str, str], prefix: str,
               v6: ipaddress.IPv6Network | None) -> tuple[ipaddress.IPv6Address, Any]:
    """The node's PublicIPv6 and BackendV6Data; StoreDataError naming what is missing or wrong."""
    if v6 is None:
        raise StoreDataError(f"its podCIDRs {pod_cidr_list(node)} have no IPv6 CIDR")
    key = prefix + "public-ipv6"
    if key not in ann:
        raise StoreDataError(f"it has no annotation {key}")
    text = ann[key]
    try:
        if "%" in text:
            raise ValueError("a zone")
        public_ipv6 = ipaddress.IPv6Address(text)
    except ValueError as err:
        raise StoreDataError(f"its annotation {key} {text[:60]!r} is not an IPv6 address") from err
    check_public_ip(public_ipv6, "PublicIPv6")
    return public_ipv6, _json(ann, prefix + "backend-v6-data")


def _ipv6_only_lease(node: dict[str, Any], ann: dict[str, str], prefix: str,
                     v6: ipaddress.IPv6Network | None) -> Lease:
    """An IPv6-only network's lease of a node: Go's 0.0.0.0-0 IPv4 half, PublicIP 0.0.0.0."""
    if v6 is None:
        raise StoreDataError(f"its podCIDRs {pod_cidr_list(node)} have no IPv6 CIDR, which this IPv6-only "
                             "network needs")
    public_ipv6, data6 = _ipv6_part(node, ann, prefix, v6)
    attrs = LeaseAttrs(ipaddress.IPv4Address(0), public_ipv6, ann.get(prefix + "backend-type", ""), None, data6)
    return Lease(NO_IPV4, attrs, v6)


def _raw(data: Any) -> str:
    return "null" if data is None else json.dumps(data, separators=(",", ":"))


def lease_annotations(attrs: LeaseAttrs, prefix: str) -> dict[str, str]:
    """The annotations Go flannel's AcquireLease writes for ``attrs``, byte for byte: the IPv4 pair
    (``backend-data``, ``public-ip``) unless vxlan without BackendData (IPv6-only); the IPv6 pair
    (``backend-v6-data``, ``public-ipv6``) for vxlan with BackendV6Data, wireguard with it and a
    PublicIPv6, host-gw and extension with a PublicIPv6."""
    kind, data, data6 = attrs.backend_type, _raw(attrs.backend_data), _raw(attrs.backend_v6_data)
    out = {prefix + "kube-subnet-manager": "true", prefix + "backend-type": kind}
    if kind != "vxlan" or data != "null":
        out[prefix + "backend-data"] = data
        out[prefix + "public-ip"] = str(attrs.public_ip)
    has6 = attrs.public_ipv6 is not None
    if (kind == "vxlan" and data6 != "null") or (kind == "wireguard" and data6 != "null" and has6) or \
            (kind in ("host-gw", "extension") and has6):
        out[prefix + "backend-v6-data"] = data6
        out[prefix + "public-ipv6"] = attrs.public_ipv6.compressed if attrs.public_ipv6 is not None else ""
    return out


def stored_mac(node: dict[str, Any], prefix: str, *, v6: bool = False) -> str:
    """The VTEP MAC our previous run published in ``<prefix>backend-data`` (``backend-v6-data``
    with ``v6``; "" if none)."""
    try:
        data = json.loads(annotations(node).get(prefix + ("backend-v6-data" if v6 else "backend-data"), "null"))
    except ValueError:
        return ""
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return mac if isinstance(mac, str) and re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac) else ""


def public_ip_overwrite(node: dict[str, Any], prefix: str) -> ipaddress.IPv4Address | None:
    text = annotations(node).get(prefix + "public-ip-overwrite", "")
    try:
        return ipaddress.IPv4Address(text) if text else None
    except ValueError:
        return None


def public_ipv6_overwrite(node: dict[str, Any], prefix: str) -> ipaddress.IPv6Address | None:
    text = annotations(node).get(prefix + "public-ipv6-overwrite", "")
    try:
        return ipaddress.IPv6Address(text) if text and "%" not in text else None
    except ValueError:
        return None


def network_ready_condition(now: str) -> dict[str, Any]:
    """The NetworkUnavailable=False condition Go flannel sets (its reason and message)."""
    return {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
            "message": "Flannel is running on this node", "lastTransitionTime": now, "lastHeartbeatTime": now}
