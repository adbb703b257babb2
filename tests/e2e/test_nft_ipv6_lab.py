"""IPv6 rules in nftables mode (``EnableNFTables``) in a dual-stack lab (docs/compatibility.md#nftables):
flanneld fills ``ip6 flannel-ipv6`` with flannel's postrtg and forward rules, a container's IPv6
traffic leaving the network is masqueraded to its host's address, a ``nft flush ruleset`` or a
deleted table is repaired by the resync, a restart on a changed IPv6Network leaves no rule of the
old one; and, in a bare namespace, switching the IPv6 rules between ip6tables and nftables moves
them, releasing only the ip6 table."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator

import pytest

from pyflannel.lab.cluster import Lab
from pyflannel.lab.ipv6 import NETWORK6, config, host_ip6
from pyflannel.lab.netns import in_ns, ns_add, ns_delete, sh

from .helpers import TrafficDriver, capture_one, log_text, wait_for
from .test_ipv6_lab import restart_on_another_ipv6_network, subnet6

NAME = "pf6n"
NS = "pftm6"  # the bare namespace of the release test (conftest's ``ns``)
NET6, POD6 = "2001:db8:77::/56", "2001:db8:77:3::/64"
OUTSIDE_NS, OUTSIDE_IP, OUTSIDE_IP6 = f"{NAME}-out", "198.18.0.201", "2001:db8::c8"


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    probe = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False)
    if probe.returncode:
        pytest.skip(f"no nf_tables: nft list ruleset: {probe.stderr.strip()}")
    cfg = json.dumps(config({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan"}, "EnableNFTables": True}))
    flags = ("-ip-masq", "-iptables-resync=1")
    with make_lab(NAME, 2, "vxlan", ipv6="dual", config=cfg, host_extra={1: flags, 2: flags}) as lab:
        yield lab


def table6(lab: Lab) -> str:
    res = sh(in_ns(lab.hosts[0].ns, "nft", "list", "table", "ip6", "flannel-ipv6"), check=False)
    return res.stdout if res.returncode == 0 else ""


def wanted6(lab: Lab) -> list[str]:
    sn6, net6 = subnet6(lab, lab.hosts[0]), NETWORK6
    return ["meta mark 0x00004000 return",
            f"ip6 saddr {sn6} ip6 daddr {net6} return",
            f"ip6 saddr {net6} ip6 daddr {sn6} return",
            f"ip6 saddr != {sn6} ip6 daddr {net6} return",
            f"ip6 saddr {net6} ip6 daddr != ff00::/8 masquerade fully-random",
            f"ip6 saddr != {net6} ip6 daddr {net6} masquerade fully-random",
            f"ip6 saddr {net6} accept", f"ip6 daddr {net6} accept"]


def in_order(lab: Lab) -> bool:
    got = [ln.strip() for ln in table6(lab).splitlines()]
    rules = [ln for ln in got if ln in set(wanted6(lab))]
    return rules == wanted6(lab)


def test_ip6_table_holds_flannels_rules_and_no_warning(lab: Lab) -> None:
    assert in_order(lab), table6(lab)
    assert 'chain postrtg {' in table6(lab) and "type nat hook postrouting priority srcnat" in table6(lab)
    assert "not set up in nftables mode" not in log_text(lab, lab.hosts[0])


def capture_echo6(ns: str, action: Callable[[], object], timeout: float = 5.0) -> str:
    """Run ``action`` while tcpdump in ``ns`` waits for one ICMPv6 echo request; its line ("" if none)."""
    return capture_one(ns, "eth0", "icmp6 and ip6[40] == 128", action, timeout)


def test_container_ipv6_to_outside_is_masqueraded(lab: Lab) -> None:
    h1 = lab.hosts[0]
    try:
        ns_add(OUTSIDE_NS)  # a host on the underlay that has no route to the overlay's IPv6 network
        lab._attach(OUTSIDE_NS, OUTSIDE_IP, "out")
        sh(["ip", "-n", OUTSIDE_NS, "-6", "addr", "add", f"{OUTSIDE_IP6}/64", "dev", "eth0", "nodad"])
        ok: list[bool] = []

        def ping() -> None:
            res = sh(in_ns(h1.container_ns, "ping", "-6", "-n", "-c", "1", "-W", "2", OUTSIDE_IP6), check=False)
            ok.append(res.returncode == 0)

        line = capture_echo6(OUTSIDE_NS, ping)
        m = re.search(r"IP6 (\S+) > (\S+): ICMP6, echo request", line)
        assert m, line
        assert m[1] == host_ip6(h1.index) and ok == [True], (line, ok)
    finally:
        ns_delete(OUTSIDE_NS)


def test_flush_ruleset_and_deleted_table_are_repaired(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    sh(in_ns(ns, "nft", "flush", "ruleset"))
    assert not in_order(lab)
    wait_for(lambda: in_order(lab), timeout=20, what="ip6 flannel-ipv6 rules restored after a flush")
    sh(in_ns(ns, "nft", "delete", "table", "ip6", "flannel-ipv6"))
    wait_for(lambda: in_order(lab), timeout=20, what="ip6 flannel-ipv6 table restored after a delete")
    assert "ip saddr 10.0.0.0/16 accept" in sh(in_ns(ns, "nft", "list", "table", "ip", "flannel-ipv4")).stdout


def test_switching_modes_moves_the_ipv6_rules_and_releases_only_the_ip6_table(
        ns: str, driver: Callable[..., TrafficDriver]) -> None:
    if subprocess.run(in_ns(ns, "nft", "list", "ruleset"), capture_output=True, check=False).returncode:
        pytest.skip("no nf_tables in network namespaces")
    masq = f'-A FLANNEL-POSTRTG -s {NET6} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE'

    def ip6tables_nat() -> str:
        return sh(in_ns(ns, "ip6tables", "-w", "-t", "nat", "-S")).stdout

    def tables() -> str:
        return sh(in_ns(ns, "nft", "list", "tables")).stdout

    driver(nftables=False, ip_masq=True, forward_rules=True, family=6).call("setup", NET6, POD6, None, None)
    assert masq in ip6tables_nat()
    driver(nftables=True, ip_masq=True, forward_rules=True).call("setup", "10.244.0.0/16", "10.244.1.0/24", None,
                                                                  None)
    driver(nftables=True, ip_masq=True, forward_rules=True, family=6).call("setup", NET6, POD6, None, None)
    assert "FLANNEL-POSTRTG" not in ip6tables_nat()  # nftables mode: our ip6tables rules and chain are gone
    table = sh(in_ns(ns, "nft", "list", "table", "ip6", "flannel-ipv6")).stdout
    assert f"ip6 saddr {NET6} ip6 daddr != ff00::/8 masquerade" in table and f"ip6 daddr {NET6} accept" in table
    # back to ip6tables: the ip6 table goes, the IPv4 network's ip table stays
    driver(nftables=False, ip_masq=True, forward_rules=True, family=6).call("setup", NET6, POD6, None, None)
    assert masq in ip6tables_nat()
    assert "table ip6 flannel-ipv6" not in tables() and "table ip flannel-ipv4" in tables()


def test_a_changed_ipv6_network_leaves_no_nft_rule_of_the_old_one(lab: Lab) -> None:
    h = lab.hosts[-1]

    def rules() -> str:
        return sh(in_ns(h.ns, "nft", "list", "table", "ip6", "flannel-ipv6")).stdout

    restart_on_another_ipv6_network(lab, h, rules)
