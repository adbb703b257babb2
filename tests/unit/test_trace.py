"""flannelctl trace's pure judgement: the hops from the leases and a kernel view, the first wrong."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.core.config import parse_config
from pyflannel.core.errors import FlannelError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.trace import KernelView, first_wrong, trace

A, N = ipaddress.IPv4Address, ipaddress.IPv4Network
VXLAN = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan"}}')
UDP = parse_config('{"Network": "10.0.0.0/16"}')
HOSTGW = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}')
MAC = "02:aa:bb:cc:dd:02"
LEASES = [Lease(N("10.0.1.0/24"), LeaseAttrs(A("198.18.0.1"), None, "vxlan", {"VNI": 1, "VtepMAC": MAC[:-1] + "1"}),
                lease_id=7),
          Lease(N("10.0.2.0/24"), LeaseAttrs(A("198.18.0.2"), None, "vxlan", {"VNI": 1, "VtepMAC": MAC}), lease_id=8)]
LOCAL = {A("198.18.0.1")}
GOOD = KernelView("flannel.1", A("10.0.2.0"), MAC, (A("198.18.0.2"),), "eth0")


def run(kernel: KernelView | None, config=VXLAN, src="10.0.1.5", dst="10.0.2.7"):
    return trace(config, LEASES, LOCAL, A(src), A(dst), kernel)


def test_healthy_vxlan_path() -> None:
    hops = run(GOOD)
    assert [h.what for h in hops] == ["source", "destination", "route", "neighbour", "fdb", "encapsulation",
                                      "underlay"]
    assert first_wrong(hops) is None
    assert hops[-2].text == "vxlan VNI 1: outer 198.18.0.1 -> 198.18.0.2 udp/8472"


@pytest.mark.parametrize(("kernel", "wrong", "says"), [
    (KernelView("eth0", A("198.18.0.254"), MAC, (A("198.18.0.2"),), "eth0"), "route",
     "the kernel sends it dev eth0 via 198.18.0.254"),
    (KernelView("flannel.1", A("10.0.2.0"), None, (A("198.18.0.2"),), "eth0"), "neighbour", "the kernel has no entry"),
    (KernelView("flannel.1", A("10.0.2.0"), MAC, (A("198.18.0.9"),), "eth0"), "fdb", "the kernel has 198.18.0.9"),
    (KernelView("flannel.1", A("10.0.2.0"), MAC, (A("198.18.0.2"),), "flannel.1"), "underlay", "a loop"),
    (KernelView("flannel.1", A("10.0.2.0"), MAC, (A("198.18.0.2"),), None), "underlay", "no route"),
])
def test_first_wrong_hop_is_named_with_a_fix(kernel: KernelView, wrong: str, says: str) -> None:
    hop = first_wrong(run(kernel))
    assert hop is not None and hop.what == wrong and says in hop.text and hop.fix, hop


def test_udp_and_host_gw_routes() -> None:
    assert first_wrong(run(KernelView("flannel0", None, None, (), "eth0"), UDP)) is None
    hop = first_wrong(run(KernelView("eth0", A("198.18.0.254"), None, (), "eth0"), UDP))
    assert hop is not None and hop.what == "route" and "should go dev flannel0" in hop.text
    hops = run(KernelView("eth0", A("198.18.0.2"), None, (), "eth0"), HOSTGW)
    assert first_wrong(hops) is None and "none: the packet crosses the underlay" in hops[-2].text


def test_ends_without_a_lease_same_subnet_and_another_host() -> None:
    hop = first_wrong(run(GOOD, dst="10.0.9.9"))
    assert hop is not None and hop.what == "destination" and "no host owns it" in hop.text
    assert "same subnet" in run(GOOD, dst="10.0.1.9")[-1].text
    hops = trace(VXLAN, LEASES, set(), A("10.0.1.5"), A("10.0.2.7"), None)
    assert first_wrong(hops) is None and "run trace there" in hops[-1].text


def test_outside_the_network_is_one_message() -> None:
    with pytest.raises(FlannelError, match=r"DST 192\.168\.1\.1 is outside the flannel network 10\.0\.0\.0/16"):
        run(GOOD, dst="192.168.1.1")
