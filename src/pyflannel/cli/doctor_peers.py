"""``flannelctl doctor``'s per-peer checks, the reading half: the neighbour and FDB entries the
vxlan backend wants against the kernel's, and the probes of each peer (through the overlay, on the
underlay, and on vxlan a UDP datagram whose checksum the peer must accept). The verdicts are
``core/doctor.py``'s."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from ..backend.vxlan import peer_mac
from ..core.config import NetworkConfig
from ..core.doctor import OK, Check, PeerProbe, checksum_check, entry_drift, peer_checks
from ..core.errors import KernelError
from ..core.events import Snapshot
from ..core.lease import Lease
from ..kernel import netlink, probe
from ..kernel.netlink import Link

MAX_PROBED = 32  # peers probed per run (in parallel, 16 at a time)
NUD_PERMANENT = 0x80


def peers_of(config: NetworkConfig, snap: Snapshot, own: ipaddress.IPv4Network) -> list[Lease]:
    return sorted((le for le in snap.leases if le.subnet != own and config.network is not None
                   and le.subnet.subnet_of(config.network)), key=lambda le: le.subnet)


def encap_port(config: NetworkConfig, lease: Lease | None = None) -> str:
    """The encapsulation's protocol/port (``udp/8472``); '' for a backend without one."""
    port = config.backend_option("Port", 0)
    if config.backend_type == "udp":
        return f"udp/{port or 8285}"
    if config.backend_type == "vxlan":
        return f"udp/{port or 8472}"  # the kernel's VXLAN port when none is given (Go flannel's too)
    if config.backend_type == "wireguard":
        data = lease.attrs.backend_data if lease is not None else None
        wg = data.get("Port") if isinstance(data, dict) else None
        return f"udp/{wg or config.backend_option('ListenPort', 51820)}"
    return ""


def entries(config: NetworkConfig, dev: str, peers: list[Lease], links: Mapping[str, Link]) -> Check | None:
    """vxlan only: each peer's neighbour (its subnet's address -> VtepMAC) and FDB (VtepMAC ->
    PublicIP) entry on ``dev``."""
    if config.backend_type != "vxlan" or dev not in links:
        return None
    if config.backend_option("DirectRouting", False):
        return Check("neigh/fdb", OK, "not checked with DirectRouting (the routes check covers it)")
    index = links[dev].index
    try:
        neighs = {ipaddress.IPv4Address(ip): mac for ip, mac, state in netlink.dump_neighbours(index)
                  if state & NUD_PERMANENT}
        fdbs: dict[str, set[ipaddress.IPv4Address]] = {}
        for mac, dst, _ in netlink.dump_fdb(index):
            if dst is not None and dst[0] == 4:  # dst: (IP version, address)
                fdbs.setdefault(mac, set()).add(ipaddress.IPv4Address(dst[1]))
    except OSError as err:
        return Check("neigh/fdb", OK, f"not checked: cannot read {dev}'s entries: {err}")
    bad_neigh, bad_fdb, n = [], [], 0
    for le in peers:
        mac = peer_mac(le)
        if mac is None:
            continue
        n += 1
        gw, have = le.subnet.network_address, neighs.get(le.subnet.network_address)
        if have != mac:
            bad_neigh.append(f"{gw} lladdr {mac}" + (f" is {have}" if have else " missing"))
        if le.attrs.public_ip not in fdbs.get(mac, set()):
            bad_fdb.append(f"{mac} dst {le.attrs.public_ip}" + (
                f" is dst {', '.join(map(str, sorted(fdbs[mac])))}" if fdbs.get(mac) else " missing"))
    return entry_drift(dev, bad_neigh, bad_fdb, n)


def _probe(lease: Lease, udp: bool) -> PeerProbe:
    overlay = probe.echo(lease.subnet.network_address)
    underlay = True if overlay else probe.echo(lease.attrs.public_ip)
    return PeerProbe(str(lease.subnet), str(lease.attrs.public_ip), overlay, underlay,
                     probe.udp_arrives(lease.subnet.network_address) if udp and overlay else None)


def probes(config: NetworkConfig, dev: str | None, peers: list[Lease], links: Mapping[str, Link],
           explained: str = "") -> list[Check]:
    """Every peer (the first ``MAX_PROBED``) probed in parallel: the ``peers`` check, and on vxlan
    the ``checksum`` check. ``explained``: a check above that found this host's entries wrong."""
    if dev is None:
        return [Check("peers", OK, f"{config.backend_type}: no encapsulation to probe")]
    if dev not in links:
        return []  # the device check has said it is missing
    vxlan = config.backend_type == "vxlan"
    chosen = peers[:MAX_PROBED]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda le: _probe(le, vxlan), chosen))
    ports = sorted({encap_port(config, le) for le in chosen}) or [encap_port(config)]
    encap = "/".join([ports[0].split("/")[0], ",".join(p.split("/")[1] for p in ports)])
    out = [peer_checks(encap, results, explained)]
    if len(peers) > MAX_PROBED:
        out[0] = Check(out[0].name, out[0].level, f"{out[0].text} (the first {MAX_PROBED} of {len(peers)})",
                       out[0].fix)
    if vxlan:
        try:
            offload = probe.tx_checksum(dev)
        except KernelError:
            offload = None
        out.append(checksum_check(dev, offload, results))
    return out
