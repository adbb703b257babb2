"""Kube mode with IPv6, pure: a node's podCIDRs and annotations <-> dual-stack and IPv6-only
leases as Go flannel's kube subnet manager reads and writes them (pkg/subnet/kube), a malformed
IPv6 half kept apart from the IPv4 half, and our own lease from our node's podCIDRs."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.core import kubenode
from pyflannel.core.allocate import NO_IPV4
from pyflannel.core.config import parse_config
from pyflannel.core.errors import AllocationError, StoreDataError
from pyflannel.core.events import Snapshot
from pyflannel.core.kubenode import Families
from pyflannel.core.lease import LeaseAttrs
from pyflannel.core.leasecheck import screen
from pyflannel.store.kube_manager import KubeLeaseManager

P = "flannel.alpha.coreos.com/"
N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
DUAL, ONLY = Families(True, True), Families(False, True)
MAC, MAC6 = "12:c6:65:89:b4:e3", "7a:1b:2c:3d:4e:5f"
DUAL_CONF = parse_config('{"Network": "10.0.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56", '
                         '"Backend": {"Type": "vxlan"}}')
ONLY_CONF = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56", '
                         '"Backend": {"Type": "vxlan"}}')


def node(cidrs, ann, name="n1"):
    return {"metadata": {"name": name, "annotations": ann}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}


def dual_attrs(kind="vxlan"):
    v4 = {"VNI": 1, "VtepMAC": MAC} if kind == "vxlan" else None
    v6 = {"VNI": 1, "VtepMAC": MAC6} if kind == "vxlan" else None
    return LeaseAttrs(A4("198.18.0.11"), A6("2001:db8::11"), kind, v4, v6)


def only_attrs(kind="vxlan"):
    v6 = {"VNI": 1, "VtepMAC": MAC6} if kind == "vxlan" else None
    return LeaseAttrs(A4(0), A6("2001:db8::11"), kind, None, v6)


def test_dual_stack_annotations_are_gos_and_round_trip():
    ann = kubenode.lease_annotations(dual_attrs(), P)
    assert ann == {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
                   P + "backend-data": f'{{"VNI":1,"VtepMAC":"{MAC}"}}', P + "public-ip": "198.18.0.11",
                   P + "backend-v6-data": f'{{"VNI":1,"VtepMAC":"{MAC6}"}}', P + "public-ipv6": "2001:db8::11"}
    lease = kubenode.node_to_lease(node(["10.0.1.0/24", "2001:db8:42:1::/64"], ann), P, DUAL)
    assert lease is not None and lease.attrs == dual_attrs()
    assert (lease.subnet, lease.ipv6_subnet) == (N4("10.0.1.0/24"), N6("2001:db8:42:1::/64"))
    # an IPv4-only network reads the same node as before: its IPv4 half only
    v4 = kubenode.node_to_lease(node(["10.0.1.0/24", "2001:db8:42:1::/64"], ann), P)
    assert v4 is not None and v4.ipv6_subnet is None and v4.attrs.public_ipv6 is None
    assert kubenode.stored_mac(node(["10.0.1.0/24"], ann), P, v6=True) == MAC6


def test_ipv6_only_vxlan_annotations_are_gos_no_ipv4_pair():
    # Go's AcquireLease writes backend-data and public-ip for vxlan only when BackendData is set
    ann = kubenode.lease_annotations(only_attrs(), P)
    assert ann == {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
                   P + "backend-v6-data": f'{{"VNI":1,"VtepMAC":"{MAC6}"}}', P + "public-ipv6": "2001:db8::11"}
    lease = kubenode.node_to_lease(node(["2001:db8:42:3::/64"], ann), P, ONLY)
    assert lease is not None and lease.subnet == NO_IPV4 and lease.ident == N6("2001:db8:42:3::/64")
    assert lease.attrs == only_attrs() and lease.key == "0.0.0.0-0&2001:db8:42:3::-64"


def test_host_gw_annotations_are_gos_in_both_stacks():
    # host-gw is not vxlan: Go writes the IPv4 pair always (PublicIP 0.0.0.0 on an IPv6-only host)
    assert kubenode.lease_annotations(only_attrs("host-gw"), P) == {
        P + "kube-subnet-manager": "true", P + "backend-type": "host-gw", P + "backend-data": "null",
        P + "public-ip": "0.0.0.0", P + "backend-v6-data": "null", P + "public-ipv6": "2001:db8::11"}
    dual = kubenode.lease_annotations(dual_attrs("host-gw"), P)
    assert dual[P + "public-ip"] == "198.18.0.11" and dual[P + "public-ipv6"] == "2001:db8::11"
    v4 = kubenode.lease_annotations(LeaseAttrs(A4("198.18.0.11"), None, "host-gw"), P)
    assert P + "public-ipv6" not in v4 and P + "backend-v6-data" not in v4


@pytest.mark.parametrize(("change", "why"), [
    ({P + "public-ipv6": "2001:db8::zz"}, "public-ipv6 '2001:db8::zz' is not an IPv6 address"),
    ({P + "public-ipv6": "2001:db8::11%eth0"}, "is not an IPv6 address"),
    ({P + "public-ipv6": "::"}, "PublicIPv6 :: is unspecified"),
    ({P + "public-ipv6": None}, "no annotation flannel.alpha.coreos.com/public-ipv6"),
    ({P + "backend-v6-data": "{"}, "backend-v6-data '{' is not JSON"),
])
def test_a_malformed_ipv6_half_keeps_the_ipv4_half_and_is_warned_once(change, why):
    ann = {k: v for k, v in (kubenode.lease_annotations(dual_attrs(), P) | change).items() if v is not None}
    lease = kubenode.node_to_lease(node(["10.0.9.0/24", "2001:db8:42:9::/64"], ann, "junk6"), P, DUAL)
    assert lease is not None and lease.subnet == N4("10.0.9.0/24")
    assert "node junk6" in lease.attrs.ipv6_problem and why in lease.attrs.ipv6_problem
    warnings: list[str] = []
    ev = screen(Snapshot((lease,), 1), DUAL_CONF, "node ", warnings, any_len=True)
    assert [le.ipv6_subnet for le in ev.leases] == [None] and ev.leases[0].attrs.public_ipv6 is None
    assert ev.leases[0].attrs.public_ip == A4("198.18.0.11") and ev.bad == ()
    assert len(warnings) == 1 and why in warnings[0] and "using only its IPv4 part 10.0.9.0/24" in warnings[0]


def test_a_peer_without_an_ipv6_podcidr_keeps_its_ipv4_half_with_a_warning():
    ann = kubenode.lease_annotations(dual_attrs(), P)
    lease = kubenode.node_to_lease(node(["10.0.4.0/24"], ann, "old"), P, DUAL)
    assert lease is not None and lease.ipv6_subnet is None
    warnings: list[str] = []
    ev = screen(Snapshot((lease,), 1), DUAL_CONF, "node ", warnings, any_len=True)
    assert len(ev.leases) == 1 and "node old: its podCIDRs ['10.0.4.0/24'] have no IPv6 CIDR" in warnings[0]


def test_kube_podcidr_lengths_are_the_controller_managers_not_ipv6subnetlen():
    ann = kubenode.lease_annotations(dual_attrs(), P)
    lease = kubenode.node_to_lease(node(["10.0.1.0/24", "2001:db8:42:1::/80"], ann), P, DUAL)
    warnings: list[str] = []
    assert screen(Snapshot((lease,), 1), DUAL_CONF, "node ", warnings, any_len=True).leases == (lease,)
    only = kubenode.node_to_lease(node(["2001:db8:42:1::/80"], kubenode.lease_annotations(only_attrs(), P)), P, ONLY)
    assert screen(Snapshot((only,), 1), ONLY_CONF, "node ", any_len=True).leases == (only,)
    outside = kubenode.node_to_lease(node(["2001:db8:99::/64"], kubenode.lease_annotations(only_attrs(), P)), P, ONLY)
    assert "outside the IPv6 network" in screen(Snapshot((outside,), 1), ONLY_CONF, "node ", any_len=True).bad[0].reason


@pytest.mark.parametrize(("cidrs", "ann", "match"), [
    (["10.0.1.0/24"], None, r"podCIDRs \['10.0.1.0/24'\] have no IPv6 CIDR, which this IPv6-only network needs"),
    (["2001:db8:42:1::/64"], {P + "public-ipv6": "nope"}, "public-ipv6 'nope' is not an IPv6 address"),
    (["2001:db8:42:1::/64"], {P + "public-ipv6": None}, "no annotation"),
    (["10.0.1.0/24", "2001:db8:42:1::/64", "10.0.2.0/24"], None, "more than two"),
])
def test_a_bad_ipv6_only_node_is_a_bad_lease(cidrs, ann, match):
    base = kubenode.lease_annotations(only_attrs(), P) | (ann or {})
    with pytest.raises(StoreDataError, match=match):
        kubenode.node_to_lease(node(cidrs, {k: v for k, v in base.items() if v is not None}), P, ONLY)


def test_a_dual_stack_network_needs_the_ipv4_podcidr_of_a_peer():
    with pytest.raises(StoreDataError, match="have no IPv4 CIDR"):
        kubenode.node_to_lease(node(["2001:db8:42:1::/64"], kubenode.lease_annotations(dual_attrs(), P)), P, DUAL)


class _Reg:
    """What ``KubeLeaseManager._lease`` reads of its registry."""
    node, config_key, prefix = "h1", "/etc/kube-flannel/net-conf.json", P


def own_lease(config, cidrs, attrs, ann=None):
    mgr = KubeLeaseManager(_Reg(), attrs)  # type: ignore[arg-type]
    n = node(cidrs, ann or {})
    v4, v6 = kubenode.pod_cidrs(n)
    return mgr._lease(config, n, v4, v6)


def test_our_lease_from_our_nodes_podcidrs():
    dual = own_lease(DUAL_CONF, ["10.0.1.0/24", "2001:db8:42:1::/64"], dual_attrs())
    assert (dual.subnet, dual.ipv6_subnet) == (N4("10.0.1.0/24"), N6("2001:db8:42:1::/64"))
    only = own_lease(ONLY_CONF, ["2001:db8:42:1::/64"], only_attrs())
    assert (only.subnet, only.ipv6_subnet, only.ident) == (NO_IPV4, N6("2001:db8:42:1::/64"), N6("2001:db8:42:1::/64"))
    over = own_lease(DUAL_CONF, ["10.0.1.0/24", "2001:db8:42:1::/64"], dual_attrs(),
                     {P + "public-ipv6-overwrite": "2001:db8::99"})
    assert over.attrs.public_ipv6 == A6("2001:db8::99") and over.attrs.public_ip == A4("198.18.0.11")


@pytest.mark.parametrize(("config", "cidrs", "attrs", "want"), [
    (DUAL_CONF, ["10.0.1.0/24"], dual_attrs(),
     "node 'h1' has no IPv6 podCIDR (spec.podCIDRs ['10.0.1.0/24']), which the flannel IPv6Network "
     "2001:db8:42::/56 needs: start the controller manager with --allocate-node-cidrs "
     "--cluster-cidr=10.0.0.0/16,2001:db8:42::/56"),
    (ONLY_CONF, ["10.0.1.0/24"], only_attrs(), "set EnableIPv6 false"),
    (DUAL_CONF, ["2001:db8:42:1::/64"], dual_attrs(), "node 'h1' has no IPv4 podCIDR"),
    (ONLY_CONF, ["2001:db8:99::/64"], only_attrs(), "IPv6 podCIDR 2001:db8:99::/64 is outside the flannel "
     "IPv6Network 2001:db8:42::/56"),
])
def test_our_node_without_the_podcidr_the_network_needs_is_one_clear_error(config, cidrs, attrs, want):
    with pytest.raises(AllocationError) as err:
        own_lease(config, cidrs, attrs)
    assert want in str(err.value)
