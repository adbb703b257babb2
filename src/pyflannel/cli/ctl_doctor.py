"""``flannelctl doctor``: every known way a host's flannel breaks, checked, one line each (ok /
warning / problem, the cause, the fix). It reads only; it works when etcd is down (says so and
checks the rest). Exit 0 when nothing is a problem. The judgement is ``core/doctor.py``; this
module reads etcd and the kernel for it, and shares ``flannelctl status``'s pieces."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time

from ..core.config import NetworkConfig, parse_config
from ..core.doctor import OK, PROBLEM, WARNING, Check, clock_skew, mtu_chain, route_drift
from ..core.errors import ConfigError, FlannelError, KernelError, StoreUnavailable
from ..core.events import Snapshot
from ..core.lease import Lease
from ..core.subnetenv import previous_subnets
from ..instance import holder
from ..kernel import hostcheck
from ..store.etcd import EtcdRegistry
from ..store.etcd_v2 import V2Keys, only_in_v2, v2_config
from .ctl_leases import _expires, read_subnet_env
from .ctl_status import _health, device_name, devices
from .doctor_peers import entries, peers_of, probes


async def doctor(registry: EtcdRegistry, subnet_file: str, healthz_port: int, healthz_ip: str,
                 as_json: bool = False) -> int:
    checks = await asyncio.to_thread(_etcd_checks, registry)
    etcd_up = any(c.name == "etcd" and c.level == OK for c in checks)
    config, snap = None, None
    if etcd_up:
        try:
            config, check = await _config_check(registry)
            checks.append(check)
            snap = await registry.list_leases() if config else None
        except StoreUnavailable as err:
            checks.append(Check("config", PROBLEM, f"cannot read it: {err}", "check -etcd-endpoints"))
    else:
        checks.append(Check("config", WARNING, "not checked: etcd is down"))
    values, own = _subnet_env(subnet_file, checks)
    pid = holder(subnet_file)
    checks.append(Check("flanneld", OK, f"running, pid {pid}") if pid else Check(
        "flanneld", PROBLEM, f"not running for {subnet_file}", "systemctl start flanneld; journalctl -u flanneld"))
    if snap is not None and own is not None:
        checks.append(await _lease_check(registry, snap, own, subnet_file))
    config = config or _config_from_host(values)
    if config is not None:
        checks += await asyncio.to_thread(_kernel_checks, config, values, own, snap)
    if healthz_port:
        text, ok = _health(healthz_ip, healthz_port)
        checks.append(Check("health", OK if ok else PROBLEM, text, "" if ok else "see journalctl -u flanneld"))
    problems = sum(c.level == PROBLEM for c in checks)
    if as_json:
        print(json.dumps({"Checks": [c.as_json() for c in checks], "Problems": problems}))
    else:
        for c in checks:
            print(c.line())
        print(f"doctor: {problems} problem(s), {sum(c.level == WARNING for c in checks)} warning(s)")
    return 1 if problems else 0


def _etcd_checks(registry: EtcdRegistry) -> list[Check]:
    v2, out = V2Keys(registry.options), []
    for ep in (e.strip() for e in registry.options.endpoints if e.strip()):
        version, err, when = v2.probe(ep)
        if version is None:
            out.append(Check("etcd", PROBLEM, f"{ep} does not answer: {err}",
                             "is etcd running there? is -etcd-endpoints right (http/https, port 2379)?"))
            continue
        out.append(Check("etcd", OK, f"{ep} answers (etcd {version})"))
        if when is not None and not any(c.name == "clock" for c in out):
            out.append(clock_skew(ep, time.time() - when))
    return out


async def _config_check(registry: EtcdRegistry) -> tuple[NetworkConfig | None, Check]:
    key = registry.config_key
    data = await registry.get_config()
    if data is None:
        if await v2_config(registry.options, key) is not None:
            text = only_in_v2(key, registry.endpoints, registry.prefix).split(": copy")[0]
            return None, Check("config", PROBLEM, text,
                               f"flannelctl -etcd-endpoints={registry.endpoints} -etcd-prefix={registry.prefix} "
                               "config migrate-v2")
        return None, Check("config", PROBLEM, f"no network config at {key}", "is -etcd-prefix right? write "
                           f"one: flannelctl -etcd-prefix={registry.prefix} config set FILE")
    try:
        config = parse_config(data)
    except ConfigError as err:
        return None, Check("config", PROBLEM, f"{key} is invalid: {err}", "flannelctl config set FILE")
    return config, Check("config", OK, f"{key}: network {config.network}, backend {config.backend_type}")


def _config_from_host(values: dict[str, str]) -> NetworkConfig | None:
    """Without etcd: the network from subnet.env, the backend from the device flanneld made."""
    names = os.listdir("/sys/class/net") if os.path.isdir("/sys/class/net") else []
    vxlan = next((n for n in names if n.startswith("flannel.") and n[8:].isdigit()), None)
    backend: dict[str, object] = ({"Type": "udp"} if "flannel0" in names else
                                  {"Type": "vxlan", "VNI": int(vxlan[8:])} if vxlan else {"Type": "host-gw"})
    try:
        return parse_config(json.dumps({"Network": values.get("FLANNEL_NETWORK", ""), "Backend": backend}))
    except ConfigError:
        return None


def _subnet_env(path: str, checks: list[Check]) -> tuple[dict[str, str], ipaddress.IPv4Network | None]:
    try:
        values = read_subnet_env(path)
    except FlannelError as err:
        checks.append(Check("subnet.env", PROBLEM, str(err), "start flanneld; -subnet-file if it writes elsewhere"))
        return {}, None
    own, _ = previous_subnets(values)
    if own is None:
        checks.append(Check("subnet.env", PROBLEM, f"{path} holds no valid FLANNEL_SUBNET",
                            "restart flanneld: it rewrites the file once it holds its lease"))
    else:
        checks.append(Check("subnet.env", OK, f"{path}: FLANNEL_SUBNET={values.get('FLANNEL_SUBNET')} "
                                              f"FLANNEL_MTU={values.get('FLANNEL_MTU')}"))
    return values, own


def _local_ips() -> set[ipaddress.IPv4Address]:
    from ..kernel import netlink

    try:
        return {a.address.ip for a in netlink.ipv4_addrs()}
    except KernelError:
        return set()


async def _lease_check(registry: EtcdRegistry, snap: Snapshot, own: ipaddress.IPv4Network, path: str) -> Check:
    mine = next((le for le in snap.leases if le.subnet == own), None)
    local = await asyncio.to_thread(_local_ips)
    ours = [le for le in snap.leases if le.attrs.public_ip in local]
    if mine is None or mine.attrs.public_ip not in local:
        held = f"held by {mine.attrs.public_ip}, not this host" if mine else "not in etcd"
        actual = f"; this host's lease is {ours[0].subnet}" if ours else ""
        return Check("lease", PROBLEM, f"{path} names {own}, {held}{actual}: stale subnet.env, docker0 on the "
                     "wrong subnet", "restart flanneld (it rewrites subnet.env), then docker")
    if mine.is_reservation:
        return Check("lease", OK, f"{own} reserved for {mine.attrs.public_ip} (no expiry)")
    ttl = await registry.time_to_live(mine.lease_id)
    if ttl <= 0:
        return Check("lease", PROBLEM, f"{own} has expired", "is flanneld running and reaching etcd?")
    return Check("lease", OK, f"{own} public IP {mine.attrs.public_ip}, expires in {_expires(ttl)}")


def _kernel_checks(config: NetworkConfig, values: dict[str, str], own: ipaddress.IPv4Network | None,
                   snap: Snapshot | None) -> list[Check]:
    from ..kernel import netlink

    try:
        links = {link.name: link for link in netlink.links()}
    except KernelError as err:
        return [Check("kernel", PROBLEM, f"cannot read the kernel's devices: {err}", "run as root")]
    text, ok = devices(config, links)
    out = [Check("device", OK if ok else PROBLEM, text, "" if ok else "restart flanneld (it creates the device)")]
    out.append(hostcheck.ip_forward())
    bridges = [(n, links[n].mtu) for n in hostcheck.BRIDGES if n in links]
    brnf = hostcheck.br_netfilter([n for n, _ in bridges])
    out += [brnf] if brnf else []
    dev = device_name(config)
    mtu = values.get("FLANNEL_MTU", "")
    if mtu.isdigit():
        out += mtu_chain(config.backend_type, _underlay(snap, own, links), (dev, links[dev].mtu)
                         if dev in links else None, int(mtu), bridges)
    assert config.network is not None
    out.append(hostcheck.forward(config.network, config.enable_nftables))
    if snap is not None and own is not None and config.network is not None:
        peers = peers_of(config, snap, own)
        out.append(_routes(config, peers, links))
        drift = entries(config, dev or "", peers, links)
        out += [drift] if drift else []
        explained = next((c.name for c in out[-2:] if c.level == PROBLEM and c.name in ("routes", "neigh/fdb")), "")
        out += probes(config, dev if config.backend_type != "host-gw" else None, peers, links, explained)
    return out


def _underlay(snap: Snapshot | None, own: ipaddress.IPv4Network | None, links: dict) -> tuple[str, int] | None:
    from ..kernel import netlink

    mine = next((le for le in snap.leases if le.subnet == own), None) if snap else None
    if mine is None:
        return None
    by_index = {link.index: link for link in links.values()}
    for addr in netlink.ipv4_addrs():
        if addr.address.ip == mine.attrs.public_ip and addr.index in by_index:
            return by_index[addr.index].name, by_index[addr.index].mtu
    return None


def _routes(config: NetworkConfig, peers: list[Lease], links: dict) -> Check:
    from ..kernel import netlink

    dev = device_name(config)
    index = links[dev].index if dev in links else None
    how = f"via {dev}" if dev else "via each peer's public IP"
    wrong = []
    for le in peers:
        dst = le.subnet.network_address + 1
        try:
            oif, _ = netlink.route_get(dst)
            gw = netlink.route_gateway(dst) if not dev else None
        except KernelError as err:
            wrong.append(f"{le.subnet}: {err}")
            continue
        if dev and oif != index:
            name = next((n for n, link in links.items() if link.index == oif), str(oif))
            wrong.append(f"{le.subnet} goes out {name}")
        elif not dev and gw != le.attrs.public_ip:
            wrong.append(f"{le.subnet} goes via {gw or 'no gateway'}, not {le.attrs.public_ip}")
    return route_drift(wrong, len(peers), how)
