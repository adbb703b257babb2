"""Dual-stack labs of three hosts on vxlan and host-gw (``Lab(ipv6="dual")``): every container
pair reaches each other over IPv6 and IPv4; the lease JSON, key and subnet.env are Go's; deleting
a lease removes both families' entries; a restart keeps both subnets and loses no IPv6 ping."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator

import pytest

from pyflannel.daemon import LEASE_DELETE_GRACE_S
from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.ipv6 import NETWORK6, host_ip6
from pyflannel.lab.netns import in_ns, sh

from .helpers import all_pairs_ping, ip, log_text, ping_across_restart, wait_for


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def lab(request: pytest.FixtureRequest, make_lab) -> Iterator[Lab]:
    name = {"vxlan": "pf6v", "host-gw": "pf6g"}[request.param]
    with make_lab(name, 3, request.param, ipv6="dual", host_extra={i: ("-ip-masq",) for i in (1, 2, 3)}) as lab:
        yield lab


def env(lab: Lab, host) -> dict[str, str]:
    with open(lab.subnet_file(host)) as f:
        return dict(line.split("=", 1) for line in f.read().splitlines())


def subnet6(lab: Lab, host) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Interface(env(lab, host)["FLANNEL_IPV6_SUBNET"]).network


def key(lab: Lab, host) -> str:
    sn = ipaddress.IPv4Interface(env(lab, host)["FLANNEL_SUBNET"]).network
    sn6 = subnet6(lab, host)
    return f"{PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}&{sn6.network_address.compressed}-{sn6.prefixlen}"


def mac(host, dev: str) -> str:
    return ip(host.ns, "link", "show", dev).split("link/ether ")[1].split()[0]


def programmed6(lab: Lab, host, peer) -> bool:
    sn6 = subnet6(lab, peer)
    routes = ip(host.ns, "-6", "route", "show", str(sn6))
    if lab.backend == "host-gw":
        return f"via {host_ip6(peer.index)} dev eth0" in routes
    gw = str(sn6.network_address)
    return (f"via {gw} dev flannel-v6.1" in routes
            and f"{gw} lladdr {mac(peer, 'flannel-v6.1')}" in ip(host.ns, "-6", "neigh", "show", "dev", "flannel-v6.1")
            and f"dst {host_ip6(peer.index)}" in sh(["bridge", "-n", host.ns, "fdb", "show", "dev",
                                                      "flannel-v6.1"]).stdout)


def all_pairs_ping6(lab: Lab) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping6(a, b, 1)[0]]


def test_all_six_pairs_ping_over_ipv6_and_ipv4(lab: Lab) -> None:
    assert all(h.container_ip6 for h in lab.hosts)
    wait_for(lambda: all(programmed6(lab, a, b) for a in lab.hosts for b in lab.hosts if a is not b),
             what="every host's IPv6 entries for every peer")
    # the first IPv6 packets may wait on neighbour discovery and DAD of the new addresses: each pair
    # must answer within the deadline
    wait_for(lambda: all_pairs_ping6(lab) == [], timeout=15, what="all six IPv6 pairs to answer")
    assert all_pairs_ping(lab) == []


def test_lease_key_json_and_subnet_env_are_gos(lab: Lab) -> None:
    h = lab.hosts[0]
    e = env(lab, h)
    sn6 = subnet6(lab, h)
    assert list(e) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
                       "FLANNEL_MTU", "FLANNEL_IPMASQ"]
    assert e["FLANNEL_IPV6_NETWORK"] == NETWORK6 and e["FLANNEL_IPV6_SUBNET"] == f"{sn6.network_address + 1}/64"
    assert sn6.subnet_of(ipaddress.IPv6Network(NETWORK6))
    value = lab.etcdctl("get", key(lab, h), "--print-value-only").strip()
    pub6 = host_ip6(h.index)
    if lab.backend == "vxlan":
        assert value == (f'{{"PublicIP":"{h.ip}","PublicIPv6":"{pub6}","BackendType":"vxlan",'
                         f'"BackendData":{{"VNI":1,"VtepMAC":"{mac(h, "flannel.1")}"}},'
                         f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac(h, "flannel-v6.1")}"}}}}')
        assert f"{sn6.network_address}/128" in ip(h.ns, "-6", "addr", "show", "dev", "flannel-v6.1")
        assert "mtu 1430" in ip(h.ns, "link", "show", "flannel-v6.1")  # the kernel's IPv6 headroom (70)
        assert e["FLANNEL_MTU"] == "1450"  # as Go: MTU - 50 whatever the family
    else:
        assert value == f'{{"PublicIP":"{h.ip}","PublicIPv6":"{pub6}","BackendType":"host-gw"}}'


def test_deleted_lease_removes_both_families(lab: Lab) -> None:
    h1, h2, h3 = lab.hosts
    k3 = key(lab, h3)
    lab.stop_flanneld(h3)
    lab.etcdctl("del", k3)
    sn = env(lab, h3)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"

    def gone() -> bool:
        return all(not ip(h.ns, "-6", "route", "show", str(subnet6(lab, h3))).strip()
                   and not ip(h.ns, "route", "show", sn).strip() for h in (h1, h2))

    wait_for(gone, timeout=LEASE_DELETE_GRACE_S + 2, what="h3's IPv4 and IPv6 routes to go on h1 and h2")
    lab.start_flanneld(h3)  # back on the same subnets from its subnet.env
    wait_for(lambda: programmed6(lab, h1, h3) and programmed6(lab, h2, h3), what="h3 back")
    assert key(lab, h3) == k3
    wait_for(lambda: lab.ping6(h1, h3, 1)[0], what="ping6 h3")


def test_restart_keeps_both_subnets_and_loses_no_ipv6_ping(lab: Lab) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before = key(lab, h1)
    out = ping_across_restart(lab, h1, h2.container_ip6, ipv6=True)
    assert re.search(r"500 packets transmitted, 500 received", out), out
    assert key(lab, h1) == before
    assert "how=reused" in log_text(lab, h1).split("flannel is ready")[-2]


def test_ip6tables_rules_are_flannels_and_restored(lab: Lab) -> None:
    h = lab.hosts[0]
    sn6, net6 = str(subnet6(lab, h)), NETWORK6

    def rules() -> str:
        return sh(in_ns(h.ns, "ip6tables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG")).stdout

    want = [f'-A FLANNEL-POSTRTG -s {sn6} -d {net6} -m comment --comment "flanneld masq" -j RETURN',
            f'-A FLANNEL-POSTRTG -s {net6} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE '
            "--random-fully"]
    assert all(w in rules() for w in want), rules()
    fwd = sh(in_ns(h.ns, "ip6tables", "-w", "-S", "FLANNEL-FWD")).stdout
    assert f'-A FLANNEL-FWD -s {net6} -m comment --comment "flanneld forward" -j ACCEPT' in fwd
    sh(in_ns(h.ns, "ip6tables", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG"))
    wait_for(lambda: all(w in rules() for w in want), timeout=15, what="ip6tables rules restored")


def test_lab_status_names_the_ipv6_addresses(lab: Lab) -> None:
    rows = lab.status()
    assert [r["ip6"] for r in rows] == [host_ip6(h.index) for h in lab.hosts]
    assert json.loads(json.dumps(rows))  # plain data
