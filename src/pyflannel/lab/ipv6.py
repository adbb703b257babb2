"""The lab's IPv6 half (``flannelctl lab up --ipv6 dual|only``): an IPv6 underlay beside the IPv4
one, from the 2001:db8::/32 documentation space and only inside the lab's namespaces, a dual-stack
(``dual``) or IPv6-only (``only``: EnableIPv4 false) network config, and each container's IPv6
address from its host's FLANNEL_IPV6_SUBNET.

    NAME-ul    br0 also has 2001:db8::1/64
    NAME-hI    eth0 also has 2001:db8::(10+I)/64 (hex digits), IPv6 forwarding on; with ``only``
               also an IPv6 default route via 2001:db8::1 (flanneld picks its interface by it)
    NAME-cI    eth0 also has the host's IPv6 subnet ::2, default route via docker0's ::1; with
               ``only`` no IPv4 address at all (subnet.env names no IPv4 subnet)

With ``only`` the IPv4 underlay still carries etcd (the control plane); flannel's data path, the
leases and every route are IPv6.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from ..core.subnetenv import parse_subnet_env
from .netns import in_ns, sh, sysctl

UNDERLAY6 = ipaddress.IPv6Network("2001:db8::/64")
GATEWAY6 = "2001:db8::1"
NETWORK6 = "2001:db8:42::/56"  # the overlay's IPv6Network
MODES = ("dual", "only")


def host_ip6(index: int) -> str:
    return str(UNDERLAY6.network_address + 0x10 + index)


def config(base: dict[str, Any], mode: str = "dual") -> dict[str, Any]:
    """The dual-stack network config: ``base`` with EnableIPv6 and IPv6Network; IPv6-only
    (``mode`` "only"): EnableIPv4 false and no Network."""
    if mode == "only":
        return {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": NETWORK6,
                **{k: v for k, v in base.items() if k not in ("Network", "SubnetMax", "SubnetLen", "SubnetMin")}}
    return {**base, "EnableIPv6": True, "IPv6Network": NETWORK6}


def underlay(ns: str) -> None:
    sh(["ip", "-n", ns, "-6", "addr", "add", f"{GATEWAY6}/{UNDERLAY6.prefixlen}", "dev", "br0", "nodad"])


def attach(ns: str, index: int, mode: str = "dual") -> None:
    """Host ``index``'s IPv6 underlay address and forwarding (its eth0 is already plugged in);
    IPv6-only: also the IPv6 default route."""
    sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
    sh(["ip", "-n", ns, "-6", "addr", "add", f"{host_ip6(index)}/{UNDERLAY6.prefixlen}", "dev", "eth0", "nodad"])
    if mode == "only":
        sh(["ip", "-n", ns, "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"])


def subnet6(subnet_file: str) -> ipaddress.IPv6Interface | None:
    """FLANNEL_IPV6_SUBNET of a host's subnet.env (the first address of its IPv6 subnet)."""
    with open(subnet_file) as f:
        value = parse_subnet_env(f.read(), source=subnet_file).get("FLANNEL_IPV6_SUBNET")
    return ipaddress.IPv6Interface(value) if value else None


def docker(host_ns: str, container_ns: str, subnet_file: str) -> str:
    """docker0's and the container's IPv6 addresses (docker's --ipv6 --fixed-cidr-v6 from
    FLANNEL_IPV6_SUBNET); the container's address, or "" without an IPv6 subnet."""
    gw = subnet6(subnet_file)
    if gw is None:
        return ""
    plen = gw.network.prefixlen
    sh(["ip", "-n", host_ns, "-6", "addr", "add", str(gw), "dev", "docker0", "nodad"])
    ip6 = str(gw.ip + 1)
    sh(["ip", "-n", container_ns, "-6", "addr", "add", f"{ip6}/{plen}", "dev", "eth0", "nodad"])
    sh(["ip", "-n", container_ns, "-6", "route", "add", "default", "via", str(gw.ip)])
    return ip6


def ping6(container_ns: str, dst: str, count: int = 3, timeout: float = 2.0) -> tuple[bool, str]:
    res = sh(in_ns(container_ns, "ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", str(timeout), dst),
             check=False, timeout=count * (timeout + 1) + 5)
    return res.returncode == 0, res.stdout + res.stderr


def default_config(base: str, mode: str = "dual") -> str:
    return json.dumps(config(json.loads(base), mode))
