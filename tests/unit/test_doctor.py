"""flannelctl doctor's pure judgement: FORWARD chains, the MTU chain, clock skew, route drift."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.core.doctor import OK, PROBLEM, WARNING, clock_skew, forward_chain, mtu_chain, route_drift, worst

NET = ipaddress.IPv4Network("10.0.0.0/16")


@pytest.mark.parametrize(("rules", "level", "says"), [
    ("-P FORWARD ACCEPT\n", OK, "nothing drops"),
    ("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", PROBLEM, "policy is DROP"),
    ("-P FORWARD DROP\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n", OK, "rule 1"),
    ("-P FORWARD DROP\n-A FORWARD -s 10.0.0.0/16 -j ACCEPT\n", OK, "accepted"),
    ("-P FORWARD ACCEPT\n-A FORWARD -j DROP\n-A FORWARD -j FLANNEL-FWD\n", PROBLEM, "rule 1"),
    ("-P FORWARD ACCEPT\n-A FORWARD -d 10.0.5.0/24 -j REJECT\n", PROBLEM, "drops 10.0.0.0/16"),
    ("-P FORWARD ACCEPT\n-A FORWARD -d 192.168.0.0/24 -j DROP\n", OK, "nothing drops"),
    ("-P FORWARD ACCEPT\n-A FORWARD -p tcp --dport 22 -j DROP\n", OK, "nothing drops"),
    ("-P FORWARD ACCEPT\n-A FORWARD -i eth9 -j DROP\n", OK, "nothing drops"),
])
def test_forward_chain(rules: str, level: str, says: str) -> None:
    check = forward_chain(rules, NET)
    assert check.level == level and says in check.text, check
    assert (check.fix != "") == (level == PROBLEM)


def test_mtu_chain() -> None:
    healthy = mtu_chain("udp", ("eth0", 1500), ("flannel0", 1472), 1472, [("docker0", 1472)])
    assert [c.level for c in healthy] == [OK]
    bad = mtu_chain("vxlan", ("eth0", 1500), ("flannel.1", 1472), 1450, [("docker0", 1500), ("cni0", 1400)])
    assert [c.level for c in bad] == [PROBLEM, PROBLEM, PROBLEM, WARNING]
    assert "leaves 1450" in bad[0].text and "FLANNEL_MTU=1450" in bad[1].text and "docker0 mtu 1500" in bad[2].text
    assert worst(bad) == PROBLEM and worst(healthy) == OK


def test_clock_skew_and_routes() -> None:
    assert clock_skew("etcd", 1.0).level == OK
    late = clock_skew("etcd", -42.0)
    assert late.level == WARNING and "42s behind etcd" in late.text
    assert route_drift([], 2, "via flannel0").level == OK
    drift = route_drift([f"10.0.{i}.0/24 goes out eth0" for i in range(5)], 5, "via flannel0")
    assert drift.level == PROBLEM and "5 of 5" in drift.text and "and 2 more" in drift.text


def test_peer_checks_tell_a_blocked_port_from_a_dead_host() -> None:
    from pyflannel.core.doctor import PeerProbe, peer_checks

    ok = PeerProbe("10.0.5.0/24", "198.18.0.5", True, True)
    blocked = PeerProbe("10.0.6.0/24", "198.18.0.6", False, True)
    dead = PeerProbe("10.0.7.0/24", "198.18.0.7", False, False)
    assert peer_checks("udp/8472", []).level == OK
    assert peer_checks("udp/8472", [ok]).text == "all 1 peer(s) answer through the overlay (udp/8472)"
    check = peer_checks("udp/8472", [ok, blocked, dead])
    assert check.level == PROBLEM and "1 of 3 peer(s) answer on the underlay but not through udp/8472: " \
        "10.0.6.0/24 (198.18.0.6)" in check.text and "--dport 8472 -j ACCEPT" in check.fix
    check = peer_checks("udp/8285", [ok, dead])
    assert check.level == PROBLEM and "neither through the overlay nor on the underlay: 10.0.7.0/24" in check.text


def test_checksum_check_needs_echo_to_pass_and_udp_to_fail() -> None:
    from pyflannel.core.doctor import PeerProbe, checksum_check

    good = PeerProbe("10.0.5.0/24", "198.18.0.5", True, True, True)
    bad = PeerProbe("10.0.6.0/24", "198.18.0.6", True, True, False)
    down = PeerProbe("10.0.7.0/24", "198.18.0.7", False, True, None)
    assert checksum_check("flannel.1", True, [good]).level == OK
    assert "not probed" in checksum_check("flannel.1", True, [down]).text
    check = checksum_check("flannel.1", True, [good, bad, down])
    assert check.level == PROBLEM and "UDP does not arrive intact at 1 of 2 peer(s): 10.0.6.0/24" in check.text
    assert "offload on" in check.text and check.fix.startswith("ethtool -K flannel.1 tx-checksum-ip-generic off")


def test_entry_drift_counts_and_lists_the_first_three() -> None:
    from pyflannel.core.doctor import entry_drift

    assert entry_drift("flannel.1", [], [], 4).level == OK
    rows = [f"10.0.{i}.0 lladdr 02:00:00:00:00:0{i} missing" for i in range(5)]
    check = entry_drift("flannel.1", rows, ["02:00:00:00:00:01 dst 198.18.0.9 is dst 198.18.0.8"], 5)
    assert check.level == PROBLEM
    assert "5 neighbour entries missing or wrong (10.0.0.0 lladdr" in check.text and "; and 2 more)" in check.text
    assert "1 FDB entry missing or wrong (02:00:00:00:00:01 dst 198.18.0.9 is dst 198.18.0.8)" in check.text


def test_peer_checks_defer_to_a_wrong_entry_of_this_host() -> None:
    from pyflannel.core.doctor import PeerProbe, peer_checks

    blocked = PeerProbe("10.0.6.0/24", "198.18.0.6", False, True)
    check = peer_checks("udp/8472", [blocked], "routes")
    assert check.level == PROBLEM and "the routes problem above explains it" in check.text
    assert "firewall" not in check.text
