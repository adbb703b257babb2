"""`flannelctl doctor` on a vxlan lab host: healthy, then a neighbour and an FDB entry deleted by
hand, and UDP checksums made wrong on the way out (the vxlan checksum-offload fault, made for
real: the underlay veth computes checksums in software after an nftables rule has changed the
inner UDP checksum's seed, so the peer's kernel drops the datagram while ping passes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import sh

from .helpers import subnet_of, wait_for
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
