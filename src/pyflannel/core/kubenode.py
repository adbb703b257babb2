"""Kubernetes mode, pure: Node objects (decoded JSON) <-> leases, as Go flannel's kube subnet
manager reads and writes them (pkg/subnet/kube; docs/compatibility.md#kubernetes-mode).

A node is a flannel node when its ``<prefix>kube-subnet-manager`` annotation is ``"true"``; its
lease is its ``spec.podCIDR`` (IPv4 entry of ``spec.podCIDRs``) with the public IP, backend type
and backend data from its annotations. Garbage in another node's annotations raises
``StoreDataError``: that node is skipped, the others kept.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

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


def pod_cidr(node: dict[str, Any]) -> ipaddress.IPv4Network | None:
    """The node's IPv4 podCIDR (``spec.podCIDRs`` first, then ``spec.podCIDR``); None if unassigned.
    Raises StoreDataError for one that does not parse."""
    spec = node.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or []) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for text in cidrs:
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError as err:
            raise StoreDataError(f"its podCIDR {text!r} is not a CIDR") from err
        if isinstance(net, ipaddress.IPv4Network):
            return net
    return None


def is_flannel_node(node: dict[str, Any], prefix: str) -> bool:
    return annotations(node).get(prefix + "kube-subnet-manager") == "true"


def node_to_lease(node: dict[str, Any], prefix: str) -> Lease | None:
    """The lease a flannel node publishes; None for a node that is not (yet) a flannel node or has
    no podCIDR. Raises StoreDataError naming what is wrong with its annotations."""
    ann = annotations(node)
    if ann.get(prefix + "kube-subnet-manager") != "true":
        return None
    subnet = pod_cidr(node)
    if subnet is None:
        return None
    text = ann.get(prefix + "public-ip", "")
    try:
        public_ip = ipaddress.IPv4Address(text)
    except ValueError as err:
        raise StoreDataError(f"its annotation {prefix}public-ip {text!r} is not an IPv4 address") from err
    check_public_ip(public_ip)
    raw = ann.get(prefix + "backend-data", "null")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise StoreDataError(f"its annotation {prefix}backend-data {raw[:60]!r} is not JSON") from err
    return Lease(subnet, LeaseAttrs(public_ip, None, ann.get(prefix + "backend-type", ""), data))


def lease_annotations(attrs: LeaseAttrs, prefix: str) -> dict[str, str]:
    """The annotations Go flannel writes for ``attrs`` (IPv4), byte for byte."""
    data = "null" if attrs.backend_data is None else json.dumps(attrs.backend_data, separators=(",", ":"))
    return {
        prefix + "kube-subnet-manager": "true",
        prefix + "backend-type": attrs.backend_type,
        prefix + "backend-data": data,
        prefix + "public-ip": str(attrs.public_ip),
    }


def stored_mac(node: dict[str, Any], prefix: str) -> str:
    """The VTEP MAC our previous run published in ``<prefix>backend-data`` ("" if none)."""
    try:
        data = json.loads(annotations(node).get(prefix + "backend-data", "null"))
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


def network_ready_condition(now: str) -> dict[str, Any]:
    """The NetworkUnavailable=False condition Go flannel sets (its reason and message)."""
    return {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
            "message": "Flannel is running on this node", "lastTransitionTime": now, "lastHeartbeatTime": now}
