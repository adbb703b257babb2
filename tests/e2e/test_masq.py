"""--ip-masq and the forward rules in a real kernel (docs/compatibility.md#iptables, #nftables): flannel's golden
`iptables -S` / `nft list` output inside a namespace of our own, resync after a flush, stale
rules recycled on a network change, and in the lab a container reaching a host outside the
overlay with its source masqueraded while container-to-container traffic keeps its address."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable

import pytest

from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns, ns_add, ns_delete, ns_list, sh

from .helpers import TrafficDriver, capture_one

NS = "pftm"
NET, POD = "10.244.0.0/16", "10.244.1.0/24"

Driver = TrafficDriver


def run(ns: str, *cmd: str, stdin: str | None = None) -> str:
    res = subprocess.run(in_ns(ns, *cmd), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}"
    return res.stdout


# ---- flannel's golden output (e2e/rules.go), as functions of the pod subnet and the network ------

def golden_postrtg(pod: str, net: str, rf: str = " --random-fully") -> str:
    c = '-m comment --comment "flanneld masq"'
    return "\n".join([
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
        "-N FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pod} -d {net} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} -d {pod} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {pod} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 {c} -j MASQUERADE{rf}",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {net} {c} -j MASQUERADE{rf}",
    ])


KUBE_FORWARD = [
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
    "-j KUBE-PROXY-FIREWALL",
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
    "-j KUBE-EXTERNAL-SERVICES",
]


def golden_forward(net: str) -> str:
    c = '-m comment --comment "flanneld forward"'
    return "\n".join(["-P FORWARD ACCEPT", *KUBE_FORWARD, f"-A FORWARD {c} -j FLANNEL-FWD", "-N FLANNEL-FWD",
                      f"-A FLANNEL-FWD -s {net} {c} -j ACCEPT", f"-A FLANNEL-FWD -d {net} {c} -j ACCEPT"])


def golden_nft_postrtg(pod: str, net: str) -> str:
    return "\n".join([
        "table ip flannel-ipv4 {", "\tchain postrtg {",
        '\t\tcomment "chain to manage traffic masquerading by flannel"',
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tmeta mark 0x00004000 return",
        f"\t\tip saddr {pod} ip daddr {net} return",
        f"\t\tip saddr {net} ip daddr {pod} return",
        f"\t\tip saddr != {pod} ip daddr {net} return",
        f"\t\tip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random",
        f"\t\tip saddr != {net} ip daddr {net} masquerade fully-random",
        "\t}", "}",
    ])


def golden_nft_forward(net: str) -> str:
    return "\n".join(["table ip flannel-ipv4 {", "\tchain forward {", '\t\tcomment "chain to accept flannel traffic"',
                      "\t\ttype filter hook forward priority filter; policy accept;",
                      f"\t\tip saddr {net} accept", f"\t\tip daddr {net} accept", "\t}", "}"])


def nat_flannel(ns: str) -> str:
    """What flannel's e2e reads: `iptables -t nat -S POSTROUTING | grep FLANNEL` + `-S FLANNEL-POSTRTG`."""
    post = [ln for ln in run(ns, "iptables", "-t", "nat", "-S", "POSTROUTING").splitlines() if "FLANNEL" in ln]
    return "\n".join(post + run(ns, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG").rstrip("\n").splitlines())


def filter_forward(ns: str) -> str:
    return (run(ns, "iptables", "-t", "filter", "-S", "FORWARD").rstrip("\n") + "\n"
            + run(ns, "iptables", "-t", "filter", "-S", "FLANNEL-FWD").rstrip("\n"))


def add_kube_proxy_forward_jumps(ns: str) -> None:
    chains = ["KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
    payload = "*filter\n" + "".join(f":{c} - [0:0]\n" for c in chains) + "\n".join(KUBE_FORWARD) + "\nCOMMIT\n"
    run(ns, "iptables-restore", "--noflush", stdin=payload)


# ---- iptables mode -------------------------------------------------------------------------------

def test_iptables_rules_are_flannels_golden(ns: str, driver: Callable[..., Driver]) -> None:
    add_kube_proxy_forward_jumps(ns)  # flannel's jump must land after kube-proxy's, as in its e2e
    tm = driver(nftables=False, ip_masq=True, forward_rules=True)
    tm.call("setup", NET, POD, None, None)
    assert nat_flannel(ns) == golden_postrtg(POD, NET)
    assert filter_forward(ns) == golden_forward(NET)
    whole = run(ns, "iptables", "-t", "nat", "-S").splitlines()
    assert whole == ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT",
                     *sorted(golden_postrtg(POD, NET).splitlines(), key=lambda ln: not ln.startswith("-N"))]
    assert tm.call("ensure") is False
    assert "FLANNEL-POSTRTG" in str(tm.call("describe"))


def test_random_fully_disable(ns: str, driver: Callable[..., Driver]) -> None:
    driver(nftables=False, ip_masq=True, forward_rules=False, random_fully=False).call("setup", NET, POD, None, None)
    assert nat_flannel(ns) == golden_postrtg(POD, NET, rf="")
    assert "FLANNEL" not in run(ns, "iptables", "-t", "filter", "-S")


def test_flushed_or_deleted_rules_come_back_on_ensure(ns: str, driver: Callable[..., Driver]) -> None:
    tm = driver(nftables=False, ip_masq=True, forward_rules=True)
    tm.call("setup", NET, POD, None, None)
    breakages = [
        ["-t", "nat", "-F", "FLANNEL-POSTRTG"],
        ["-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"],
        ["-t", "nat", "-D", "FLANNEL-POSTRTG", "-m", "mark", "--mark", "0x4000/0x4000", "-m", "comment",
         "--comment", "flanneld masq", "-j", "RETURN"],
        ["-t", "nat", "-I", "FLANNEL-POSTRTG", "-j", "ACCEPT"],
        ["-t", "filter", "-F", "FLANNEL-FWD"],
    ]
    for argv in breakages:
        run(ns, "iptables", *argv)
        assert tm.call("ensure") is True, argv
        assert nat_flannel(ns) == golden_postrtg(POD, NET), argv
        assert filter_forward(ns) == "\n".join(ln for ln in golden_forward(NET).splitlines()
                                               if "kubernetes" not in ln), argv
        assert tm.call("ensure") is False, argv
    # the whole nat table flushed: chain and jump are gone, both come back
    run(ns, "iptables", "-t", "nat", "-F")
    run(ns, "iptables", "-t", "nat", "-X", "FLANNEL-POSTRTG")
    assert tm.call("ensure") is True
    assert nat_flannel(ns) == golden_postrtg(POD, NET)
    assert "repairs 6" in str(tm.call("describe"))


def test_changed_network_or_subnet_recycles_stale_rules(ns: str, driver: Callable[..., Driver]) -> None:
    first = driver(nftables=False, ip_masq=True, forward_rules=True)
    first.call("setup", "10.5.0.0/16", "10.5.3.0/24", None, None)
    first.close()
    # a restart: subnet.env still names the old network and subnet
    second = driver(nftables=False, ip_masq=True, forward_rules=True)
    second.call("setup", NET, POD, "10.5.0.0/16", "10.5.3.0/24")
    assert nat_flannel(ns) == golden_postrtg(POD, NET)
    assert "10.5." not in run(ns, "iptables", "-t", "nat", "-S") + run(ns, "iptables", "-t", "filter", "-S")
    second.close()  # a restart: the previous process is gone (a live one would keep its rules)
    # only the subnet changed
    third = driver(nftables=False, ip_masq=True, forward_rules=True)
    third.call("setup", NET, "10.244.9.0/24", NET, POD)
    assert nat_flannel(ns) == golden_postrtg("10.244.9.0/24", NET)
    assert run(ns, "iptables", "-t", "nat", "-S").count("flanneld masq") == 7


# ---- nftables mode -------------------------------------------------------------------------------

def test_nftables_mode_golden_and_cleanup(ns: str, driver: Callable[..., Driver]) -> None:
    probe = subprocess.run(in_ns(ns, "nft", "list", "ruleset"), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the kernel has no nf_tables in network namespaces: nft list ruleset: {probe.stderr.strip()}")
    # a previous run in iptables mode left its chains; nftables mode removes them (docs/compatibility.md#lifecycle)
    driver(nftables=False, ip_masq=True, forward_rules=True).call("setup", NET, POD, None, None)
    tm = driver(nftables=True, ip_masq=True, forward_rules=True)
    tm.call("setup", NET, POD, None, None)
    assert "FLANNEL" not in run(ns, "iptables", "-t", "nat", "-S") + run(ns, "iptables", "-t", "filter", "-S")
    assert run(ns, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg").rstrip("\n") == golden_nft_postrtg(POD, NET)
    assert run(ns, "nft", "list", "chain", "ip", "flannel-ipv4", "forward").rstrip("\n") == golden_nft_forward(NET)
    table = run(ns, "nft", "list", "table", "ip", "flannel-ipv4")
    post, fwd = golden_nft_postrtg(POD, NET).splitlines(), golden_nft_forward(NET).splitlines()
    assert table == "\n".join([post[0], '\tcomment "rules for flannel-ipv4"', *post[1:-1], "", *fwd[1:]]) + "\n"
    assert "table ip6 flannel-ipv6" in run(ns, "nft", "list", "tables")
    assert tm.call("ensure") is False
    run(ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
    assert tm.call("ensure") is True
    assert run(ns, "nft", "list", "table", "ip", "flannel-ipv4") == table
    run(ns, "nft", "delete", "table", "ip", "flannel-ipv4")
    assert tm.call("ensure") is True
    assert run(ns, "nft", "list", "table", "ip", "flannel-ipv4") == table
    # back to iptables mode: flannel's nftables tables are deleted
    driver(nftables=False, ip_masq=True, forward_rules=True).call("setup", NET, POD, None, None)
    assert "flannel" not in run(ns, "nft", "list", "tables")
    assert nat_flannel(ns) == golden_postrtg(POD, NET)


# ---- the lab: masquerading a container's traffic to the outside ----------------------------------

def capture_echo(ns: str, iface: str, action: Callable[[], object], timeout: float = 5.0) -> str:
    """Run ``action`` while tcpdump in ``ns`` waits for one ICMP echo request; its line ("" if none)."""
    return capture_one(ns, iface, "icmp[icmptype] == icmp-echo", action, timeout)


def echo_source(line: str) -> str:
    m = re.search(r"IP (\S+) > (\S+): ICMP echo request", line)
    assert m, line
    return m[1]


OUTSIDE_NS, OUTSIDE_IP = "pftq-out", "198.18.0.200"


def test_lab_container_to_outside_is_masqueraded_but_not_to_containers(root: None) -> None:
    lab = Lab(name="pftq", hosts_n=2)
    try:
        lab.up()
        h1, h2 = lab.hosts
        ns_add(OUTSIDE_NS)  # a host on the underlay that knows nothing of 10.0.0.0/16
        lab._attach(OUTSIDE_NS, OUTSIDE_IP, "out")

        def ping_out() -> bool:
            res = sh(in_ns(h1.container_ns, "ping", "-n", "-c", "1", "-W", "2", OUTSIDE_IP), check=False)
            return res.returncode == 0

        # without --ip-masq the echo leaves with the container's address, and no reply can come back
        before: list[bool] = []
        line = capture_echo(OUTSIDE_NS, "eth0", lambda: before.append(ping_out()))
        assert echo_source(line) == h1.container_ip and before == [False]

        subnet = str(ipaddress.IPv4Interface(h1.subnet).network)
        tm = Driver(h1.ns, nftables=False, ip_masq=True, forward_rules=True)
        try:
            tm.call("setup", "10.0.0.0/16", subnet, None, None)
        finally:
            tm.close()
        assert nat_flannel(h1.ns) == golden_postrtg(subnet, "10.0.0.0/16")

        after: list[bool] = []
        line = capture_echo(OUTSIDE_NS, "eth0", lambda: after.append(ping_out()))
        assert echo_source(line) == h1.ip and after == [True]  # masqueraded to the host's underlay address

        # container to container inside 10.0.0.0/16 keeps its source address
        line = capture_echo(h2.container_ns, "eth0", lambda: lab.ping(h1, h2, count=1))
        assert echo_source(line) == h1.container_ip
        assert lab.ping(h1, h2, count=1)[0]
    finally:
        ns_delete(OUTSIDE_NS)
        lab.down()
    assert not [n for n in ns_list() if n.startswith("pftq-")]
