"""External interface selection (docs/compatibility.md#interface) against real interfaces in a namespace of our own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.netns import ns_add, ns_delete, sh

NS = "pfti"
SNIPPET = """
import json, sys
from pyflannel.kernel.iface import select_external_interface
from pyflannel.core.errors import LocalConfigError
a = json.loads(sys.argv[1])
try:
    e = select_external_interface(a["iface"], a["regex"], a["reach"], a["public"], a["public6"], a["ipv6"])
    out = {"name": e.name, "addr": str(e.iface_addr), "ext": str(e.ext_addr), "mtu": e.mtu}
    if a["ipv6"]:
        out |= {"addr6": str(e.iface_v6_addr), "ext6": str(e.ext_v6_addr)}
    print(json.dumps(out))
except LocalConfigError as err:
    print(json.dumps({"error": str(err)}))
"""


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("needs root")
    ns_delete(NS)
    ns_add(NS)
    try:
        for i, (name, addr, addr6, mtu) in enumerate([("eth0", "198.18.1.10/24", "2001:db8:1::10/64", 1500),
                                                      ("eth1", "198.18.2.10/24", "2001:db8:2::10/64", 9000),
                                                      ("eth2", "198.18.3.10/24", "", 1500)]):
            sh(["ip", "-n", NS, "link", "add", name, "type", "veth", "peer", "name", f"p{i}"])
            sh(["ip", "-n", NS, "link", "set", name, "up", "mtu", str(mtu)])
            sh(["ip", "-n", NS, "link", "set", f"p{i}", "up"])
            sh(["ip", "-n", NS, "addr", "add", addr, "dev", name])
            if addr6:  # IPv6 from the documentation space, in this namespace only
                sh(["ip", "-n", NS, "-6", "addr", "add", addr6, "dev", name, "nodad"])
        sh(["ip", "-n", NS, "route", "add", "default", "via", "198.18.1.1"])
        sh(["ip", "-n", NS, "route", "add", "198.18.99.0/24", "via", "198.18.2.1"])
        sh(["ip", "-n", NS, "-6", "route", "add", "2001:db8:99::/64", "via", "2001:db8:2::1"])
        yield NS
    finally:
        ns_delete(NS)


def select(ns: str, iface=(), regex=(), reach="", public="", public6="", ipv6=False) -> dict[str, object]:
    arg = json.dumps({"iface": list(iface), "regex": list(regex), "reach": reach, "public": public,
                      "public6": public6, "ipv6": ipv6})
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SNIPPET, arg], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return json.loads(out)


def test_default_route_interface(ns: str) -> None:
    assert select(ns) == {"name": "eth0", "addr": "198.18.1.10", "ext": "198.18.1.10", "mtu": 1500}


def test_iface_by_name_and_by_ip(ns: str) -> None:
    assert select(ns, iface=["eth1"])["name"] == "eth1"
    assert select(ns, iface=["198.18.2.10"])["mtu"] == 9000
    assert select(ns, iface=["nope0", "eth1"])["name"] == "eth1", "tried in order"


def test_iface_regex_on_addresses_then_names(ns: str) -> None:
    assert select(ns, regex=[r"^198\.18\.2\."])["name"] == "eth1"
    assert select(ns, regex=["th1$"])["name"] == "eth1"


def test_iface_can_reach(ns: str) -> None:
    assert select(ns, reach="198.18.99.7")["name"] == "eth1"


def test_public_ip(ns: str) -> None:
    assert select(ns, public="198.18.2.10")["name"] == "eth1"
    got = select(ns, iface=["eth0"], public="203.0.113.9")
    assert got["addr"] == "198.18.1.10" and got["ext"] == "203.0.113.9", "NAT: --iface with --public-ip"
    assert "is not an address of any interface" in str(select(ns, public="203.0.113.9")["error"])
    # issue 13 (2): an address no host can be reached on is refused before any lease is taken
    for bad, why in (("224.0.0.1", "is a multicast address"), ("127.0.0.1", "is a loopback address"),
                     ("169.254.9.9", "is a link-local address"), ("255.255.255.255", "is the broadcast address")):
        err = str(select(ns, iface=["eth0"], public=bad).get("error"))
        assert err.startswith(f"cannot use --public-ip as this host's public IP: {bad} {why}"), err


def test_no_match_names_the_interfaces(ns: str) -> None:
    err = str(select(ns, iface=["eth9"])["error"])
    assert err.startswith("Failed to find interface to use that matches the interfaces and/or regexes provided")
    assert "eth0" in err and "eth1" in err


def test_ipv6_address_of_the_chosen_interface(ns: str) -> None:
    got = select(ns, ipv6=True)
    assert (got["name"], got["addr6"], got["ext6"]) == ("eth0", "2001:db8:1::10", "2001:db8:1::10")
    got = select(ns, iface=["eth0"], public6="2001:db8:ff::9", ipv6=True)
    assert (got["addr6"], got["ext6"]) == ("2001:db8:1::10", "2001:db8:ff::9"), "NAT: --iface with --public-ipv6"


def test_iface_regex_and_can_reach_take_ipv6(ns: str) -> None:
    """Go flannel's are IPv4-only (its issue 2081); here an IPv6 address names the interface too."""
    got = select(ns, iface=["2001:db8:2::10"], ipv6=True)
    assert (got["name"], got["addr"], got["addr6"]) == ("eth1", "198.18.2.10", "2001:db8:2::10")
    assert select(ns, regex=[r"^2001:db8:2:"])["name"] == "eth1"
    assert select(ns, reach="2001:db8:99::7", ipv6=True)["name"] == "eth1"


def test_ipv6_enabled_but_no_ipv6_address_names_the_interface_and_fix(ns: str) -> None:
    err = str(select(ns, iface=["eth2"], ipv6=True)["error"])
    assert "eth2 has no global IPv6 address" in err and "ip -6 addr add" in err and "EnableIPv6" in err
    assert "bad --public-ipv6" in str(select(ns, public6="10.0.0.1", ipv6=True)["error"])
