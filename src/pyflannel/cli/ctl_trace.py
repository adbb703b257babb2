"""``flannelctl trace SRC DST``: the path a packet from container address SRC to DST takes, read
from the leases in etcd and this host's kernel, and the first hop that is wrong, with the fix.
Reads only. The judgement is ``core/trace.py``."""

from __future__ import annotations

import asyncio
import ipaddress
import json

from ..core.config import NetworkConfig, parse_config
from ..core.errors import ConfigError, FlannelError, KernelError
from ..core.trace import Hop, KernelView, device, first_wrong, owner, trace
from ..kernel import netlink
from ..store.etcd import EtcdRegistry


def _address(name: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise FlannelError(f"{name} {text!r} is not an IPv4 address: give two container addresses, "
                           "e.g. flannelctl trace 10.0.53.2 10.0.54.2") from None


def _kernel(config: NetworkConfig, dst: ipaddress.IPv4Address, peer_ip: ipaddress.IPv4Address,
            peer_mac: str | None) -> KernelView:
    names = {link.index: link.name for link in netlink.links()}
    oif, _ = netlink.route_get(dst)
    gw = netlink.route_gateway(dst)
    dev, mac, fdb = names.get(oif), None, ()
    vxlan = device(config) if config.backend_type == "vxlan" else None
    index = next((i for i, n in names.items() if n == vxlan), None)
    if index is not None:  # the neighbour of the gateway the backend wants (the peer subnet's address)
        want_gw = ipaddress.IPv4Network(f"{dst}/{config.subnet_len}", strict=False).network_address
        mac = next((m for ip, m, _ in netlink.dump_neighbours(index) if ipaddress.IPv4Address(ip) == want_gw), None)
        want = peer_mac or mac
        fdb = tuple(ipaddress.IPv4Address(d[1]) for m, d, _ in netlink.dump_fdb(index)
                    if m == want and d is not None and d[0] == 4)  # d: (IP version, address)
    try:
        under, _ = netlink.route_get(peer_ip)
    except KernelError:
        under = None
    return KernelView(dev, gw, mac, fdb, names.get(under) if under is not None else None)


async def trace_command(registry: EtcdRegistry, src_text: str, dst_text: str, as_json: bool = False) -> int:
    src, dst = _address("SRC", src_text), _address("DST", dst_text)
    data = await registry.get_config()
    if data is None:
        raise FlannelError(f"no network config at {registry.config_key}: trace needs it (flannelctl doctor "
                           "says why it is missing)")
    try:
        config = parse_config(data)
    except ConfigError as err:
        raise FlannelError(f"{registry.config_key} is invalid: {err}") from None
    snap = await registry.list_leases()
    local = {a.address.ip for a in await asyncio.to_thread(netlink.ipv4_addrs)}
    kernel = None
    a, b = owner(snap.leases, src), owner(snap.leases, dst)
    if a is not None and b is not None and a.attrs.public_ip in local and a.subnet != b.subnet:
        data_b = b.attrs.backend_data
        mac = str(data_b.get("VtepMAC", "")).lower() if isinstance(data_b, dict) else None
        kernel = await asyncio.to_thread(_kernel, config, dst, b.attrs.public_ip, mac or None)
    hops = trace(config, snap.leases, local, src, dst, kernel)
    wrong = first_wrong(hops)
    if as_json:
        print(json.dumps({"Hops": [{"What": h.what, "Text": h.text, "Ok": h.ok, "Fix": h.fix} for h in hops],
                          "FirstWrong": wrong.what if wrong else None}))
    else:
        for h in hops:
            print(_line(h, h is wrong))
        print(f"trace: first wrong hop: {wrong.what}" if wrong else f"trace: {src} -> {dst}: every hop is right")
    return 1 if wrong else 0


def _line(h: Hop, first: bool) -> str:
    mark = "ok   " if h.ok else "WRONG"
    return f"{mark} {h.what:<13} {h.text}" + (f"\n      -> fix: {h.fix}" if first and h.fix else "")
