"""Several flanneld on one host, each for its own network (own etcd prefix, own subnet file), as Go
flannel supports: every rule, route and device stays owned per network, so the instances run side
by side without touching each other's state.

In one namespace: two TrafficManagers (one per network) in iptables and in nftables mode keep both
rule sets through setup, resync and repair, and a restart that recycles the rules of its previous
network keeps those that a live instance serves. In the lab: two flanneld per host (networks A and B
in one etcd under /net-a and /net-b, -ip-masq, -iptables-resync=1), udp (ports 8285 and 8286) with
iptables and the FORWARD policy DROP, and vxlan (VNI 1 and 2) with nftables; both rule sets present
and stable over several resync periods, containers of both networks reaching each other across
hosts, and stopping one instance leaves the other's rules and routes as they were.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pyflannel.core.subnetenv import parse_subnet_env
from pyflannel.lab.cluster import Host, Lab, stop_everything
from pyflannel.lab.netns import in_ns, ns_add, ns_list, sh, veth

from .helpers import TrafficDriver

NS = "pf2n-rules"
LAB = "pf2n"
NET_A, NET_B, NET_C = "10.10.0.0/16", "10.20.0.0/16", "10.30.0.0/16"
RESYNC = 1.0
REPAIRED = "rules were changed by someone else"


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def run(ns: str, *cmd: str, check: bool = True) -> str:
    res = subprocess.run(in_ns(ns, *cmd), capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0 or not check, f"{' '.join(cmd)}: {res.stderr}"
    return res.stdout


# ---- flannel's rules, as `iptables -S` / `nft list` print them ----------------------------------------

MARK = '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN'
NFT_MARK = "meta mark 0x00004000 return"


def masq_block(net: str, pod: str) -> list[str]:
    c = '-m comment --comment "flanneld masq"'
    return [f"-A FLANNEL-POSTRTG -s {pod} -d {net} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {net} -d {pod} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG ! -s {net} -d {pod} {c} -j RETURN",
            f"-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
            f"-A FLANNEL-POSTRTG ! -s {net} -d {net} {c} -j MASQUERADE --random-fully"]


def fwd_block(net: str) -> list[str]:
    c = '-m comment --comment "flanneld forward"'
    return [f"-A FLANNEL-FWD -s {net} {c} -j ACCEPT", f"-A FLANNEL-FWD -d {net} {c} -j ACCEPT"]


def nft_masq_block(net: str, pod: str) -> list[str]:
    return [f"ip saddr {pod} ip daddr {net} return", f"ip saddr {net} ip daddr {pod} return",
            f"ip saddr != {pod} ip daddr {net} return",
            f"ip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random",
            f"ip saddr != {net} ip daddr {net} masquerade fully-random"]


def nft_fwd_block(net: str) -> list[str]:
    return [f"ip saddr {net} accept", f"ip daddr {net} accept"]


def chain(ns: str, table: str, name: str) -> list[str]:
    return [ln for ln in run(ns, "iptables", "-t", table, "-S", name, check=False).splitlines()
            if ln.startswith(f"-A {name} ")]


def jumps(ns: str, table: str, parent: str, name: str) -> int:
    return sum(ln.endswith(f"-j {name}") for ln in run(ns, "iptables", "-t", table, "-S", parent).splitlines())


def nft_chain(ns: str, name: str) -> list[str]:
    out = run(ns, "nft", "list", "chain", "ip", "flannel-ipv4", name, check=False)
    return [ln.strip() for ln in out.splitlines()
            if ln.startswith("\t\t") and not ln.strip().startswith(("type ", "comment "))]


def blocks_in(rules: list[str], *blocks: list[str], head: list[str] = ()) -> bool:
    """``rules`` is ``head`` followed by exactly ``blocks``, each contiguous and in order, in any
    order of the blocks."""
    if rules[: len(head)] != list(head):
        return False
    rest = rules[len(head):]
    for blk in blocks:
        at = next((i for i in range(len(rest)) if rest[i: i + len(blk)] == blk), None)
        if at is None:
            return False
        rest = rest[:at] + rest[at + len(blk):]
    return rest == []


# ---- two TrafficManagers in one namespace ----------------------------------------------------------

Driver = TrafficDriver


def nft_available(ns: str) -> None:
    probe = subprocess.run(in_ns(ns, "nft", "list", "ruleset"), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the kernel has no nf_tables in network namespaces: nft list ruleset: {probe.stderr.strip()}")


POD_A, POD_B, POD_B2 = "10.10.5.0/24", "10.20.7.0/24", "10.20.9.0/24"


def test_iptables_two_networks_setup_resync_repair_and_restart(ns: str, driver: Callable[..., Driver]) -> None:
    run(ns, "iptables", "-P", "FORWARD", "DROP")
    a = driver(nftables=False, ip_masq=True, forward_rules=True)
    b = driver(nftables=False, ip_masq=True, forward_rules=True)
    a.call("setup", NET_A, POD_A, None, None)
    b.call("setup", NET_B, POD_B, None, None)

    def both() -> bool:
        return (blocks_in(chain(ns, "nat", "FLANNEL-POSTRTG"), masq_block(NET_A, POD_A), masq_block(NET_B, POD_B),
                          head=[MARK])
                and blocks_in(chain(ns, "filter", "FLANNEL-FWD"), fwd_block(NET_A), fwd_block(NET_B))
                and jumps(ns, "nat", "POSTROUTING", "FLANNEL-POSTRTG") == 1
                and jumps(ns, "filter", "FORWARD", "FLANNEL-FWD") == 1)

    assert both()
    assert chain(ns, "nat", "FLANNEL-POSTRTG") == [MARK, *masq_block(NET_A, POD_A), *masq_block(NET_B, POD_B)]
    # resync finds nothing to do for either: no ping-pong
    for _ in range(3):
        assert a.call("ensure") is False and b.call("ensure") is False
    # each restarts (setup again, same network): the other's rules stay, nothing to repair afterwards
    b.call("setup", NET_B, POD_B, NET_B, POD_B)
    a.call("setup", NET_A, POD_A, NET_A, POD_A)
    assert both() and a.call("ensure") is False and b.call("ensure") is False
    # the chains flushed by someone: each puts back its own
    run(ns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    run(ns, "iptables", "-t", "filter", "-F", "FLANNEL-FWD")
    assert a.call("ensure") is True
    assert chain(ns, "filter", "FLANNEL-FWD") == fwd_block(NET_A)
    assert b.call("ensure") is True
    assert both() and a.call("ensure") is False and b.call("ensure") is False
    # a foreign rule in the shared chain: whoever resyncs first removes it, the other has nothing to do
    run(ns, "iptables", "-t", "nat", "-I", "FLANNEL-POSTRTG", "-j", "ACCEPT")
    assert b.call("ensure") is True and a.call("ensure") is False and both()
    # instance A stops; B's resync keeps running and finds its rules untouched
    a.close()
    assert b.call("ensure") is False and both()


def test_iptables_recycling_keeps_the_rules_of_a_network_another_instance_serves(
        ns: str, driver: Callable[..., Driver]) -> None:
    b = driver(nftables=False, ip_masq=True, forward_rules=True)
    b.call("setup", NET_B, POD_B, None, None)
    # another instance whose subnet.env says it served NET_B (with another subnet) now serves NET_C
    old = driver(nftables=False, ip_masq=True, forward_rules=True)
    old.call("setup", NET_B, POD_B2, None, None)
    old.close()
    c = driver(nftables=False, ip_masq=True, forward_rules=True)
    c.call("setup", NET_C, "10.30.1.0/24", NET_B, POD_B2)
    rules = chain(ns, "nat", "FLANNEL-POSTRTG")
    assert not [ln for ln in rules if POD_B2 in ln], "the old subnet's rules are recycled"
    assert blocks_in(rules, masq_block(NET_B, POD_B), masq_block(NET_C, "10.30.1.0/24"), head=[MARK])
    assert blocks_in(chain(ns, "filter", "FLANNEL-FWD"), fwd_block(NET_B), fwd_block(NET_C))
    assert b.call("ensure") is False and c.call("ensure") is False
    # once NET_B's instance is gone, a restart recycles NET_B's forward rules as well
    b.close()
    d = driver(nftables=False, ip_masq=True, forward_rules=True)
    d.call("setup", NET_A, POD_A, NET_B, POD_B)
    assert blocks_in(chain(ns, "filter", "FLANNEL-FWD"), fwd_block(NET_C), fwd_block(NET_A))
    assert blocks_in(chain(ns, "nat", "FLANNEL-POSTRTG"), masq_block(NET_C, "10.30.1.0/24"),
                     masq_block(NET_A, POD_A), head=[MARK])


def test_nftables_two_networks_setup_resync_repair_and_release(ns: str, driver: Callable[..., Driver]) -> None:
    nft_available(ns)
    a = driver(nftables=True, ip_masq=True, forward_rules=True)
    b = driver(nftables=True, ip_masq=True, forward_rules=True)
    a.call("setup", NET_A, POD_A, None, None)
    b.call("setup", NET_B, POD_B, None, None)

    def both() -> bool:
        return (blocks_in(nft_chain(ns, "postrtg"), nft_masq_block(NET_A, POD_A), nft_masq_block(NET_B, POD_B),
                          head=[NFT_MARK])
                and blocks_in(nft_chain(ns, "forward"), nft_fwd_block(NET_A), nft_fwd_block(NET_B)))

    assert both()
    assert nft_chain(ns, "postrtg") == [NFT_MARK, *nft_masq_block(NET_A, POD_A), *nft_masq_block(NET_B, POD_B)]
    for _ in range(3):
        assert a.call("ensure") is False and b.call("ensure") is False
    b.call("setup", NET_B, POD_B, NET_B, POD_B)
    assert both() and a.call("ensure") is False
    run(ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
    assert b.call("ensure") is True and a.call("ensure") is True
    assert both() and a.call("ensure") is False and b.call("ensure") is False
    run(ns, "nft", "delete", "table", "ip", "flannel-ipv4")
    assert a.call("ensure") is True and b.call("ensure") is True and both()
    # A goes back to iptables mode: only A's nftables rules go, the table stays for B
    a.close()
    back = driver(nftables=False, ip_masq=True, forward_rules=True)
    back.call("setup", NET_A, POD_A, NET_A, POD_A)
    assert nft_chain(ns, "postrtg") == [NFT_MARK, *nft_masq_block(NET_B, POD_B)]
    assert nft_chain(ns, "forward") == nft_fwd_block(NET_B)
    assert b.call("ensure") is False
    # and B switches to iptables too: nothing of any network is left, flannel's tables go
    b.close()
    driver(nftables=False, ip_masq=True, forward_rules=True).call("setup", NET_B, POD_B, NET_B, POD_B)
    assert "flannel" not in run(ns, "nft", "list", "tables")
    assert blocks_in(chain(ns, "nat", "FLANNEL-POSTRTG"), masq_block(NET_A, POD_A), masq_block(NET_B, POD_B),
                     head=[MARK])


# ---- the lab: two flanneld per host ------------------------------------------------------------------

@dataclass
class Network:
    key: str  # "a" or "b"
    net: str
    prefix: str
    config: dict[str, object]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)


@dataclass
class Variant:
    backend: str
    nftables: bool
    networks: list[Network]


def variant(backend: str, nftables: bool) -> Variant:
    nets = []
    for key, net, port, vni in (("a", NET_A, 8285, 1), ("b", NET_B, 8286, 2)):
        backend_cfg: dict[str, object] = ({"Type": "udp", "Port": port} if backend == "udp"
                                          else {"Type": "vxlan", "VNI": vni})
        config: dict[str, object] = {"Network": net, "Backend": backend_cfg}
        if nftables:
            config["EnableNFTables"] = True
        nets.append(Network(key, net, f"/net-{key}", config))
    return Variant(backend, nftables, nets)


def subnet_file(lab: Lab, host: Host, net: Network) -> str:
    return os.path.join(lab.host_dir(host), f"subnet-{net.key}.env")


def log_file(lab: Lab, host: Host, net: Network) -> str:
    return os.path.join(lab.host_dir(host), f"flanneld-{net.key}.log")


def log_of(lab: Lab, host: Host, net: Network) -> str:
    with open(log_file(lab, host, net)) as f:
        return f.read()


def start(lab: Lab, host: Host, net: Network) -> None:
    cmd = lab.flanneld_command(host, ("-ip-masq", f"-iptables-resync={RESYNC:g}"), prefix=net.prefix,
                               subnet_file=subnet_file(lab, host, net))
    with open(log_file(lab, host, net), "ab") as log:
        net.procs[host.index] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)


def stop(host: Host, net: Network) -> None:
    proc = net.procs.pop(host.index)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def subnet_env(lab: Lab, host: Host, net: Network) -> dict[str, str]:
    path = subnet_file(lab, host, net)

    def read() -> dict[str, str] | None:
        proc = net.procs[host.index]
        assert proc.poll() is None, f"flanneld {net.prefix} on {host.ns} exited:\n{log_of(lab, host, net)[-3000:]}"
        if not os.path.exists(path):
            return None
        with open(path) as f:
            values = parse_subnet_env(f.read(), source=path)
        return values if values.get("FLANNEL_SUBNET") else None

    return wait_for(read, timeout=30, what=f"{path}")  # type: ignore[return-value]


def container_ns(lab: Lab, host: Host, net: Network) -> str:
    return f"{lab.name}-{net.key}{host.index}"


def container(lab: Lab, host: Host, net: Network, env: dict[str, str]) -> str:
    """A bridge for the network's subnet on the host and one container behind it; its address."""
    gw = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
    mtu, br, c = env["FLANNEL_MTU"], f"br-{net.key}", container_ns(lab, host, net)
    sh(["ip", "-n", host.ns, "link", "add", br, "type", "bridge"])
    sh(["ip", "-n", host.ns, "addr", "add", str(gw), "dev", br])
    sh(["ip", "-n", host.ns, "link", "set", br, "up", "mtu", mtu])
    ns_add(c)
    veth(c, "eth0", host.ns, f"v{net.key}{host.index}", mtu=int(mtu))
    sh(["ip", "-n", host.ns, "link", "set", f"v{net.key}{host.index}", "master", br])
    ip = str(gw.ip + 1)
    sh(["ip", "-n", c, "addr", "add", f"{ip}/{gw.network.prefixlen}", "dev", "eth0"])
    sh(["ip", "-n", c, "route", "add", "default", "via", str(gw.ip)])
    return ip


def ping(src_ns: str, dst: str) -> bool:
    res = sh(in_ns(src_ns, "ping", "-n", "-c", "1", "-W", "1", dst), check=False, timeout=10)
    return res.returncode == 0


def rules_of(host: Host, nftables: bool) -> tuple[list[str], list[str], int, int]:
    if nftables:
        return nft_chain(host.ns, "postrtg"), nft_chain(host.ns, "forward"), 0, 0
    return (chain(host.ns, "nat", "FLANNEL-POSTRTG"), chain(host.ns, "filter", "FLANNEL-FWD"),
            jumps(host.ns, "nat", "POSTROUTING", "FLANNEL-POSTRTG"), jumps(host.ns, "filter", "FORWARD", "FLANNEL-FWD"))


def expected(v: Variant, pods: dict[str, str], host_nets: list[Network]) -> Callable[[tuple], bool]:
    def ok(rules: tuple) -> bool:
        postrtg, fwd, jump_nat, jump_fwd = rules
        if v.nftables:
            return (blocks_in(postrtg, *(nft_masq_block(n.net, pods[n.key]) for n in host_nets), head=[NFT_MARK])
                    and blocks_in(fwd, *(nft_fwd_block(n.net) for n in host_nets)))
        return (blocks_in(postrtg, *(masq_block(n.net, pods[n.key]) for n in host_nets), head=[MARK])
                and blocks_in(fwd, *(fwd_block(n.net) for n in host_nets)) and jump_nat == 1 and jump_fwd == 1)
    return ok


def routes(host: Host, net: str) -> str:
    """Every route inside ``net`` (ours, the bridge's, the other instance's would not be here)."""
    return sh(["ip", "-n", host.ns, "route", "show", "root", net]).stdout


@pytest.mark.parametrize("v", [variant("udp", nftables=False), variant("vxlan", nftables=True)],
                         ids=["udp-iptables", "vxlan-nftables"])
def test_two_flanneld_per_host_for_two_networks(root: None, v: Variant) -> None:
    stop_everything(LAB)
    lab = Lab(name=LAB, hosts_n=2, backend=v.backend)
    try:
        lab.up(write_config=False)
        for h in lab.hosts:
            lab.stop_flanneld(h)  # the lab's own flanneld (its network is not used here)
            if v.nftables:
                nft_available(h.ns)
            else:
                run(h.ns, "iptables", "-P", "FORWARD", "DROP")  # as Docker sets it
        for net in v.networks:
            lab.put_config(json.dumps(net.config), prefix=net.prefix)
        for h in lab.hosts:
            for net in v.networks:
                start(lab, h, net)
        envs = {(h.index, n.key): subnet_env(lab, h, n) for h in lab.hosts for n in v.networks}
        pods = {(h.index, n.key): str(ipaddress.IPv4Interface(envs[h.index, n.key]["FLANNEL_SUBNET"]).network)
                for h in lab.hosts for n in v.networks}
        ips = {(h.index, n.key): container(lab, h, n, envs[h.index, n.key]) for h in lab.hosts for n in v.networks}
        h1, h2 = lab.hosts
        a, b = v.networks

        # both rule sets on every host, the mark rule once and first, one jump each
        checks = {h.index: expected(v, {n.key: pods[h.index, n.key] for n in v.networks}, v.networks)
                  for h in lab.hosts}
        for h in lab.hosts:
            wait_for(lambda h=h: checks[h.index](rules_of(h, v.nftables)), timeout=10,
                     what=f"both networks' rules on {h.ns}")

        # both networks carry traffic across hosts, through the FORWARD policy DROP
        for net in v.networks:
            for src, dst in ((h1, h2), (h2, h1)):
                wait_for(lambda src=src, dst=dst, net=net: ping(container_ns(lab, src, net), ips[dst.index, net.key]),
                         timeout=15, what=f"network {net.key}: container on {src.ns} -> {dst.ns}")

        # stable over several resync periods: not one line changes, nobody repairs anything
        snapshot = {h.index: rules_of(h, v.nftables) for h in lab.hosts}
        passed = time.monotonic() + 4 * RESYNC + 0.5
        while time.monotonic() < passed:
            for h in lab.hosts:
                assert rules_of(h, v.nftables) == snapshot[h.index], f"rules changed on {h.ns}"
            time.sleep(0.1)
        for h in lab.hosts:
            for net in v.networks:
                assert REPAIRED not in log_of(lab, h, net), f"{net.prefix} on {h.ns} repaired rules"

        # network A's flanneld on host 1 stops: B's rules, routes and traffic there are untouched
        b_routes = {h.index: routes(h, NET_B) for h in lab.hosts}
        before_stop = rules_of(h1, v.nftables)
        stop(h1, a)
        passed = time.monotonic() + 3 * RESYNC + 0.5
        while time.monotonic() < passed:
            assert rules_of(h1, v.nftables) == before_stop, "rules changed after A stopped"
            time.sleep(0.1)
        assert {h.index: routes(h, NET_B) for h in lab.hosts} == b_routes
        for src, dst in ((h1, h2), (h2, h1)):
            assert ping(container_ns(lab, src, b), ips[dst.index, b.key]), f"network b {src.ns} -> {dst.ns}"
        assert REPAIRED not in log_of(lab, h1, b)

        # A comes back on host 1: same subnet, nothing of B touched, A's traffic flows again
        start(lab, h1, a)
        assert subnet_env(lab, h1, a)["FLANNEL_SUBNET"] == envs[h1.index, a.key]["FLANNEL_SUBNET"]
        wait_for(lambda: log_of(lab, h1, a).count("traffic rules:") == 2, timeout=10, what="A's rules set up again")
        wait_for(lambda: ping(container_ns(lab, h2, a), ips[h1.index, a.key]), timeout=15,
                 what="network a: h2 -> h1 after A's restart")
        assert checks[h1.index](rules_of(h1, v.nftables))
        assert {h.index: routes(h, NET_B) for h in lab.hosts} == b_routes
        assert REPAIRED not in log_of(lab, h1, b)
    finally:
        lab.down()
    assert not [n for n in ns_list() if n.startswith(f"{LAB}-")]


def test_a_third_udp_network_on_a_taken_port_fails_clearly(root: None) -> None:
    v = variant("udp", nftables=False)
    stop_everything(LAB)
    lab = Lab(name=LAB, hosts_n=1, backend="udp")
    try:
        lab.up(write_config=False)
        h = lab.hosts[0]
        lab.stop_flanneld(h)
        a = v.networks[0]
        lab.put_config(json.dumps(a.config), prefix=a.prefix)
        same_port = Network("c", NET_C, "/net-c", {"Network": NET_C, "Backend": {"Type": "udp", "Port": 8285}})
        lab.put_config(json.dumps(same_port.config), prefix=same_port.prefix)
        start(lab, h, a)
        subnet_env(lab, h, a)
        start(lab, h, same_port)
        proc = same_port.procs[h.index]
        assert proc.wait(timeout=30) != 0
        text = log_of(lab, h, same_port)
        assert re.search(r"8285.*(another flanneld|pick another Port)", text), text[-2000:]
        assert a.procs[h.index].poll() is None
    finally:
        lab.down()
    assert not [n for n in ns_list() if n.startswith(f"{LAB}-")]
