"""Dual-stack and IPv6-only labs of three hosts on vxlan and host-gw, and IPv6-only on wireguard
(``Lab(ipv6="dual"|"only")``; the dual-stack wireguard lab is test_wireguard_lab.py): every
container pair reaches each other over IPv6 (and IPv4 in dual stack); the lease JSON, key and
subnet.env are Go's; deleting a lease removes its entries (both families'; wireguard: its peer); a
restart keeps the subnets and loses no IPv6 ping (wireguard: wireguard-go and its device outlive
flanneld); a restart on a changed IPv6Network leaves no ip6tables rule of the old one. IPv6-only
also: no IPv4 state at all, a malformed peer lease is skipped with one warning,
and an interface without IPv6 is named with the fix."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator

import pytest

from pyflannel.daemon import LEASE_DELETE_GRACE_S
from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.ipv6 import NETWORK6, host_ip6
from pyflannel.lab.netns import in_ns, sh

from .helpers import all_pairs_ping, ip, log_text, ping_across_restart, wait_for, wireguard_go_pids


@pytest.fixture(scope="module", params=[("vxlan", "dual"), ("host-gw", "dual"), ("vxlan", "only"),
                                        ("host-gw", "only"), ("wireguard", "only")], ids=lambda p: f"{p[0]}-{p[1]}")
def lab(request: pytest.FixtureRequest, make_lab) -> Iterator[Lab]:
    backend, mode = request.param
    if backend == "wireguard" and (shutil.which("wireguard-go") is None or shutil.which("wg") is None):
        pytest.skip("needs wireguard-go and wireguard-tools (make setup installs them)")
    name = {"vxlan": "pf6v", "host-gw": "pf6g", "wireguard": "pf6w"}[backend] + ("o" if mode == "only" else "")
    with make_lab(name, 3, backend, ipv6=mode, host_extra={i: ("-ip-masq",) for i in (1, 2, 3)}) as lab:
        yield lab


def only(lab: Lab) -> bool:
    return lab.ipv6 == "only"


def env(lab: Lab, host) -> dict[str, str]:
    with open(lab.subnet_file(host)) as f:
        return dict(line.split("=", 1) for line in f.read().splitlines())


def subnet6(lab: Lab, host) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Interface(env(lab, host)["FLANNEL_IPV6_SUBNET"]).network


def key(lab: Lab, host) -> str:
    # IPv6-only: Go's MakeSubnetKey with an empty IPv4 subnet, 0.0.0.0-0
    sn = (ipaddress.IPv4Network("0.0.0.0/0") if only(lab)
          else ipaddress.IPv4Interface(env(lab, host)["FLANNEL_SUBNET"]).network)
    sn6 = subnet6(lab, host)
    return f"{PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}&{sn6.network_address.compressed}-{sn6.prefixlen}"


WG6 = "flannel-wg-v6"  # Mode "separate" (Go's default) on an IPv6-only network: this device alone


def mac(host, dev: str) -> str:
    return ip(host.ns, "link", "show", dev).split("link/ether ")[1].split()[0]


def wg_public_key(lab: Lab, host) -> str:
    return lab.wg(host, "show", WG6, "public-key").strip()


def wg_allowed(lab: Lab, host) -> dict[str, str]:
    """flannel-wg-v6's peers on ``host``: public key -> allowed IPs."""
    return dict(line.split("\t", 1) for line in lab.wg(host, "show", WG6, "allowed-ips").splitlines() if line)


def programmed6(lab: Lab, host, peer) -> bool:
    sn6 = subnet6(lab, peer)
    if lab.backend == "wireguard":  # no route per peer: a peer with the subnet as its allowed IPs
        return wg_allowed(lab, host).get(wg_public_key(lab, peer)) == str(sn6)
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
    if only(lab):  # no IPv4 anywhere in the overlay: no container address, no flannel route or device
        h = lab.hosts[0]
        assert all(not x.container_ip for x in lab.hosts)
        assert "proto 151" not in ip(h.ns, "route", "show") and "flannel.1" not in ip(h.ns, "link", "show")
        if lab.backend == "wireguard":  # flannel-wg-v6 alone, on ListenPortV6, routing the IPv6 network
            assert "flannel-wg:" not in ip(h.ns, "link", "show") and len(wireguard_go_pids(h)) == 1
            assert lab.wg(h, "show", WG6, "listen-port").strip() == "51821"
            assert f"{NETWORK6} dev {WG6}" in ip(h.ns, "-6", "route", "show", NETWORK6)
            assert "inet " not in ip(h.ns, "addr", "show", "dev", WG6)
            endpoints = lab.wg(h, "show", WG6, "endpoints")
            assert all(f"[{host_ip6(o.index)}]:51821" in endpoints for o in lab.hosts if o is not h), endpoints
    else:
        assert all_pairs_ping(lab) == []


def test_lease_key_json_and_subnet_env_are_gos(lab: Lab) -> None:
    h = lab.hosts[0]
    e = env(lab, h)
    sn6 = subnet6(lab, h)
    v4 = [] if only(lab) else ["FLANNEL_NETWORK", "FLANNEL_SUBNET"]  # Go writes them only with EnableIPv4
    assert list(e) == [*v4, "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
    assert e["FLANNEL_IPV6_NETWORK"] == NETWORK6 and e["FLANNEL_IPV6_SUBNET"] == f"{sn6.network_address + 1}/64"
    assert sn6.subnet_of(ipaddress.IPv6Network(NETWORK6))
    value = lab.etcdctl("get", key(lab, h), "--print-value-only").strip()
    pub6 = host_ip6(h.index)
    pub = "0.0.0.0" if only(lab) else h.ip  # Go's zero IP4 when EnableIPv4 is false
    if lab.backend == "vxlan":
        v4data = "" if only(lab) else f'"BackendData":{{"VNI":1,"VtepMAC":"{mac(h, "flannel.1")}"}},'
        assert value == (f'{{"PublicIP":"{pub}","PublicIPv6":"{pub6}","BackendType":"vxlan",{v4data}'
                         f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac(h, "flannel-v6.1")}"}}}}')
        assert f"{sn6.network_address}/128" in ip(h.ns, "-6", "addr", "show", "dev", "flannel-v6.1")
        assert "mtu 1430" in ip(h.ns, "link", "show", "flannel-v6.1")  # the kernel's IPv6 headroom (70)
        assert e["FLANNEL_MTU"] == "1450"  # as Go: MTU - 50 whatever the family
    elif lab.backend == "wireguard":  # Go's newSubnetAttrs with EnableIPv4 false: BackendV6Data alone
        assert value == (f'{{"PublicIP":"{pub}","PublicIPv6":"{pub6}","BackendType":"wireguard",'
                         f'"BackendV6Data":{{"PublicKey":"{wg_public_key(lab, h)}","Port":51821}}}}')
        assert f"{sn6.network_address}/128" in ip(h.ns, "-6", "addr", "show", "dev", WG6)
        assert e["FLANNEL_MTU"] == "1420" and "mtu 1420" in ip(h.ns, "link", "show", WG6)
    else:
        assert value == f'{{"PublicIP":"{pub}","PublicIPv6":"{pub6}","BackendType":"host-gw"}}'
    if only(lab):  # flannelctl status finds our lease by FLANNEL_IPV6_SUBNET
        # (wireguard: with the host's own /run/wireguard, where its wireguard-go's socket is)
        res = sh(in_ns(h.ns, *lab.host_wrapper(h), os.path.join(os.path.dirname(sys.executable), "flannelctl"),
                       f"-etcd-endpoints={lab.etcd_endpoint}", f"-etcd-prefix={PREFIX}",
                       f"-subnet-file={lab.subnet_file(h)}", "status"), check=False)
        assert res.returncode == 0 and f"lease       {sn6} public IP {pub6}" in res.stdout, res.stdout + res.stderr
        if lab.backend == "wireguard":  # each peer named by its lease's IPv6 subnet (BackendV6Data's key)
            assert f"devices     {WG6} up mtu 1420" in res.stdout, res.stdout
            assert all(f"peer      {subnet6(lab, o)} [{host_ip6(o.index)}]:51821 " in res.stdout
                       for o in lab.hosts if o is not h), res.stdout


def test_deleted_lease_removes_both_families(lab: Lab) -> None:
    h1, h2, h3 = lab.hosts
    k3 = key(lab, h3)
    wg3 = wg_public_key(lab, h3) if lab.backend == "wireguard" else ""
    lab.stop_flanneld(h3)
    lab.etcdctl("del", k3)
    sn = "" if only(lab) else env(lab, h3)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"

    def gone() -> bool:
        if wg3:  # its peer, by its public key
            return all(wg3 not in wg_allowed(lab, h) and len(wg_allowed(lab, h)) == 1 for h in (h1, h2))
        return all(not ip(h.ns, "-6", "route", "show", str(subnet6(lab, h3))).strip()
                   and not (sn and ip(h.ns, "route", "show", sn).strip()) for h in (h1, h2))

    wait_for(gone, timeout=LEASE_DELETE_GRACE_S + 2, what="h3's IPv4 and IPv6 routes to go on h1 and h2")
    lab.start_flanneld(h3)  # back on the same subnets from its subnet.env
    wait_for(lambda: programmed6(lab, h1, h3) and programmed6(lab, h2, h3), what="h3 back")
    assert key(lab, h3) == k3
    wait_for(lambda: lab.ping6(h1, h3, 1)[0], what="ping6 h3")


def test_restart_keeps_both_subnets_and_loses_no_ipv6_ping(lab: Lab) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    before, pids = key(lab, h1), wireguard_go_pids(h1)
    out = ping_across_restart(lab, h1, h2.container_ip6, ipv6=True)
    assert re.search(r"500 packets transmitted, 500 received", out), out
    assert key(lab, h1) == before
    assert "how=reused" in log_text(lab, h1).split("flannel is ready")[-2]
    if lab.backend == "wireguard":  # wireguard-go outlives flanneld: the device and its peers are kept
        assert wireguard_go_pids(h1) == pids and len(pids) == 1
        assert f"keeping {WG6} (wireguard-go) and its peers" in log_text(lab, h1).split("flannel is ready")[-2]


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
    if only(lab):  # IPv6 rules only: iptables has no flannel chain
        assert "FLANNEL" not in sh(in_ns(h.ns, "iptables", "-w", "-t", "nat", "-S")).stdout
    sh(in_ns(h.ns, "ip6tables", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG"))
    wait_for(lambda: all(w in rules() for w in want), timeout=15, what="ip6tables rules restored")


def test_lab_status_names_the_ipv6_addresses(lab: Lab) -> None:
    rows = lab.status()
    assert [r["ip6"] for r in rows] == [host_ip6(h.index) for h in lab.hosts]
    assert json.loads(json.dumps(rows))  # plain data


def test_ipv6_only_malformed_peer_lease_is_skipped_with_one_warning(lab: Lab) -> None:
    if not only(lab) or lab.backend == "wireguard":
        pytest.skip("IPv6-only; leases are screened alike whatever the backend")
    h1, h2 = lab.hosts[0], lab.hosts[1]
    bad, marker = f"{PREFIX}/subnets/0.0.0.0-0&2001:db8:42:ff::-64", f"{PREFIX}/subnets/0.0.0.0-0&2001:db8:42:fe::-64"
    for pip6 in ("2001:db8::zz", "2001:db8::zy"):  # written twice: still one warning
        lab.etcdctl("put", bad, f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{pip6}","BackendType":"{lab.backend}"}}')
    v6data = ',"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}' if lab.backend == "vxlan" else ""
    lab.etcdctl("put", marker, f'{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::99","BackendType":"{lab.backend}"'
                               f"{v6data}}}")
    try:
        # the watch delivers in order: once the good lease after them is programmed, both bad puts were seen
        wait_for(lambda: "2001:db8:42:fe::/64" in ip(h1.ns, "-6", "route", "show"), what="the good lease's route")
        assert log_text(lab, h1).count(f"skipping bad lease key={bad}") == 1
        assert "2001:db8:42:ff::" not in ip(h1.ns, "-6", "route", "show")
        assert lab.ping6(h1, h2, 1)[0]  # the other peers are kept
    finally:
        lab.etcdctl("del", bad)
        lab.etcdctl("del", marker)
    wait_for(lambda: "2001:db8:42:fe::" not in ip(h1.ns, "-6", "route", "show"), what="the good lease's route gone")


def test_ipv6_only_interface_without_ipv6_is_named_with_the_fix(lab: Lab) -> None:
    if not only(lab) or lab.backend != "vxlan":
        pytest.skip("IPv6-only, once")
    # the etcd namespace's eth0 has an IPv4 address only
    res = sh(in_ns(lab.etcd_ns, *lab.flanneld_binary(lab.hosts[0]), f"-etcd-endpoints={lab.etcd_endpoint}",
                   f"-etcd-prefix={PREFIX}", "-iface=eth0", f"--subnet-file={lab.state_dir}/noipv6.env"),
             check=False, timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "interface eth0 has no usable IPv6 address: give it a global one (ip -6 addr add ADDR/64 dev eth0)" in out
    assert "Traceback" not in out


OTHER_PREFIX, OTHER6 = "/pfl-v6other/network", "2001:db8:43::/56"


def restart_on_another_ipv6_network(lab: Lab, host, rules: Callable[[], str]) -> None:
    """Restart ``host`` on a network whose IPv6Network changed (that config under another etcd
    prefix), then back: each start deletes the rules of the IPv6 network (and subnet) its previous
    subnet.env names (Go's prevIPv6Network/prevIPv6Subnet) and sets up the new network's."""
    cfg = json.loads(lab.etcdctl("get", f"{PREFIX}/config", "--print-value-only"))
    lab.put_config(json.dumps({**cfg, "IPv6Network": OTHER6}), prefix=OTHER_PREFIX)
    for prefix, net6, left in ((OTHER_PREFIX, OTHER6, "2001:db8:42:"), (PREFIX, NETWORK6, "2001:db8:43:")):
        assert left in rules(), rules()  # the rules of the network about to be left are there
        lab.stop_flanneld(host)
        lab.start_flanneld(host, prefix=prefix)
        wait_for(lambda net6=net6: env(lab, host).get("FLANNEL_IPV6_NETWORK") == net6, timeout=30,
                 what=f"{host.ns} up on {net6}")
        now = rules()
        assert left not in now and net6 in now, now


def test_a_changed_ipv6_network_leaves_no_ip6tables_rule_of_the_old_one(lab: Lab) -> None:
    if lab.backend != "vxlan" or only(lab):
        pytest.skip("once, in the dual-stack vxlan lab (the nftables twin: test_nft_ipv6_lab)")
    h = lab.hosts[-1]

    def rules() -> str:
        return "".join(sh(in_ns(h.ns, "ip6tables", "-w", "-t", t, "-S")).stdout for t in ("nat", "filter"))

    restart_on_another_ipv6_network(lab, h, rules)
    wait_for(lambda: programmed6(lab, lab.hosts[0], h), what="h3 back on its IPv6 subnet")
