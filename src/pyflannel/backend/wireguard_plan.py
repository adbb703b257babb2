"""The wireguard backend's pure half: options, devices per ``Mode``, our lease data, and the plans
(each device's peer set, the kernel state) from the leases. No I/O: unit-tested per Mode.

Devices as Go flannel makes them (pkg/backend/wireguard):

- ``separate`` (the default): ``flannel-wg`` on ``ListenPort`` carries IPv4, and on a dual-stack
  network ``flannel-wg-v6`` on ``ListenPortV6`` carries IPv6. Each has its own peer set: a peer's
  IPv4 half (``PublicIP``, ``BackendData``, its IPv4 subnet) on the first, its IPv6 half
  (``[PublicIPv6]``, ``BackendV6Data``, its IPv6 subnet) on the second.
- ``auto``, ``ipv4``, ``ipv6``: one ``flannel-wg`` on ``ListenPort`` for both families: one
  peer per lease with both subnets as allowed IPs, reached over IPv4 (``ipv4``), IPv6
  (``ipv6``), or the family Go's ``selectMode`` picks (``auto``).

On an IPv6-only network (EnableIPv4 false) ``separate`` makes ``flannel-wg-v6`` alone, on
``ListenPortV6``, as Go does; ``auto`` and ``ipv6`` make ``flannel-wg`` on ``ListenPort``
carrying IPv6 alone, every peer reached over IPv6 (Go's ``selectMode`` may pick the leases'
``0.0.0.0`` there, and Go routes its empty IPv4 ``Network``, 0.0.0.0/0, through the device);
``ipv4`` is refused (every peer's IPv4 endpoint would be ``0.0.0.0``). No IPv4 address, route
or ``BackendData`` is made.

Unlike Go, the port we publish for a family is the port of the device that carries it: in
``auto``/``ipv4``/``ipv6`` mode ``BackendV6Data.Port`` is ``ListenPort`` (Go publishes
``ListenPortV6``, where nothing listens).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, LinkSpec, Route
from ..core.errors import ConfigError
from ..core.lease import Lease, SubnetId
from ..core.plan import WgPeer
from ..core.wgconf import valid_key
from .base import int_option

OVERHEAD = 80
DEV = "flannel-wg"
DEV6 = "flannel-wg-v6"
MODES = ("separate", "auto", "ipv4", "ipv6")


@dataclass(frozen=True)
class WgOptions:
    listen_port: int = 51820
    listen_port_v6: int = 51821
    mtu: int = 1500  # the underlay MTU; the device gets mtu - 80
    psk: str = ""
    keepalive: int = 0  # seconds
    mode: str = "separate"


@dataclass(frozen=True)
class WgDevice:
    """One WireGuard device: its name, the port it listens on, the families it carries, and the
    name of its converger target (``wg`` for flannel-wg, ``wg-v6`` for flannel-wg-v6)."""

    name: str
    port: int
    v4: bool
    v6: bool

    @property
    def target(self) -> str:
        return "wg-v6" if self.name == DEV6 else "wg"


def parse_options(config: NetworkConfig, ext_mtu: int) -> WgOptions:
    psk = config.backend_option("PSK", "")
    if psk != "" and not valid_key(psk):
        raise ConfigError("wireguard backend: PSK must be a WireGuard key (32 bytes, base64, as `wg genpsk` "
                          "prints); leave it out for none")
    mode = config.backend_option("Mode", "separate")
    if mode not in MODES:
        raise ConfigError(f"wireguard backend: no valid Mode configured: {mode!r} (one of {', '.join(MODES)})")
    if mode == "ipv6" and not config.enable_ipv6:
        raise ConfigError('wireguard backend: Mode "ipv6" reaches peers over IPv6, but the network has no IPv6: '
                          'set "EnableIPv6": true and an "IPv6Network", or use Mode "separate"')
    if mode == "ipv4" and not config.enable_ipv4:
        raise ConfigError('wireguard backend: Mode "ipv4" reaches peers over IPv4, but the network is IPv6-only '
                          '(EnableIPv4 false): use Mode "separate" (the default), "ipv6" or "auto"')
    return WgOptions(
        listen_port=int_option(config, "ListenPort", 51820, 1, 65535, "wireguard"),
        listen_port_v6=int_option(config, "ListenPortV6", 51821, 1, 65535, "wireguard"),
        mtu=int_option(config, "MTU", ext_mtu, 68 + OVERHEAD, 65535, "wireguard"),
        psk=psk,
        keepalive=int_option(config, "PersistentKeepaliveInterval", 0, 0, 65535, "wireguard"),
        mode=mode,
    )


def devices(opts: WgOptions, v4: bool, v6: bool) -> tuple[WgDevice, ...]:
    """Pure: the devices of this Mode for the families the network runs."""
    if opts.mode != "separate":
        return (WgDevice(DEV, opts.listen_port, v4, v6),)
    return tuple(d for d in (WgDevice(DEV, opts.listen_port, True, False),
                             WgDevice(DEV6, opts.listen_port_v6, False, True)) if (d.v4 and v4) or (d.v6 and v6))


def backend_data(devs: tuple[WgDevice, ...], public_key: str, v6: bool) -> dict[str, object] | None:
    """``BackendData`` (``v6`` False) or ``BackendV6Data``: our key and the port of the device that
    carries that family (Go's field order: PublicKey, Port); None when no device carries it."""
    for dev in devs:
        if dev.v6 if v6 else dev.v4:
            return {"PublicKey": public_key, "Port": dev.port}
    return None


# ---- a peer's lease ---------------------------------------------------------------------------------
def peer_key(lease: Lease, v6: bool = False) -> str | None:
    data = lease.attrs.backend_v6_data if v6 else lease.attrs.backend_data
    key = data.get("PublicKey") if isinstance(data, dict) else None
    return key if valid_key(key) else None


def peer_port(lease: Lease, own_port: int, v6: bool = False) -> int | None:
    """The peer's port from its lease; 0 or absent means ours (older flannel), as Go."""
    data = lease.attrs.backend_v6_data if v6 else lease.attrs.backend_data
    port = data.get("Port", 0) if isinstance(data, dict) else 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    return port or own_port


def v6_problem(lease: Lease) -> str | None:
    """Why the IPv6 half of a dual-stack peer cannot be programmed (its IPv4 half still is), or
    None; None too for a lease without an IPv6 half (an IPv4-only host)."""
    if lease.ipv6_subnet is None or lease.attrs.public_ipv6 is None:
        return None
    if peer_key(lease, v6=True) is None:
        return f"its BackendV6Data has no valid PublicKey: {lease.attrs.backend_v6_data!r}"
    if peer_port(lease, 1, v6=True) is None:
        return f"its BackendV6Data has no valid Port: {lease.attrs.backend_v6_data!r}"
    return None


def _has_v6(lease: Lease) -> bool:
    return lease.ipv6_subnet is not None and lease.attrs.public_ipv6 is not None and v6_problem(lease) is None


def _private4(ip: ipaddress.IPv4Address) -> bool:
    """Go's ip.IP4.IsPrivate: RFC 1918 only."""
    return any(ip in n for n in _RFC1918)


_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.IPv6Network("fc00::/7")


def select_family(peer4: ipaddress.IPv4Address, peer6: ipaddress.IPv6Address | None,
                  own4: ipaddress.IPv4Address | None, own6: ipaddress.IPv6Address | None) -> int:
    """Go's ``selectMode`` (auto mode): 4 or 6, the family of the endpoint most likely to work.
    IPv4 without a peer IPv6; IPv4 when the peer's IPv4 is public and we have one; IPv6 when both
    IPv6 addresses are not ULA; else IPv4."""
    if peer6 is None:
        return 4
    if not _private4(peer4) and own4 is not None:
        return 4
    if peer6 not in _ULA and own6 is not None and own6 not in _ULA:
        return 6
    return 4


# ---- the plans ----------------------------------------------------------------------------------
def _endpoint(lease: Lease, dev_port: int, family: int) -> str | None:
    if family == 6:
        port6 = peer_port(lease, dev_port, v6=True)
        return None if port6 is None else f"[{lease.attrs.public_ipv6}]:{port6}"
    port = peer_port(lease, dev_port)
    return None if port is None else f"{lease.attrs.public_ip}:{port}"


def plan_peers(opts: WgOptions, dev: WgDevice, peers: Mapping[SubnetId, Lease],
               own4: ipaddress.IPv4Address | None = None, own6: ipaddress.IPv6Address | None = None
               ) -> tuple[WgPeer, ...]:
    """Pure: the peer set of one device. A device carrying one family has one peer per lease that
    has that family's half; one carrying both (auto/ipv4/ipv6) has one peer per lease with both
    subnets, over the endpoint family of the Mode (``own4``/``own6``: our public addresses, which
    auto mode weighs as Go does)."""
    out = []
    for lease in peers.values():
        has6 = dev.v6 and _has_v6(lease)
        allowed: list[str] = []
        if dev.v4:
            allowed.append(str(lease.subnet))
        if has6:
            allowed.append(str(lease.ipv6_subnet))
        if not allowed:
            continue
        if not dev.v4:
            family = 6
        elif not has6 or opts.mode == "ipv4":
            family = 4
        elif opts.mode == "ipv6":
            family = 6
        else:
            family = select_family(lease.attrs.public_ip, lease.attrs.public_ipv6, own4, own6)
        key = peer_key(lease, v6=has6)  # as Go: the IPv6 half's key when the lease has one
        endpoint = _endpoint(lease, dev.port, family)
        if key is None or endpoint is None:
            continue
        out.append(WgPeer(key, endpoint, tuple(allowed), opts.keepalive))
    return tuple(sorted(out))


def plan_kernel(network: ipaddress.IPv4Network | None, network6: ipaddress.IPv6Network | None, own: Lease,
                devs: tuple[WgDevice, ...], links: tuple[LinkSpec, ...]) -> DesiredState:
    """Pure: each device up with its MTU, our subnet's address on the device carrying that family
    (``/32``, ``/128``) and a route for each network through it (``network`` None: IPv6-only)."""
    addresses, routes = [], set()
    for dev in devs:
        if dev.v4 and network is not None:
            addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
            addresses.append(Address(dev.name, addr, network))
            routes.add(Route(network, dev.name))
        if dev.v6 and network6 is not None and own.ipv6_subnet is not None:
            addr6 = ipaddress.IPv6Interface(f"{own.ipv6_subnet.network_address}/128")
            addresses.append(Address(dev.name, addr6, network6))
            routes.add(Route(network6, dev.name))
    v6 = network6 if any(d.v6 for d in devs) and own.ipv6_subnet is not None else None
    return DesiredState(network, links=links, addresses=tuple(addresses), routes=frozenset(routes), network6=v6)
