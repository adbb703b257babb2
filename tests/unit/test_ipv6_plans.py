"""Dual-stack plans (pure): vxlan's flannel-v6.<VNI> entries and host-gw's IPv6 routes, as Go
flannel programs them, and one diff over both families."""

from __future__ import annotations

import ipaddress

from pyflannel.backend.hostgw import plan_hostgw
from pyflannel.backend.vxlan import VxlanOptions, own_ipv6, plan_vxlan, plan_vxlan6
from pyflannel.core.desired import ActualState, Fdb, LinkSpec, Neigh, Route, VxlanSpec, diff
from pyflannel.core.lease import Lease, LeaseAttrs

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
NET, NET6 = N4("10.0.0.0/16"), N6("fd00:10::/56")
LINK = LinkSpec("flannel.1", "vxlan", 1450, "aa:aa:aa:aa:aa:01", VxlanSpec(1, 0, A4("198.18.0.11"), 2))
LINK6 = LinkSpec("flannel-v6.1", "vxlan", 1450, "aa:aa:aa:aa:aa:06", VxlanSpec(1, 0, A6("2001:db8::11"), 2))
OWN = Lease(N4("10.0.53.0/24"), LeaseAttrs(A4("198.18.0.11"), A6("2001:db8::11"), "vxlan"), N6("fd00:10:0:53::/64"))


def vx6(sn: str, sn6: str | None, pip: str, pip6: str | None, mac6: str | None = "BB:BB:BB:BB:BB:06") -> Lease:
    v6data = {"VNI": 1, "VtepMAC": mac6} if mac6 else None
    return Lease(N4(sn), LeaseAttrs(A4(pip), A6(pip6) if pip6 else None, "vxlan",
                                    {"VNI": 1, "VtepMAC": "bb:bb:bb:bb:bb:04"}, v6data), N6(sn6) if sn6 else None)


def test_vxlan_dual_stack_plan_is_flannels():
    peer = vx6("10.0.80.0/24", "fd00:10:0:80::/64", "198.18.0.12", "2001:db8::12")
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {peer.subnet: peer},
                   v6=own_ipv6(VxlanOptions(), OWN, NET6, LINK6))
    assert d.links == (LINK, LINK6) and d.network6 == NET6
    assert [(a.dev, str(a.address)) for a in d.addresses] == [("flannel.1", "10.0.53.0/32"),
                                                              ("flannel-v6.1", "fd00:10:0:53::/128")]
    assert Route(N6("fd00:10:0:80::/64"), "flannel-v6.1", A6("fd00:10:0:80::"), onlink=True) in d.routes
    assert Neigh("flannel-v6.1", A6("fd00:10:0:80::"), "bb:bb:bb:bb:bb:06") in d.neighs
    assert Fdb("flannel-v6.1", "bb:bb:bb:bb:bb:06", A6("2001:db8::12")) in d.fdbs
    assert len(d.routes) == len(d.neighs) == len(d.fdbs) == 2
    assert d.owned_devs == {"flannel.1", "flannel-v6.1"}
    assert ("net/ipv6/conf/flannel-v6.1/accept_ra", "0") in d.sysctls


def test_vxlan_peer_without_ipv6_half_gets_ipv4_only():
    v4only = vx6("10.0.81.0/24", None, "198.18.0.13", None, None)
    no_mac6 = vx6("10.0.82.0/24", "fd00:10:0:82::/64", "198.18.0.14", "2001:db8::14", None)
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {v4only.subnet: v4only, no_mac6.subnet: no_mac6},
                   v6=own_ipv6(VxlanOptions(), OWN, NET6, LINK6))
    assert {r.dst.version for r in d.routes} == {4} and len(d.routes) == 2


def test_vxlan_without_ipv6_is_unchanged():
    peer = vx6("10.0.80.0/24", "fd00:10:0:80::/64", "198.18.0.12", "2001:db8::12")
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {peer.subnet: peer})
    assert d.links == (LINK,) and d.network6 is None and {r.dst.version for r in d.routes} == {4}


def test_hostgw_ipv6_route_via_peer_public_ipv6():
    peer = Lease(N4("10.0.80.0/24"), LeaseAttrs(A4("198.18.0.12"), A6("2001:db8::12"), "host-gw"),
                 N6("fd00:10:0:80::/64"))
    d = plan_hostgw(NET, "eth0", {peer.subnet: peer}, NET6)
    assert d.routes == {Route(N4("10.0.80.0/24"), "eth0", A4("198.18.0.12")),
                        Route(N6("fd00:10:0:80::/64"), "eth0", A6("2001:db8::12"))}
    v4only = plan_hostgw(NET, "eth0", {peer.subnet: peer})
    assert v4only.routes == {Route(N4("10.0.80.0/24"), "eth0", A4("198.18.0.12"))}


def test_one_diff_for_both_families():
    peer = vx6("10.0.80.0/24", "fd00:10:0:80::/64", "198.18.0.12", "2001:db8::12")
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {peer.subnet: peer},
                   v6=own_ipv6(VxlanOptions(), OWN, NET6, LINK6))
    plan = diff(d, ActualState())
    assert [r.dst.version for r in plan.put_routes] == [4, 6]
    gone = diff(plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {}, v6=own_ipv6(VxlanOptions(), OWN, NET6, LINK6)),
                ActualState(d.routes, d.neighs, d.fdbs))
    assert len(gone.del_routes) == len(gone.del_neighs) == len(gone.del_fdbs) == 2  # both families' entries go


def test_vxlan_direct_routing_routes_ipv6_via_a_directly_connected_peers_public_ipv6():
    near = vx6("10.0.80.0/24", "fd00:10:0:80::/64", "198.18.0.12", "2001:db8::12")
    far = vx6("10.0.81.0/24", "fd00:10:0:81::/64", "192.0.2.9", "2001:db8:ff::9")
    v4far = vx6("10.0.82.0/24", "fd00:10:0:82::/64", "192.0.2.10", "2001:db8::14")  # IPv6 on-link, IPv4 not
    peers = {le.subnet: le for le in (near, far, v4far)}
    onlink = frozenset({A4("198.18.0.12"), A6("2001:db8::12"), A6("2001:db8::14")})
    opts = VxlanOptions(direct_routing=True)
    d = plan_vxlan(opts, NET, OWN, LINK, "eth0", peers, onlink, v6=own_ipv6(opts, OWN, NET6, LINK6))
    routes6 = {r for r in d.routes if r.dst.version == 6}
    assert routes6 == {Route(N6("fd00:10:0:80::/64"), "eth0", A6("2001:db8::12")),
                       Route(N6("fd00:10:0:81::/64"), "flannel-v6.1", A6("fd00:10:0:81::"), onlink=True),
                       Route(N6("fd00:10:0:82::/64"), "eth0", A6("2001:db8::14"))}
    assert Route(N4("10.0.80.0/24"), "eth0", A4("198.18.0.12")) in d.routes
    assert Route(N4("10.0.82.0/24"), "flannel.1", A4("10.0.82.0"), onlink=True) in d.routes
    # a directly routed IPv6 peer needs no neighbour or FDB entry on flannel-v6.1
    assert {n.ip for n in d.neighs if n.dev == "flannel-v6.1"} == {A6("fd00:10:0:81::")}
    assert {f.dst for f in d.fdbs if f.dev == "flannel-v6.1"} == {A6("2001:db8:ff::9")}
    # without DirectRouting, the same facts change nothing
    plain = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", peers, onlink,
                       v6=own_ipv6(VxlanOptions(), OWN, NET6, LINK6))
    assert {r.dev for r in plain.routes} == {"flannel.1", "flannel-v6.1"}


def test_vxlan_ipv6_only_direct_routing():
    peer = Lease(N4("0.0.0.0/0"), LeaseAttrs(A4(0), A6("2001:db8::12"), "vxlan", None,
                                              {"VNI": 1, "VtepMAC": "bb:bb:bb:bb:bb:06"}), N6("fd00:10:0:80::/64"))
    far = Lease(N4("0.0.0.0/0"), LeaseAttrs(A4(0), A6("2001:db8:ff::9"), "vxlan", None,
                                             {"VNI": 1, "VtepMAC": "bb:bb:bb:bb:bb:07"}), N6("fd00:10:0:81::/64"))
    opts = VxlanOptions(direct_routing=True)
    d = plan_vxlan6(opts, OWN, NET6, LINK6, "eth0", {peer.ident: peer, far.ident: far}, frozenset({A6("2001:db8::12")}))
    assert d.routes == {Route(N6("fd00:10:0:80::/64"), "eth0", A6("2001:db8::12")),
                        Route(N6("fd00:10:0:81::/64"), "flannel-v6.1", A6("fd00:10:0:81::"), onlink=True)}
    assert [n.ip for n in d.neighs] == [A6("fd00:10:0:81::")] and [f.dst for f in d.fdbs] == [A6("2001:db8:ff::9")]
    assert d.owned_devs == frozenset({"flannel-v6.1"})
