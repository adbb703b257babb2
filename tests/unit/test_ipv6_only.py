"""IPv6-only networks (EnableIPv4 false), pure parts: the lease key, lease JSON and subnet.env as Go
flannel writes them, the peer table keyed by the IPv6 subnet, the shape rules, the vxlan and host-gw
plans, mk-docker-opts, and the backends that refuse."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.backend import get_backend
from pyflannel.backend.hostgw import plan_hostgw
from pyflannel.backend.vxlan import VxlanBackend, VxlanOptions, plan_vxlan6
from pyflannel.cli.mk_docker_opts import docker_opts
from pyflannel.core.allocate import NO_IPV4
from pyflannel.core.config import parse_config
from pyflannel.core.desired import LinkSpec, Neigh, Route, VxlanSpec
from pyflannel.core.events import Changes, Snapshot
from pyflannel.core.host import ExternalInterface
from pyflannel.core.lease import Lease, LeaseAttrs, parse_lease_attrs, parse_subnet_key, render_lease_attrs
from pyflannel.core.leasecheck import screen
from pyflannel.core.plan import shared_public_ips
from pyflannel.core.subnetenv import (
    parse_subnet_env,
    previous_run,
    render_subnet_env,
    salvage_subnet_env,
    subnet_env_for,
)

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
ONLY = ('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56", '
        '"Backend": {"Type": "vxlan"}}')
NET6 = N6("2001:db8:42::/56")
NONE = A4(0)


def lease(sn6: str, pip6: str | None, mac6: str | None = "7a:1b:2c:3d:4e:5f", btype: str = "vxlan",
          subnet: ipaddress.IPv4Network = NO_IPV4) -> Lease:
    v6 = {"VNI": 1, "VtepMAC": mac6} if mac6 else None
    return Lease(subnet, LeaseAttrs(NONE, A6(pip6) if pip6 else None, btype, None, v6), N6(sn6))


def test_the_ipv6_subnet_names_an_ipv6_only_lease():
    a, b = lease("2001:db8:42:1::/64", "2001:db8::11"), lease("2001:db8:42:2::/64", "2001:db8::12")
    assert a.key == "0.0.0.0-0&2001:db8:42:1::-64"  # Go's MakeSubnetKey with an empty IPv4 subnet
    assert a.ident == N6("2001:db8:42:1::/64") and b.ident != a.ident
    dual = Lease(N4("10.0.5.0/24"), LeaseAttrs(A4("198.18.0.11")), N6("2001:db8:42:5::/64"))
    assert dual.ident == N4("10.0.5.0/24")


def test_vxlan_lease_json_is_gos_for_ipv6_only():
    ext = ExternalInterface("eth0", 2, 1500, NONE, NONE, A6("2001:db8::11"), A6("2001:db8::11"))
    be = VxlanBackend(ext, parse_config(ONLY))
    be.mac6 = "7a:1b:2c:3d:4e:5f"
    # Go's newSubnetAttrs: no IPv4 device, so no BackendData, and PublicIP the zero IP4
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan",'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"7a:1b:2c:3d:4e:5f"}}')
    assert be.network is None and be.mtu() == 1450


def test_hostgw_lease_json_is_gos_for_ipv6_only():
    ext = ExternalInterface("eth0", 2, 1500, NONE, NONE, A6("2001:db8::12"), A6("2001:db8::12"))
    be = get_backend("host-gw")(ext, parse_config(ONLY.replace("vxlan", "host-gw")))
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::12","BackendType":"host-gw"}')


def test_subnet_env_for_ipv6_only_has_no_ipv4_lines_and_is_read_back():
    env = subnet_env_for(None, None, 1450, True, NET6, N6("2001:db8:42:7::/64"))
    text = render_subnet_env(env)
    assert text == ("FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:7::1/64\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    prev = previous_run(salvage_subnet_env(text.encode()), 0)
    assert prev.ipv6_subnet == N6("2001:db8:42:7::/64") and prev.subnet is None


def test_mk_docker_opts_on_an_ipv6_only_subnet_env_is_the_scripts():
    # flannel's mk-docker-opts.sh knows no IPv6: without FLANNEL_SUBNET there is no --bip
    values = parse_subnet_env("FLANNEL_IPV6_NETWORK=2001:db8:42::/56\nFLANNEL_IPV6_SUBNET=2001:db8:42:7::1/64\n"
                              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert docker_opts(values, True) == {"DOCKER_OPT_IPMASQ": "--ip-masq=false", "DOCKER_OPT_MTU": "--mtu=1450"}


def test_peer_table_keeps_ipv6_only_leases_apart_and_deletes_the_right_one():
    from pyflannel.core.events import PeerTable
    a, b = lease("2001:db8:42:1::/64", "2001:db8::11"), lease("2001:db8:42:2::/64", "2001:db8::12")
    table = PeerTable()
    assert len(table.apply(Snapshot((a, b), 5)).added) == 2 and len(table.leases) == 2
    delta = table.apply(Changes(deletes=(b.ident,), revision=6))
    assert delta.removed == (b,) and list(table.leases) == [a.ident]


def test_screen_on_an_ipv6_only_network():
    config = parse_config(ONLY)
    good = lease("2001:db8:42:1::/64", "2001:db8::11")
    v4_key = lease("2001:db8:42:2::/64", "2001:db8::12", subnet=N4("10.0.2.0/24"))
    outside = lease("fd00:1::/64", "2001:db8::13")
    wrong_len = lease("2001:db8:42:4::/72", "2001:db8::14")
    no_pip6 = lease("2001:db8:42:5::/64", None)
    ev = screen(Snapshot((good, v4_key, outside, wrong_len, no_pip6), 3), config, "/p/subnets/")
    assert ev.leases == (good,)
    reasons = {b.key: b.reason for b in ev.bad}
    assert "IPv6-only" in reasons["/p/subnets/10.0.2.0-24&2001:db8:42:2::-64"]
    assert "outside the IPv6 network" in reasons["/p/subnets/0.0.0.0-0&fd00:1::-64"]
    assert "/64" in reasons["/p/subnets/0.0.0.0-0&2001:db8:42:4::-72"]
    assert "no PublicIPv6" in reasons["/p/subnets/0.0.0.0-0&2001:db8:42:5::-64"]
    # a dual-stack network refuses IPv6-only leases (their IPv4 half is 0.0.0.0/0)
    dual = parse_config('{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56"}')
    assert screen(Snapshot((good,), 3), dual).leases == ()


def test_malformed_ipv6_key_or_public_ipv6_is_a_bad_lease():
    from pyflannel.core.errors import StoreDataError
    with pytest.raises(StoreDataError):
        parse_subnet_key("/p/subnets/0.0.0.0-0&2001:db8:42:1::-129")
    with pytest.raises(StoreDataError, match="PublicIPv6"):
        parse_lease_attrs(b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::zz","BackendType":"vxlan"}')


def test_vxlan_ipv6_only_plan_is_flannel_v6_alone():
    opts = VxlanOptions()
    link6 = LinkSpec("flannel-v6.1", "vxlan", 1430, "aa:aa:aa:aa:aa:06", VxlanSpec(1, 0, A6("2001:db8::11"), 2))
    own = lease("2001:db8:42:1::/64", "2001:db8::11")
    peer = lease("2001:db8:42:2::/64", "2001:db8::12", "BB:BB:BB:BB:BB:06")
    no_mac = lease("2001:db8:42:3::/64", "2001:db8::13", None)
    d = plan_vxlan6(opts, own, NET6, link6, "eth0", {peer.ident: peer, no_mac.ident: no_mac})
    gw = A6("2001:db8:42:2::")
    assert d.network is None and d.networks == (NET6,)
    assert [lk.name for lk in d.links] == ["flannel-v6.1"] and d.owned_devs == frozenset({"flannel-v6.1"})
    assert d.routes == {Route(N6("2001:db8:42:2::/64"), "flannel-v6.1", gw, onlink=True)}
    assert d.neighs == {Neigh("flannel-v6.1", gw, "bb:bb:bb:bb:bb:06")}
    assert [(f.mac, f.dst) for f in d.fdbs] == [("bb:bb:bb:bb:bb:06", A6("2001:db8::12"))]
    assert [str(a.address) for a in d.addresses] == ["2001:db8:42:1::/128"]


def test_hostgw_ipv6_only_plan_has_ipv6_routes_only():
    peer = lease("2001:db8:42:2::/64", "2001:db8::12", None, "host-gw")
    d = plan_hostgw(None, "eth0", {peer.ident: peer}, NET6)
    assert d.routes == {Route(N6("2001:db8:42:2::/64"), "eth0", A6("2001:db8::12"))}
    assert d.networks == (NET6,)


def test_shared_public_ip_is_judged_by_public_ipv6():
    own = lease("2001:db8:42:1::/64", "2001:db8::11")
    peers = {le.ident: le for le in (lease("2001:db8:42:2::/64", "2001:db8::12"),
                                     lease("2001:db8:42:3::/64", "2001:db8::13"))}
    assert shared_public_ips(own, peers) == []  # every PublicIP is 0.0.0.0: that is no sharing
    twin = lease("2001:db8:42:4::/64", "2001:db8::12")
    assert shared_public_ips(own, {**peers, twin.ident: twin}) == [
        (A6("2001:db8::12"), [N6("2001:db8:42:2::/64"), N6("2001:db8:42:4::/64")])]


@pytest.mark.parametrize("backend,runs", [("vxlan", True), ("host-gw", True), ("udp", False),
                                          ("wireguard", True), ("aws-vpc", False)])
def test_which_backends_run_ipv6_only(backend: str, runs: bool):
    assert getattr(get_backend(backend), "ipv6_only", False) is runs  # as the daemon asks
