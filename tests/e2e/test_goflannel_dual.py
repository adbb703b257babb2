"""Go flannel itself as a dual-stack peer on vxlan: h1 and h2 run pyflannel's flanneld, h3 Go
flannel's (v0.28.9, built by setup), one dual-stack network on an IPv6 underlay. Every pair pings
over IPv6 and IPv4 both ways; Go's lease and ours have the same key form and the same JSON shape,
byte for byte but for the addresses and MACs; Go's subnet.env and ours have the same lines."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.ipv6 import host_ip6

from .helpers import all_pairs_ping, ip, wait_for

FLAGS = ("-iface=eth0",)


@pytest.fixture(scope="module")
def lab(make_lab, go_flanneld: str) -> Iterator[Lab]:
    with make_lab("pfgd", 3, "vxlan", go_hosts=(3,), host_extra={1: FLAGS, 2: FLAGS, 3: FLAGS},
                  ipv6="dual") as lab:
        yield lab


def env(lab: Lab, host) -> dict[str, str]:
    with open(lab.subnet_file(host)) as f:
        return dict(line.split("=", 1) for line in f.read().splitlines())


def lease(lab: Lab, host) -> tuple[str, str]:
    e = env(lab, host)
    sn = ipaddress.IPv4Interface(e["FLANNEL_SUBNET"]).network
    sn6 = ipaddress.IPv6Interface(e["FLANNEL_IPV6_SUBNET"]).network
    key = f"{PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}&{sn6.network_address.compressed}-{sn6.prefixlen}"
    return key, lab.etcdctl("get", key, "--print-value-only").strip()


def shape(value: str) -> str:
    """The value with its addresses and MACs blanked."""
    value = re.sub(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "MAC", value)
    return re.sub(r'"PublicIP(v6)?":"[^"]+"', r'"PublicIP\1":"IP"', value)


def test_all_pairs_ping_over_ipv6_and_ipv4(lab: Lab) -> None:
    assert all(h.container_ip6 for h in lab.hosts)
    wait_for(lambda: not [(a.index, b.index) for a in lab.hosts for b in lab.hosts
                          if a is not b and not lab.ping6(a, b, 1)[0]], timeout=15, what="all IPv6 pairs to answer")
    assert all_pairs_ping(lab) == []


def test_go_and_ours_write_the_same_lease_and_subnet_env(lab: Lab) -> None:
    h1, h3 = lab.hosts[0], lab.hosts[2]
    (_, ours), (key3, go) = lease(lab, h1), lease(lab, h3)
    assert go, f"no Go lease at {key3}"  # Go wrote the key in exactly the form we compute
    assert shape(ours) == shape(go), (ours, go)
    assert f'"PublicIPv6":"{host_ip6(3)}"' in go and f'"PublicIPv6":"{host_ip6(1)}"' in ours
    assert list(env(lab, h1)) == list(env(lab, h3))
    assert env(lab, h1)["FLANNEL_IPV6_NETWORK"] == env(lab, h3)["FLANNEL_IPV6_NETWORK"]


def test_each_side_programs_the_other_on_flannel_v6(lab: Lab) -> None:
    h1, h3 = lab.hosts[0], lab.hosts[2]
    for host, peer in ((h1, h3), (h3, h1)):
        sn6 = ipaddress.IPv6Interface(env(lab, peer)["FLANNEL_IPV6_SUBNET"]).network
        routes = ip(host.ns, "-6", "route", "show", str(sn6))
        assert f"via {sn6.network_address} dev flannel-v6.1" in routes and "onlink" in routes
