"""``flannelctl trace SRC DST``'s judgement, pure: the leases, the network config and what this
host's kernel does with DST go in; the hops of the path come out (owning hosts and leases, the
route, on vxlan the neighbour and FDB entries, the encapsulation with its outer addresses, the
underlay route), each ok or wrong, the first wrong one with its fix. The reading is in
``cli/ctl_trace.py``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from .config import NetworkConfig
from .errors import FlannelError
from .lease import Lease

IP = ipaddress.IPv4Address
REPAIR = "flanneld puts it right within seconds: is it running? (journalctl -u flanneld; restart it)"


@dataclass(frozen=True)
class Hop:
    what: str
    text: str
    ok: bool = True
    fix: str = ""


@dataclass(frozen=True)
class KernelView:
    """What this host's kernel does: ``ip route get DST`` (device, gateway), the neighbour entry
    of that gateway on that device, the FDB destinations of that MAC, and ``ip route get`` of the
    peer's public IP (the underlay device)."""
    route_dev: str | None
    route_gw: IP | None = None
    neigh_mac: str | None = None
    fdb_dsts: tuple[IP, ...] = ()
    underlay_dev: str | None = None


def owner(leases: Sequence[Lease], addr: IP) -> Lease | None:
    return next((le for le in leases if addr in le.subnet), None)


def check_addresses(network: ipaddress.IPv4Network, src: IP, dst: IP) -> None:
    for name, addr in (("SRC", src), ("DST", dst)):
        if addr not in network:
            raise FlannelError(f"{name} {addr} is outside the flannel network {network}: trace follows container "
                               f"addresses inside it (e.g. a container's IP from `docker inspect`)")


def ends(leases: Sequence[Lease], local: set[IP], src: IP, dst: IP) -> tuple[list[Hop], Lease | None, Lease | None]:
    """The owning lease of each end; a missing one is the first wrong hop."""
    hops, found = [], []
    for what, addr in (("source", src), ("destination", dst)):
        le = owner(leases, addr)
        found.append(le)
        if le is None:
            hops.append(Hop(what, f"{addr}: no lease holds its subnet: no host owns it", False,
                            "flannelctl leases list; is flanneld running on that container's host?"))
            continue
        here = " (this host)" if le.attrs.public_ip in local else ""
        kind = "reservation" if le.is_reservation else f"{le.attrs.backend_type} lease"
        hops.append(Hop(what, f"{addr} in {le.subnet}, {kind} of {le.attrs.public_ip}{here}"))
    return hops, found[0], found[1]


def device(config: NetworkConfig) -> str | None:
    return {"udp": "flannel0", "vxlan": f"flannel.{config.backend_option('VNI', 1)}",
            "wireguard": "flannel-wg"}.get(config.backend_type)


def _route(config: NetworkConfig, peer: Lease, k: KernelView) -> Hop:
    dev = device(config)
    if config.backend_type == "host-gw" or (config.backend_type == "vxlan" and config.backend_option(
            "DirectRouting", False) and k.route_gw == peer.attrs.public_ip):
        want_gw: IP | None = peer.attrs.public_ip
        want = f"via {want_gw} (the peer's public IP, on the underlay)"
        good = k.route_gw == want_gw and (dev is None or k.route_dev != dev)
    elif config.backend_type == "vxlan":
        want_gw = peer.subnet.network_address
        want = f"via {want_gw} dev {dev} onlink"
        good = k.route_dev == dev and k.route_gw == want_gw
    else:
        want_gw, want = None, f"dev {dev}"
        good = k.route_dev == dev
    have = f"dev {k.route_dev}" + (f" via {k.route_gw}" if k.route_gw else "") if k.route_dev else "no route"
    if good:
        return Hop("route", f"{peer.subnet} {want}")
    return Hop("route", f"{peer.subnet} should go {want}, the kernel sends it {have}", False,
               f"{REPAIR}; by hand: ip route replace {peer.subnet} "
               + (f"via {want_gw} " if want_gw else "") + f"dev {dev or '<underlay device>'}"
               + (" onlink" if config.backend_type == "vxlan" and dev and want_gw != peer.attrs.public_ip else ""))


def _vxlan_entries(dev: str, peer: Lease, k: KernelView) -> list[Hop]:
    data = peer.attrs.backend_data
    mac = str(data.get("VtepMAC", "")).lower() if isinstance(data, dict) else ""
    gw = peer.subnet.network_address
    if not mac:
        return [Hop("neighbour", f"the lease of {peer.subnet} has no VtepMAC", False,
                    f"restart flanneld on {peer.attrs.public_ip} (it writes its lease anew)")]
    hops = [Hop("neighbour", f"{gw} lladdr {mac} on {dev}") if k.neigh_mac == mac else Hop(
        "neighbour", f"{gw} should be lladdr {mac} (the peer's VtepMAC) on {dev}, the kernel has "
        f"{k.neigh_mac or 'no entry'}", False, f"{REPAIR}; by hand: ip neigh replace {gw} lladdr {mac} dev {dev} "
        "nud permanent")]
    if peer.attrs.public_ip in k.fdb_dsts:
        hops.append(Hop("fdb", f"{mac} dst {peer.attrs.public_ip} on {dev}"))
    else:
        have = ", ".join(map(str, k.fdb_dsts)) or "no entry"
        hops.append(Hop("fdb", f"{mac} should go to dst {peer.attrs.public_ip} on {dev}, the kernel has {have}",
                        False, f"{REPAIR}; by hand: bridge fdb replace {mac} dev {dev} dst {peer.attrs.public_ip}"))
    return hops


def _encap(config: NetworkConfig, own: Lease, peer: Lease, k: KernelView) -> list[Hop]:
    t = config.backend_type
    if t == "host-gw" or (k.route_gw == peer.attrs.public_ip):
        hops = [Hop("encapsulation", "none: the packet crosses the underlay as it is")]
    else:
        port = config.backend_option("Port", 0) or {"udp": 8285, "vxlan": 8472}.get(t, 0)
        if t == "wireguard":
            data = peer.attrs.backend_data
            port = (data.get("Port") if isinstance(data, dict) else None) or config.backend_option("ListenPort", 51820)
        extra = f" VNI {config.backend_option('VNI', 1)}" if t == "vxlan" else ""
        hops = [Hop("encapsulation", f"{t}{extra}: outer {own.attrs.public_ip} -> {peer.attrs.public_ip} "
                    f"udp/{port}")]
    dev = device(config)
    if k.underlay_dev is None:
        hops.append(Hop("underlay", f"no route to {peer.attrs.public_ip}", False,
                        "the underlay cannot reach the peer: check this host's routes and addresses"))
    elif dev is not None and k.underlay_dev == dev:
        hops.append(Hop("underlay", f"{peer.attrs.public_ip} is routed into {dev} itself: a loop", False,
                        f"remove the route that sends {peer.attrs.public_ip} into {dev} (ip route get "
                        f"{peer.attrs.public_ip})"))
    else:
        hops.append(Hop("underlay", f"{peer.attrs.public_ip} via {k.underlay_dev}"))
    return hops


def trace(config: NetworkConfig, leases: Sequence[Lease], local: set[IP], src: IP, dst: IP,
          kernel: KernelView | None) -> list[Hop]:
    """The hops from SRC to DST as this host sees them (``kernel`` None: SRC is not on this host,
    only the leases are shown)."""
    assert config.network is not None
    check_addresses(config.network, src, dst)
    hops, a, b = ends(leases, local, src, dst)
    if a is None or b is None:
        return hops
    if a.subnet == b.subnet:
        return [*hops, Hop("path", f"same subnet: delivered on {a.attrs.public_ip}'s bridge, no overlay")]
    if kernel is None:
        return [*hops, Hop("path", f"{src} lives on {a.attrs.public_ip}, not on this host: run trace there to "
                       f"see the route, neighbour and FDB entries it uses (flannelctl trace {src} {dst} on "
                       f"{a.attrs.public_ip})")]
    hops.append(_route(config, b, kernel))
    dev = device(config)
    if config.backend_type == "vxlan" and dev and kernel.route_gw != b.attrs.public_ip:
        hops += _vxlan_entries(dev, b, kernel)
    return hops + _encap(config, a, b, kernel)


def first_wrong(hops: Sequence[Hop]) -> Hop | None:
    return next((h for h in hops if not h.ok), None)
