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
