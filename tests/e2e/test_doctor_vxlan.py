"""`flannelctl doctor` on a vxlan lab host: healthy, then a neighbour and an FDB entry deleted by
hand, and UDP checksums made wrong on the way out (the vxlan checksum-offload fault, made for
real: the underlay veth computes checksums in software after an nftables rule has changed the
inner UDP checksum's seed, so the peer's kernel drops the datagram while ping passes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.netns import sh

from .helpers import log_text, subnet_of, wait_for
from .test_doctor import doctor, flanneld_paused, problem


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfdv", 2, "vxlan") as lab:
        yield lab


def in_ns(ns: str, code: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, timeout=30)


def test_healthy_vxlan_host_is_all_ok(lab: Lab) -> None:
    rc, checks = doctor(lab)
    assert rc == 0 and {c["level"] for cs in checks.values() for c in cs} == {"ok"}, checks
    assert checks["neigh/fdb"][0]["text"] == "all 1 peer(s) have their neighbour and FDB entry on flannel.1"
    assert checks["peers"][0]["text"] == "all 1 peer(s) answer through the overlay (udp/8472)"
    assert checks["checksum"][0]["text"].startswith("UDP through flannel.1 arrives intact at 1 peer(s)")


def test_neighbour_and_fdb_entry_deleted_by_hand(lab: Lab) -> None:
    ns, peer = lab.hosts[0].ns, lab.hosts[1]
    gw = subnet_of(peer).split("/")[0]
    with flanneld_paused(lab):
        mac = sh(["ip", "-n", ns, "neigh", "show", gw, "dev", "flannel.1"]).stdout.split("lladdr ")[1].split()[0]
        sh(["ip", "-n", ns, "neigh", "del", gw, "dev", "flannel.1"])
        sh(["bridge", "-n", ns, "fdb", "del", mac, "dev", "flannel.1", "dst", peer.ip])
        rc, checks = doctor(lab)
    wait_for(lambda: mac in sh(["ip", "-n", ns, "neigh", "show", "dev", "flannel.1"]).stdout,
             what="flanneld's repair")
    text = problem(checks, "neigh/fdb")["text"]
    assert rc == 1, checks
    assert f"1 neighbour entry missing or wrong ({gw} lladdr {mac} missing)" in text, text
    assert f"1 FDB entry missing or wrong ({mac} dst {peer.ip} missing)" in text, text


def test_bad_udp_checksums_are_named(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    nft = ["ip", "netns", "exec", ns, "nft"]
    # bits from the outer IPv4 header: the inner IPv4 header starts at byte 50 (outer IP 20 + UDP 8 +
    # VXLAN 8 + Ethernet 14), so its protocol is at 59, the inner UDP dport at 72, its checksum at 76
    sh([*nft, "add", "table", "ip", "pfdv"])
    try:
        in_ns(ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('eth0', False)")
        sh([*nft, "add", "chain", "ip", "pfdv", "post", "{ type filter hook postrouting priority 0; }"])
        sh([*nft, "add", "rule", "ip", "pfdv", "post", "udp dport 8472 @nh,472,8 17 @nh,576,16 33434 "
            "@nh,608,16 set 0xdead"])
        rc, checks = doctor(lab)
    finally:
        sh([*nft, "delete", "table", "ip", "pfdv"])
        in_ns(ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('eth0', True)")
    found = problem(checks, "checksum")
    assert rc == 1 and "ping passes through flannel.1 but UDP does not arrive intact at 1 of 1 peer(s)" in found["text"]
    assert found["fix"].startswith("ethtool -K flannel.1 tx-checksum-ip-generic off")
    assert checks["peers"][0]["level"] == "ok", "ping still passes: only the checksum is named"


def trace(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    h = lab.hosts[0]
    out = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-m", "pyflannel.cli.flannelctl",
                          f"-etcd-endpoints={lab.etcd_endpoint}", f"-etcd-prefix={PREFIX}", "trace", *args],
                         capture_output=True, text=True, timeout=60)
    return out


def test_trace_healthy_path(lab: Lab) -> None:
    a, b = lab.hosts
    out = trace(lab, a.container_ip, b.container_ip)
    assert out.returncode == 0 and out.stderr == "", out
    gw, mac = subnet_of(b).split("/")[0], lab_mac(lab, b)
    for line in (f"ok    source        {a.container_ip} in {subnet_of(a)}, vxlan lease of {a.ip} (this host)",
                 f"ok    destination   {b.container_ip} in {subnet_of(b)}, vxlan lease of {b.ip}",
                 f"ok    route         {subnet_of(b)} via {gw} dev flannel.1 onlink",
                 f"ok    neighbour     {gw} lladdr {mac} on flannel.1",
                 f"ok    fdb           {mac} dst {b.ip} on flannel.1",
                 f"ok    encapsulation vxlan VNI 1: outer {a.ip} -> {b.ip} udp/8472",
                 f"ok    underlay      {b.ip} via eth0",
                 f"trace: {a.container_ip} -> {b.container_ip}: every hop is right"):
        assert line in out.stdout.splitlines(), out.stdout


def test_trace_names_a_deleted_route_and_a_wrong_fdb_entry(lab: Lab) -> None:
    a, b = lab.hosts
    with flanneld_paused(lab):
        sh(["ip", "-n", a.ns, "route", "del", subnet_of(b)])
        route = trace(lab, a.container_ip, b.container_ip)
    wait_for(lambda: subnet_of(b) in sh(["ip", "-n", a.ns, "route"]).stdout, what="flanneld's repair")
    mac = lab_mac(lab, b)
    with flanneld_paused(lab):
        sh(["bridge", "-n", a.ns, "fdb", "replace", mac, "dev", "flannel.1", "dst", "198.18.0.250"])
        fdb = trace(lab, a.container_ip, b.container_ip)
    wait_for(lambda: f"dst {b.ip}" in sh(["bridge", "-n", a.ns, "fdb", "show", "dev", "flannel.1"]).stdout,
             timeout=30, what="flanneld's repair")
    assert route.returncode == 1 and "trace: first wrong hop: route" in route.stdout, route
    assert f"WRONG route         {subnet_of(b)} should go via {subnet_of(b).split('/')[0]} dev flannel.1 onlink, " \
        "the kernel sends it dev " in route.stdout
    assert "-> fix: flanneld puts it right within seconds" in route.stdout
    assert fdb.returncode == 1 and "trace: first wrong hop: fdb" in fdb.stdout, fdb
    assert f"{mac} should go to dst {b.ip} on flannel.1, the kernel has 198.18.0.250" in fdb.stdout


def test_trace_outside_the_network_is_one_message(lab: Lab) -> None:
    out = trace(lab, lab.hosts[0].container_ip, "192.168.1.1")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("flannelctl: DST 192.168.1.1 is outside the flannel network 10.0.0.0/16: trace follows "
                          "container addresses inside it (e.g. a container's IP from `docker inspect`)\n")


def lab_mac(lab: Lab, host) -> str:
    return sh(["ip", "-n", host.ns, "link", "show", "flannel.1"]).stdout.split("link/ether ")[1].split()[0]


def test_flanneld_turns_the_offload_off_when_its_probe_fails(lab: Lab) -> None:
    """The fault made as in test_bad_udp_checksums_are_named, then flanneld restarted: its start-up
    probe sees it, turns tx-checksum-ip-generic off on flannel.1 and says so. (The lab's fault is
    made after the device, so it stays: flanneld then says the underlay corrupts it.)"""
    h = lab.hosts[0]
    nft = ["ip", "netns", "exec", h.ns, "nft"]
    sh([*nft, "add", "table", "ip", "pfdv"])
    try:
        in_ns(h.ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('eth0', False)")
        sh([*nft, "add", "chain", "ip", "pfdv", "post", "{ type filter hook postrouting priority 0; }"])
        sh([*nft, "add", "rule", "ip", "pfdv", "post", "udp dport 8472 @nh,472,8 17 @nh,576,16 33434 "
            "@nh,608,16 set 0xdead"])
        lab.stop_flanneld(h)
        # the device keeps its settings across restarts: start from the offload on, whatever ran before
        in_ns(h.ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('flannel.1', True)")
        start = len(log_text(lab, h))
        lab.start_flanneld(h)
        try:
            wait_for(lambda: "checksum probe: still no UDP intact" in log_text(lab, h)[start:], timeout=60,
                     what="flanneld's checksum probe")
        except AssertionError as err:
            raise AssertionError(f"{err}; flanneld's log: {log_text(lab, h)[start:][-4000:]}") from None
        off = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-c", "from pyflannel.kernel.probe import "
                              "tx_checksum; print(tx_checksum('flannel.1'))"], capture_output=True, text=True,
                             check=True).stdout.strip()
    finally:
        sh([*nft, "delete", "table", "ip", "pfdv"])
        in_ns(h.ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('eth0', True)")
        in_ns(h.ns, "from pyflannel.kernel.probe import set_tx_checksum; set_tx_checksum('flannel.1', True)")
    log = log_text(lab, h)[start:]
    assert off == "False"
    assert "checksum probe: ping passes through flannel.1 but UDP does not arrive intact at 1 peer(s): the known " \
        "vxlan checksum-offload fault; turned tx-checksum-ip-generic off on flannel.1 (this device only" in log, log
    assert lab.flanneld_pid(h) is not None
