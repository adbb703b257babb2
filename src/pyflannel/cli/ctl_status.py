"""``flannelctl status``: this host as flanneld should have it, checked; exit 1 when anything is
wrong (a dead flanneld, a lost lease, a missing device, a health endpoint not ready), so that
monitoring and scripts can rely on the exit code alone.

Whether flanneld runs is read from the kernel's lock table (``instance.holder``: the flanneld that
holds the lock for this subnet file), never by taking the lock. Health is asked where flanneld
serves it: ``-healthz-ip`` (``0.0.0.0``/``::``/empty: the loopback address of that family).
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..core.config import NetworkConfig
from ..core.errors import FlannelError, KernelError
from ..core.plan import public_of
from ..core.subnetenv import previous_subnets
from ..instance import holder
from ..store.etcd import EtcdRegistry
from .ctl_leases import _expires, network_config, read_subnet_env

if TYPE_CHECKING:
    from ..kernel.netlink import Link


async def status(registry: EtcdRegistry, subnet_file: str, healthz_port: int, healthz_ip: str = "") -> int:
    values = read_subnet_env(subnet_file)
    own4, own6 = previous_subnets(values)
    own = own4 if own4 is not None else own6  # an IPv6-only network's lease is known by its IPv6 subnet
    if own is None:
        raise FlannelError(f"{subnet_file} holds no valid FLANNEL_SUBNET (found {values.get('FLANNEL_SUBNET')!r}): "
                           "is flanneld done starting here? give -subnet-file if it writes elsewhere")
    problems: list[str] = []

    def line(label: str, text: str, problem: str = "") -> None:
        print(f"{label:<11} {text}" + ("" if not problem else "   <- PROBLEM"))
        if problem:
            problems.append(problem)

    pid = holder(subnet_file)
    line("flanneld", f"running, pid {pid}" if pid else f"NOT running for {subnet_file}",
         "" if pid else "flanneld is not running (systemctl status flanneld; journalctl -u flanneld)")
    config = await network_config(registry)
    assert config is not None
    snap = await registry.list_leases()
    mine = next((le for le in snap.leases if le.ident == own), None)
    subnet_line = "FLANNEL_SUBNET" if own4 is not None else "FLANNEL_IPV6_SUBNET"
    line("subnet.env", f"{subnet_file}: {subnet_line}={values.get(subnet_line)} "
                       f"FLANNEL_MTU={values.get('FLANNEL_MTU')}")
    line("network", f"{config.network if config.enable_ipv4 else config.ipv6_network} backend {config.backend_type}")
    bad = next((b for b in snap.bad if b.subnet == own), None)
    if mine is not None:
        ttl = None if mine.is_reservation else await registry.time_to_live(mine.lease_id)
        expired = ttl is not None and ttl <= 0
        line("lease", f"{mine.ident} public IP {public_of(mine)}, expires in {_expires(ttl)}",
             "our lease has expired" if expired else "")
    elif bad is not None:
        line("lease", f"{own}: its key {bad.key} holds garbage ({bad.reason}): revoke it (flannelctl leases "
                      f"revoke {bad.key}) so that flanneld can take the subnet again", "our lease key holds garbage")
    else:
        line("lease", f"{own}: NOT in etcd (flanneld retakes it, or leases a new subnet when restarted)",
             "our lease is not in etcd")
    line("peers", f"{len([le for le in snap.leases if le.ident != own])} (bad keys: {len(snap.bad)})")
    text, ok = await asyncio.to_thread(_devices, config)  # pyroute2's sync API wants no loop
    line("devices", text, "" if ok else f"device: {text}")
    if config.backend_type == "wireguard" and ok:
        # the key is in BackendData, or in BackendV6Data alone on an IPv6-only network
        keys = {data.get("PublicKey"): le for le in snap.leases if le.ident != own
                for data in (le.attrs.backend_data, le.attrs.backend_v6_data) if isinstance(data, dict)}
        for label, text in await asyncio.to_thread(_wg_peers, keys, device_names(config)):
            line(label, text)
    if healthz_port:
        text, ok = _health(healthz_ip, healthz_port)
        line("health", text, "" if ok else f"health: {text}")
    if problems:
        print(f"status: {len(problems)} problem(s): {'; '.join(problems)}")
        return 1
    return 0


def _devices(config: NetworkConfig) -> tuple[str, bool]:
    from ..kernel import netlink

    try:
        links = {link.name: link for link in netlink.links()}
    except KernelError as err:
        return f"cannot list them: {err}", False
    return devices(config, links)


def device_name(config: NetworkConfig) -> str | None:
    """The device flanneld owns for this backend; None for one that needs none (host-gw)."""
    vni = config.backend_option("VNI", 1)
    return {"udp": "flannel0", "vxlan": f"flannel.{vni}" if config.enable_ipv4 else f"flannel-v6.{vni}",
            "wireguard": "flannel-wg"}.get(config.backend_type)


def device_names(config: NetworkConfig) -> list[str]:
    """Every device flanneld owns for this backend (wireguard's Mode "separate" on a dual-stack
    network: flannel-wg and flannel-wg-v6; on an IPv6-only one flannel-wg-v6 alone)."""
    first = device_name(config)
    if first is None:
        return []
    if config.backend_type == "wireguard" and config.enable_ipv6 and config.backend_option("Mode",
                                                                                           "separate") == "separate":
        return [first, "flannel-wg-v6"] if config.enable_ipv4 else ["flannel-wg-v6"]
    return [first]


def devices(config: NetworkConfig, links: Mapping[str, Link]) -> tuple[str, bool]:
    """flanneld's devices as the kernel has them: (what to show, whether they are fine)."""
    names = device_names(config)
    if not names:
        return "none needed", True
    texts, ok = [], True
    for want in names:
        link = links.get(want)
        if link is None:
            texts.append(f"{want} MISSING")
            ok = False
        else:
            texts.append(f"{want} {'up' if link.up else 'DOWN'} mtu {link.mtu}")
            ok = ok and link.up
    return ", ".join(texts), ok


def _wg_peers(leases: dict[object, object], names: list[str]) -> list[tuple[str, str]]:
    """One line per WireGuard peer of each device: its subnet (from the lease with its public key;
    the IPv6 one on flannel-wg-v6), endpoint, last handshake and bytes, as ``wg show <dev> dump``
    has them."""
    import time

    from ..core.wgconf import parse_dump
    from ..kernel.wireguard import wg_show_dump

    out = []
    for dev in names:
        try:
            state = parse_dump(wg_show_dump(dev))
        except (FlannelError, ValueError) as err:
            out.append(("wg peers", f"cannot read {dev}: {err}"))
            continue
        out.append(("wg peers", f"{len(state.peers)} on {dev}, listening on {state.listen_port}"))
        now = time.time()
        for p in sorted(state.peers.values(), key=lambda p: p.endpoint):
            lease = leases.get(p.public_key)
            subnet = "(no lease)" if lease is None else str(  # ident: the IPv6 subnet of an IPv6-only lease
                lease.ipv6_subnet if dev.endswith("-v6") else lease.ident)  # type: ignore[attr-defined]
            seen = f"handshake {int(now - p.latest_handshake)}s ago" if p.latest_handshake else "no handshake yet"
            out.append(("  peer", f"{subnet} {p.endpoint or '(no endpoint)'} {seen}, rx {p.rx} B, tx {p.tx} B"))
    return out


def health_address(ip: str) -> str:
    """Where to ask: the address flanneld listens on, the loopback one for a wildcard."""
    if ip in ("", "0.0.0.0"):
        return "127.0.0.1"
    if ip == "::":
        return "::1"
    return ip


def _health(ip: str, port: int) -> tuple[str, bool]:
    host = health_address(ip)
    url = f"http://[{host}]:{port}/readyz" if ":" in host else f"http://{host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return f"{r.status} {r.read().decode(errors='replace')}", r.status == 200
    except urllib.error.HTTPError as err:  # 503: not ready, and why
        return f"{err.code} {err.read().decode(errors='replace')}", False
    except (OSError, http.client.HTTPException, ValueError) as err:  # not an HTTP server on that port
        return f"not answering on {host}:{port}: {err}", False
