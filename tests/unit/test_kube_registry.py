"""The kube registry's event logic without a server: Node watch events -> Changes for the peer table."""

import ipaddress

from pyflannel.core.events import BadLease, PeerTable
from pyflannel.store.kube import KubeOptions, KubeRegistry

P = "flannel.alpha.coreos.com/"
N = ipaddress.IPv4Network


def node(name, cidr, ip="198.18.0.11", **extra):
    ann = {P + "kube-subnet-manager": "true", P + "public-ip": ip, P + "backend-type": "vxlan",
           P + "backend-data": '{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}', **extra}
    return {"metadata": {"name": name, "annotations": ann, "resourceVersion": "7"}, "spec": {"podCIDR": cidr}}


def test_add_modify_delete_and_a_moved_podcidr():
    reg, table = KubeRegistry(KubeOptions()), PeerTable()
    ch = reg._change("ADDED", node("a", "10.0.1.0/24"), 5)
    assert [le.subnet for le in ch.puts] == [N("10.0.1.0/24")] and ch.revision == 5
    table.apply(ch)
    ch = reg._change("MODIFIED", node("a", "10.0.4.0/24"), 6)  # podCIDR changed: old subnet goes
    assert ch.deletes == (N("10.0.1.0/24"),) and [le.subnet for le in ch.puts] == [N("10.0.4.0/24")]
    table.apply(ch)
    ch = reg._change("DELETED", node("a", "10.0.4.0/24"), 7)
    assert ch.deletes == (N("10.0.4.0/24"),)
    table.apply(ch)
    assert table.leases == {}


def test_garbage_on_a_known_node_keeps_its_last_good_lease():
    reg, table = KubeRegistry(KubeOptions()), PeerTable()
    table.apply(reg._change("ADDED", node("a", "10.0.1.0/24"), 5))
    ch = reg._change("MODIFIED", node("a", "10.0.1.0/24", ip="garbage"), 6)
    assert ch.deletes == () and ch.puts == ()
    assert isinstance(ch.bad[0], BadLease) and ch.bad[0].key == "node a" and "public-ip" in ch.bad[0].reason
    table.apply(ch)
    assert N("10.0.1.0/24") in table.leases


def test_a_node_that_stops_being_a_flannel_node_is_removed():
    reg = KubeRegistry(KubeOptions())
    reg._change("ADDED", node("a", "10.0.1.0/24"), 5)
    plain = {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.1.0/24"}}
    assert reg._change("MODIFIED", plain, 6).deletes == (N("10.0.1.0/24"),)
