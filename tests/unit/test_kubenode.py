"""Kube mode, pure: annotation prefixes and Node objects <-> leases as Go flannel has them."""

import ipaddress

import pytest

from pyflannel.core import kubenode
from pyflannel.core.errors import ConfigError, StoreDataError
from pyflannel.core.lease import LeaseAttrs

P = "flannel.alpha.coreos.com/"


@pytest.mark.parametrize(("given", "want"), [
    ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
    ("example.com/", "example.com/"),
    ("example.com/fl", "example.com/fl-"),
    ("example.com/fl-", "example.com/fl-"),
])
def test_annotation_prefix_normalised_as_go(given, want):
    assert kubenode.annotation_prefix(given) == want


@pytest.mark.parametrize("bad", ["a/b/c", "Example.com", "nodot", "ex ample.com/"])
def test_annotation_prefix_refused(bad):
    with pytest.raises(ConfigError, match="kube-annotation-prefix"):
        kubenode.annotation_prefix(bad)


def node(name="n1", cidr="10.5.1.0/24", **ann):
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    return {"metadata": {"name": name, "annotations": {P + k.replace("_", "-"): v for k, v in ann.items()}},
            "spec": spec}


def test_lease_annotations_round_trip_and_match_go_bytes():
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), None, "vxlan", {"VNI": 1, "VtepMAC": "12:c6:65:89:b4:e3"})
    ann = kubenode.lease_annotations(attrs, P)
    assert ann[P + "backend-data"] == '{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}'
    assert ann[P + "kube-subnet-manager"] == "true" and ann[P + "public-ip"] == "198.18.0.11"
    n = {"metadata": {"name": "n1", "annotations": ann}, "spec": {"podCIDR": "10.5.1.0/24"}}
    lease = kubenode.node_to_lease(n, P)
    assert lease is not None and lease.subnet == ipaddress.IPv4Network("10.5.1.0/24") and lease.attrs == attrs
    assert kubenode.stored_mac(n, P) == "12:c6:65:89:b4:e3"
    hostgw = kubenode.lease_annotations(LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), None, "host-gw"), P)
    assert hostgw[P + "backend-data"] == "null"


def test_not_flannel_nodes_and_missing_podcidr_are_no_lease():
    assert kubenode.node_to_lease(node(), P) is None  # no kube-subnet-manager annotation
    assert kubenode.node_to_lease(node(cidr="", kube_subnet_manager="true", public_ip="1.2.3.4"), P) is None


def test_podcidrs_v4_entry_is_picked():
    n = {"metadata": {"name": "n"}, "spec": {"podCIDRs": ["fd00::/64", "10.5.7.0/24"]}}
    assert kubenode.pod_cidr(n) == ipaddress.IPv4Network("10.5.7.0/24")


@pytest.mark.parametrize(("ann", "match"), [
    ({"public_ip": "not-an-ip", "backend_data": "null"}, "public-ip"),
    ({"public_ip": "0.0.0.0", "backend_data": "null"}, "unspecified"),
    ({"public_ip": "1.2.3.4", "backend_data": "{garbage"}, "backend-data"),
])
def test_garbage_annotations_raise_store_data_error(ann, match):
    with pytest.raises(StoreDataError, match=match):
        kubenode.node_to_lease(node(kube_subnet_manager="true", **ann), P)


def test_stored_mac_ignores_garbage():
    assert kubenode.stored_mac(node(backend_data="{bad"), P) == ""
    assert kubenode.stored_mac(node(backend_data='{"VtepMAC":"zz"}'), P) == ""
    assert kubenode.stored_mac(node(), P) == ""
