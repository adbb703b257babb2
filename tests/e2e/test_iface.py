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
    e = select_external_interface(a["iface"], a["regex"], a["reach"], a["public"])
    print(json.dumps({"name": e.name, "addr": str(e.iface_addr), "ext": str(e.ext_addr), "mtu": e.mtu}))
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
        for i, (name, addr, mtu) in enumerate([("eth0", "198.18.1.10/24", 1500), ("eth1", "198.18.2.10/24", 9000)]):
            sh(["ip", "-n", NS, "link", "add", name, "type", "veth", "peer", "name", f"p{i}"])
            sh(["ip", "-n", NS, "link", "set", name, "up", "mtu", str(mtu)])
            sh(["ip", "-n", NS, "link", "set", f"p{i}", "up"])
            sh(["ip", "-n", NS, "addr", "add", addr, "dev", name])
        sh(["ip", "-n", NS, "route", "add", "default", "via", "198.18.1.1"])
        sh(["ip", "-n", NS, "route", "add", "198.18.99.0/24", "via", "198.18.2.1"])
        yield NS
    finally:
        ns_delete(NS)


def select(ns: str, iface=(), regex=(), reach="", public="") -> dict[str, object]:
    arg = json.dumps({"iface": list(iface), "regex": list(regex), "reach": reach, "public": public})
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


def test_no_match_names_the_interfaces(ns: str) -> None:
    err = str(select(ns, iface=["eth9"])["error"])
    assert err.startswith("Failed to find interface to use that matches the interfaces and/or regexes provided")
    assert "eth0" in err and "eth1" in err
