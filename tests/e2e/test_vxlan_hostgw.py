"""vxlan and host-gw end to end, on the shared kernel reconciler (3 hosts in namespaces)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyflannel.daemon import LEASE_DELETE_GRACE_S
from pyflannel.lab import ipv6
from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.demo import capture_one
from pyflannel.lab.netns import sh

from .helpers import all_pairs_ping, ip, lease_key, log_text, ping_across_restart, subnet_of, wait_for


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def lab(request: pytest.FixtureRequest, make_lab) -> Iterator[Lab]:
    name = {"vxlan": "pftv", "host-gw": "pftg"}[request.param]
    with make_lab(name, 3, request.param, subnet_max="10.0.199.0") as lab:
        yield lab


def programmed(lab: Lab, host, peer) -> bool:
    """Whether ``host`` has a route (and for vxlan the neighbour and FDB entry) for ``peer``."""
    sn = subnet_of(peer)
    routes = ip(host.ns, "route", "show", sn)
    if lab.backend == "host-gw":
        return f"via {peer.ip} dev eth0" in routes
    gw = sn.split("/")[0]
    mac = vtep_mac(lab, peer)
    return (f"via {gw} dev flannel.1" in routes and "onlink" in routes
            and f"{gw} lladdr {mac}" in ip(host.ns, "neigh", "show", "dev", "flannel.1")
            and f"{mac} dst {peer.ip}" in sh(["bridge", "-n", host.ns, "fdb", "show", "dev", "flannel.1"]).stdout)


def vtep_mac(lab: Lab, host) -> str:
    return ip(host.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0]


def test_all_six_pairs_ping(lab: Lab) -> None:
    assert all_pairs_ping(lab) == []
    assert all(programmed(lab, a, b) for a in lab.hosts for b in lab.hosts if a is not b)


def test_lease_json(lab: Lab) -> None:
    h = lab.hosts[0]
    value = lab.etcdctl("get", lease_key(h), "--print-value-only").strip()
    if lab.backend == "vxlan":
        assert value == (f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendType":"vxlan",'
                         f'"BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac(lab, h)}"}}}}')
        assert "mtu 1450" in ip(h.ns, "link", "show", "flannel.1")
        assert h.docker_opts.endswith("--mtu=1450")
    else:
        assert value == f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendType":"host-gw"}}'
        assert h.docker_opts.endswith("--mtu=1500")


def test_vxlan_traffic_is_udp_8472(lab: Lab) -> None:
    if lab.backend != "vxlan":
        pytest.skip("vxlan only")
    text = "\n".join(capture_one(lab, lab.hosts[0], lab.hosts[1], 8472))
    assert "-> 8472" in text and "VXLAN      vni 1" in text
    assert f"Inner IPv4 {lab.hosts[0].container_ip} -> {lab.hosts[1].container_ip}  proto ICMP" in text


def test_restart_loses_no_packet(lab: Lab) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    mac = vtep_mac(lab, h1) if lab.backend == "vxlan" else ""
    out = ping_across_restart(lab, h1, h2.container_ip)
    assert re.search(r"500 packets transmitted, 500 received", out), out
    if mac:
        assert vtep_mac(lab, h1) == mac, "the VTEP MAC survives a restart"
    assert "how=reused" in log_text(lab, h1).split("flannel is ready")[-2]


def test_deleted_lease_is_removed_everywhere_within_a_second_of_its_grace(lab: Lab) -> None:
    h1, h2, h3 = lab.hosts
    lab.stop_flanneld(h3)  # else h3 takes its deleted lease straight back
    lab.etcdctl("del", lease_key(h3))
    # a deletion takes effect LEASE_DELETE_GRACE_S later (its owner may put it back meanwhile)
    wait_for(lambda: not programmed(lab, h1, h3) and not programmed(lab, h2, h3), timeout=LEASE_DELETE_GRACE_S + 1,
             what="h3's route, neighbour and FDB entry to go")
    lab.start_flanneld(h3)  # back on the same subnet from its subnet.env
    wait_for(lambda: programmed(lab, h1, h3) and programmed(lab, h2, h3), what="h3 back")
    wait_for(lambda: lab.ping(h1, h3, 1)[0], what="ping h3")


def test_lease_added_while_stopped_is_programmed_on_return(lab: Lab) -> None:
    h1 = lab.hosts[0]
    lab.stop_flanneld(h1)
    data = {"VNI": 1, "VtepMAC": "02:42:42:42:42:42"} if lab.backend == "vxlan" else None
    value = {"PublicIP": "198.18.0.99", "PublicIPv6": None, "BackendType": lab.backend}
    if data:
        value["BackendData"] = data
    lab.etcdctl("put", f"{PREFIX}/subnets/10.0.250.0-24", json.dumps(value, separators=(",", ":")))
    try:
        lab.start_flanneld(h1)
        wait_for(lambda: "10.0.250.0/24" in ip(h1.ns, "route"), what="the new peer's route")
    finally:
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.250.0-24")
    wait_for(lambda: "10.0.250.0/24" not in ip(h1.ns, "route"), what="the removed peer's route to go")


def test_admin_route_in_overlay_range_survives(lab: Lab) -> None:
    h1 = lab.hosts[0]
    sh(["ip", "-n", h1.ns, "route", "add", "10.0.249.0/24", "via", "198.18.0.1", "dev", "eth0"])
    data = ',"BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:02:49"}' if lab.backend == "vxlan" else ""
    lease = f'{{"PublicIP":"198.18.0.98","PublicIPv6":null,"BackendType":"{lab.backend}"{data}}}'
    try:
        # a lease for exactly the admin's subnet: the fast path's exclusive add is refused, the
        # full run leaves the route alone and says so
        lab.etcdctl("put", f"{PREFIX}/subnets/10.0.249.0-24", lease)
        lab.etcdctl("put", f"{PREFIX}/subnets/10.0.248.0-24", lease)
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.248.0-24")  # our own route deleted: a full reconcile
        wait_for(lambda: "not replacing the existing route to 10.0.249.0/24" in log_text(lab, h1), timeout=5,
                 what="the warning about the admin's route")
        time.sleep(1)
        assert "10.0.249.0/24 via 198.18.0.1 dev eth0" in ip(h1.ns, "route")
    finally:
        sh(["ip", "-n", h1.ns, "route", "del", "10.0.249.0/24"], check=False)
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.249.0-24")


def test_hand_deleted_route_heals(lab: Lab) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    sh(["ip", "-n", h1.ns, "route", "del", subnet_of(h2)])
    # at once (the kernel monitor), not at the periodic check 10 s later
    wait_for(lambda: programmed(lab, h1, h2), timeout=3, what="the kernel monitor to restore the route")


def test_deleted_vxlan_device_heals_with_all_peers(lab: Lab) -> None:
    if lab.backend != "vxlan":
        pytest.skip("vxlan only")
    h1 = lab.hosts[0]
    mac = vtep_mac(lab, h1)
    sh(["ip", "-n", h1.ns, "link", "del", "flannel.1"])
    wait_for(lambda: all(programmed(lab, h1, p) for p in lab.hosts[1:]), timeout=5, what="flannel.1 rebuilt")
    assert vtep_mac(lab, h1) == mac, "recreated with the MAC the peers know"
    assert "10.0." in ip(h1.ns, "addr", "show", "flannel.1")
    wait_for(lambda: all_pairs_ping(lab) == [], timeout=5, what="all pairs again")


def test_foreign_device_named_flannel_1_is_refused_and_kept(lab: Lab) -> None:
    if lab.backend != "vxlan":
        pytest.skip("vxlan only")
    h3 = lab.hosts[2]
    lab.stop_flanneld(h3)
    sh(["ip", "-n", h3.ns, "link", "del", "flannel.1"])
    sh(["ip", "-n", h3.ns, "link", "add", "flannel.1", "type", "bridge"])
    try:
        res = subprocess.run(lab.flanneld_command(h3), capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert "a device named flannel.1 exists but is a bridge device" in res.stderr
        assert "bridge" in ip(h3.ns, "-d", "link", "show", "flannel.1")
    finally:
        sh(["ip", "-n", h3.ns, "link", "del", "flannel.1"], check=False)
    lab.start_flanneld(h3)
    wait_for(lambda: all(programmed(lab, h3, p) for p in lab.hosts[:2]), what="h3 rebuilt")


def test_hostgw_refuses_nat(lab: Lab) -> None:
    if lab.backend != "host-gw":
        pytest.skip("host-gw only")
    h = lab.hosts[0]
    cmd = lab.flanneld_command(h, ("-iface=eth0", "-public-ip=203.0.113.7", "-subnet-file=/dev/null/x"))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "your PublicIP differs from interface IP, meaning that probably you're on a NAT" in res.stderr


def test_vxlan_direct_routing() -> None:
    """Dual stack: each family's route to a peer on our L2 segment goes via its public address of
    that family, on eth0, not through flannel.1 / flannel-v6.1 (Go's directRoute / v6DirectRoute)."""
    lab = Lab(name="pftr", hosts_n=2, backend="vxlan", ipv6="dual")
    try:
        lab.up(config=json.dumps(ipv6.config({"Network": "10.0.0.0/16",
                                              "Backend": {"Type": "vxlan", "DirectRouting": True}})))
        h1, h2 = lab.hosts
        for a, b in ((h1, h2), (h2, h1)):
            wait_for(lambda a=a, b=b: f"via {b.ip} dev eth0" in ip(a.ns, "route", "show", subnet_of(b)),
                     what="a direct route to the peer on our L2 segment")
            gw6 = ipv6.subnet6(lab.subnet_file(b))
            assert gw6 is not None
            sn6 = str(gw6.network)
            wait_for(lambda a=a, sn6=sn6, b=b: f"via {ipv6.host_ip6(b.index)} dev eth0"
                     in ip(a.ns, "-6", "route", "show", sn6), what="a direct IPv6 route via the peer's PublicIPv6")
            assert "flannel" not in ip(a.ns, "-6", "route", "show", sn6)
            assert ip(a.ns, "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent").strip() == ""
        assert all_pairs_ping(lab) == []
        assert lab.ping6(h1, h2)[0] and lab.ping6(h2, h1)[0]
    finally:
        lab.down()


def test_lease_of_another_backend_is_skipped_with_one_warning(lab: Lab) -> None:
    h1 = lab.hosts[0]
    key = f"{PREFIX}/subnets/10.0.247.0-24"
    lab.etcdctl("put", key, '{"PublicIP":"198.18.0.97","PublicIPv6":null}')  # a udp lease
    try:
        wait_for(lambda: "skipping peer 10.0.247.0/24" in log_text(lab, h1), what="the warning")
        lab.etcdctl("put", key, '{"PublicIP":"198.18.0.97","PublicIPv6":null}')  # renewed: no second warning
        time.sleep(1)
        assert log_text(lab, h1).count("skipping peer 10.0.247.0/24") == 1
        assert "10.0.247.0/24" not in ip(h1.ns, "route")
        assert all_pairs_ping(lab) == []
    finally:
        lab.etcdctl("del", key)
