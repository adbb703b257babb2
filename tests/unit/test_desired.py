"""Desired kernel state per backend (pure: leases in, state out) and the ownership-aware diff."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.backend.hostgw import plan_hostgw
from pyflannel.backend.udp import plan_udp
from pyflannel.backend.vxlan import VxlanOptions, peer_mac, plan_vxlan, random_mac
from pyflannel.core.config import parse_config
from pyflannel.core.desired import ActualState, DesiredState, Fdb, LinkSpec, Neigh, Route, VxlanSpec, diff
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs

NET = N("10.0.0.0/16")


def vx(subnet: str, pip: str, mac: str = "c6:d2:32:6f:8f:44") -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(pip), None, "vxlan", {"VNI": 1, "VtepMAC": mac}))


OWN = vx("10.0.53.0/24", "198.18.0.11", "02:00:00:00:00:01")
LINK = LinkSpec("flannel.1", "vxlan", 1450, "02:00:00:00:00:01", VxlanSpec(1, 0, A("198.18.0.11"), 2))


def test_vxlan_plan_is_flannels() -> None:
    peers = {N("10.0.80.0/24"): vx("10.0.80.0/24", "198.18.0.12", "AA:BB:CC:DD:EE:FF")}
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", peers)
    assert d.links == (LINK,)
    assert [(a.dev, str(a.address)) for a in d.addresses] == [("flannel.1", "10.0.53.0/32")]
    assert d.neighs == {Neigh("flannel.1", A("10.0.80.0"), "aa:bb:cc:dd:ee:ff")}
    assert d.fdbs == {Fdb("flannel.1", "aa:bb:cc:dd:ee:ff", A("198.18.0.12"))}
    assert d.routes == {Route(N("10.0.80.0/24"), "flannel.1", A("10.0.80.0"), onlink=True)}
    assert d.owned_devs == {"flannel.1"}


def test_vxlan_direct_routing_only_for_directly_connected_peers() -> None:
    peers = {N("10.0.80.0/24"): vx("10.0.80.0/24", "198.18.0.12"), N("10.0.81.0/24"): vx("10.0.81.0/24", "192.0.2.9")}
    d = plan_vxlan(VxlanOptions(direct_routing=True), NET, OWN, LINK, "eth0", peers, frozenset({A("198.18.0.12")}))
    assert Route(N("10.0.80.0/24"), "eth0", A("198.18.0.12")) in d.routes
    assert Route(N("10.0.81.0/24"), "flannel.1", A("10.0.81.0"), onlink=True) in d.routes
    assert {n.ip for n in d.neighs} == {A("10.0.81.0")}


def test_vxlan_peer_with_bad_mac_is_skipped() -> None:
    bad = Lease(N("10.0.9.0/24"), LeaseAttrs(A("198.18.0.9"), None, "vxlan", {"VNI": 1, "VtepMAC": "zz"}))
    assert peer_mac(bad) is None
    assert peer_mac(Lease(N("10.0.9.0/24"), LeaseAttrs(A("198.18.0.9"), None, "vxlan", None))) is None
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {bad.subnet: bad, N("10.0.80.0/24"): vx("10.0.80.0/24",
                                                                                                 "198.18.0.12")})
    assert [r.dst for r in d.routes] == [N("10.0.80.0/24")]


def test_random_mac_is_locally_administered_unicast() -> None:
    for _ in range(100):
        first = int(random_mac().split(":")[0], 16)
        assert first & 0x02 and not first & 0x01


def test_hostgw_and_udp_plans() -> None:
    peers = {N("10.0.80.0/24"): Lease(N("10.0.80.0/24"), LeaseAttrs(A("198.18.0.12"), None, "host-gw"))}
    assert plan_hostgw(NET, "eth0", peers).routes == {Route(N("10.0.80.0/24"), "eth0", A("198.18.0.12"))}
    d = plan_udp(NET, OWN, "flannel0")
    assert d.routes == {Route(NET, "flannel0")}
    assert str(d.addresses[0].address) == "10.0.53.0/32"
    # no IPv6 on flannel0: the kernel's own router solicitations would otherwise go into the pump
    assert ("net/ipv6/conf/flannel0/disable_ipv6", "1") in d.sysctls


@pytest.mark.parametrize(("backend", "message"), [
    ('{"Type": "vxlan", "VNI": -1}', "VNI must be an integer 0..16777215"),
    ('{"Type": "vxlan", "VNI": 16777216}', "VNI must be an integer 0..16777215"),
    ('{"Type": "vxlan", "Port": 70000}', "Port must be an integer 1..65535"),
    ('{"Type": "vxlan", "GBP": "yes"}', "GBP must be true or false"),
    ('{"Type": "udp", "Port": -1}', "Port must be an integer 1..65535"),
])
def test_bad_backend_options(backend: str, message: str) -> None:
    from pyflannel.backend import get_backend

    cfg = parse_config(f'{{"Network": "10.0.0.0/16", "Backend": {backend}}}')
    with pytest.raises(ConfigError, match=message):
        get_backend(cfg.backend_type).check_config(cfg)


def test_vxlan_vni_0_is_accepted_as_go_flannel_does() -> None:
    """Go flannel takes VNI 0 (the kernel does): device flannel.0 (tests/e2e/test_goflannel_configs.py)."""
    from pyflannel.backend.vxlan import parse_options

    cfg = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}')
    assert parse_options(cfg, 1500).dev == "flannel.0"


def test_unknown_backend_key_is_named() -> None:
    from pyflannel.backend import get_backend

    cfg = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VIN": 4}}')
    warnings = get_backend("vxlan").check_config(cfg)
    assert len(warnings) == 1 and "'VIN'" in warnings[0]


# ---- diff -----------------------------------------------------------------------------------------------

def test_diff_replaces_in_place_and_removes_only_stale() -> None:
    want = DesiredState(NET, routes=frozenset({Route(N("10.0.1.0/24"), "eth0", A("198.18.0.2")),
                                               Route(N("10.0.2.0/24"), "eth0", A("198.18.0.3"))}))
    have = ActualState(routes=frozenset({Route(N("10.0.1.0/24"), "eth0", A("198.18.0.9")),  # wrong gateway
                                         Route(N("10.0.3.0/24"), "eth0", A("198.18.0.4"))}))  # stale
    plan = diff(want, have)
    assert {r.dst for r in plan.put_routes} == {N("10.0.1.0/24"), N("10.0.2.0/24")}
    assert [r.dst for r in plan.del_routes] == [N("10.0.3.0/24")], "a changed route is replaced, not deleted"


def test_diff_of_right_state_is_empty() -> None:
    d = plan_vxlan(VxlanOptions(), NET, OWN, LINK, "eth0", {N("10.0.80.0/24"): vx("10.0.80.0/24", "198.18.0.12")})
    assert len(diff(d, ActualState(d.routes, d.neighs, d.fdbs))) == 0


subnets = st.integers(1, 254).map(lambda i: N(f"10.0.{i}.0/24"))
ips = st.integers(1, 254).map(lambda i: A(f"198.18.0.{i}"))


@given(st.dictionaries(subnets, ips, max_size=20), st.dictionaries(subnets, ips, max_size=20))
def test_diff_converges(want_map: dict, have_map: dict) -> None:
    """Applying the plan to the actual state yields exactly the desired state."""
    want = frozenset(Route(sn, "eth0", ip) for sn, ip in want_map.items())
    have = frozenset(Route(sn, "eth0", ip) for sn, ip in have_map.items())
    plan = diff(DesiredState(NET, routes=want), ActualState(routes=have))
    after = {r.dst: r for r in have}
    for r in plan.put_routes:
        after[r.dst] = r
    for r in plan.del_routes:
        after.pop(r.dst)
    assert frozenset(after.values()) == want
    # ...and the plan is minimal: only missing or changed routes are written, only unwanted ones deleted
    assert set(plan.put_routes) == want - have
    assert {r.dst for r in plan.del_routes} == {r.dst for r in have} - {r.dst for r in want}


def test_diff_never_replaces_a_route_it_does_not_own() -> None:
    """docker0's connected route for a subnet that a (stale) peer lease claims stays untouched."""
    want = DesiredState(NET, routes=frozenset({Route(N("10.0.53.0/24"), "flannel.1", A("10.0.53.0"), onlink=True),
                                               Route(N("10.0.80.0/24"), "flannel.1", A("10.0.80.0"), onlink=True)}))
    plan = diff(want, ActualState(foreign=frozenset({N("10.0.53.0/24")})))
    assert [r.dst for r in plan.put_routes] == [N("10.0.80.0/24")]
    assert len(plan.notes) == 1 and "10.0.53.0/24" in plan.notes[0]
