"""PeerTable: snapshots replace, changes add/remove, garbage never deletes (docs/compatibility.md#watch)."""

from __future__ import annotations

import ipaddress

from pyflannel.core.events import BadLease, Changes, PeerTable, Snapshot
from pyflannel.core.lease import Lease, LeaseAttrs

N4 = ipaddress.IPv4Network


def lease(subnet: str, ip: str, *, lease_id: int = 1, rev: int = 1, mac: str | None = None) -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac else None
    attrs = LeaseAttrs(ipaddress.IPv4Address(ip), backend_type="vxlan" if mac else "", backend_data=data)
    return Lease(N4(subnet), attrs, lease_id=lease_id, mod_revision=rev)


A = lease("10.0.1.0/24", "192.168.0.1", mac="aa:aa:aa:aa:aa:01")
B = lease("10.0.2.0/24", "192.168.0.2", mac="aa:aa:aa:aa:aa:02")
C = lease("10.0.3.0/24", "192.168.0.3", mac="aa:aa:aa:aa:aa:03")


def test_first_snapshot_fills_the_table():
    t = PeerTable()
    assert t.apply(Snapshot((A, B), revision=10))
    assert t.leases == {A.subnet: A, B.subnet: B}
    assert t.revision == 10


def test_snapshot_replaces_everything():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    assert t.apply(Snapshot((B, C), revision=20))
    assert t.leases == {B.subnet: B, C.subnet: C}
    assert t.revision == 20


def test_identical_snapshot_is_no_change():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    assert not t.apply(Snapshot((B, A), revision=11))
    assert t.revision == 11


def test_empty_snapshot_removes_everyone():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    assert t.apply(Snapshot((), revision=11))
    assert t.leases == {}


def test_changes_add_and_remove():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    assert t.apply(Changes(puts=(B,), revision=11))
    assert set(t.leases) == {A.subnet, B.subnet}
    assert t.apply(Changes(deletes=(A.subnet,), revision=12))
    assert t.leases == {B.subnet: B}
    assert t.revision == 12


def test_delete_of_unknown_subnet_is_no_change():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    assert not t.apply(Changes(deletes=(N4("10.0.99.0/24"),), revision=11))
    assert t.leases == {A.subnet: A}


def test_delete_then_put_in_one_batch_keeps_the_new_lease():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    moved = lease("10.0.1.0/24", "192.168.0.9", lease_id=5, rev=12, mac="aa:aa:aa:aa:aa:09")
    assert t.apply(Changes(puts=(moved,), deletes=(A.subnet,), revision=12))
    assert t.leases == {A.subnet: moved}


def test_changed_attrs_is_a_change():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    new_mac = lease("10.0.1.0/24", "192.168.0.1", lease_id=2, rev=11, mac="aa:aa:aa:aa:aa:ff")
    assert t.apply(Changes(puts=(new_mac,), revision=11))
    assert t.leases[A.subnet].attrs.backend_data["VtepMAC"] == "aa:aa:aa:aa:aa:ff"


def test_renewal_is_no_change_but_is_recorded():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    renewed = lease("10.0.1.0/24", "192.168.0.1", lease_id=999, rev=50, mac="aa:aa:aa:aa:aa:01")
    assert not t.apply(Changes(puts=(renewed,), revision=50))
    assert t.leases[A.subnet].lease_id == 999
    assert t.leases[A.subnet].mod_revision == 50
    assert t.revision == 50
    # and in a snapshot too
    renewed2 = lease("10.0.2.0/24", "192.168.0.2", lease_id=1000, rev=60, mac="aa:aa:aa:aa:aa:02")
    assert not t.apply(Snapshot((renewed, renewed2), revision=60))
    assert t.leases[B.subnet].lease_id == 1000


def test_bad_lease_in_snapshot_keeps_last_good_lease():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    bad = BadLease("/coreos.com/network/subnets/10.0.1.0-24", "lease value is not JSON", A.subnet)
    assert not t.apply(Snapshot((B,), revision=11, bad=(bad,)))
    assert t.leases == {A.subnet: A, B.subnet: B}


def test_bad_lease_in_snapshot_for_unknown_subnet_adds_nothing():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    bad = BadLease("/coreos.com/network/subnets/10.0.7.0-24", "garbage", N4("10.0.7.0/24"))
    badkey = BadLease("/coreos.com/network/subnets/nonsense", "not a subnet key")
    assert not t.apply(Snapshot((A,), revision=11, bad=(bad, badkey)))
    assert t.leases == {A.subnet: A}


def test_bad_key_without_subnet_in_snapshot_does_not_keep_a_deleted_peer():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    badkey = BadLease("/coreos.com/network/subnets/nonsense", "not a subnet key")
    assert t.apply(Snapshot((B,), revision=11, bad=(badkey,)))
    assert t.leases == {B.subnet: B}


def test_bad_lease_in_changes_is_not_a_delete():
    t = PeerTable()
    t.apply(Snapshot((A, B), revision=10))
    bad = BadLease("/coreos.com/network/subnets/10.0.1.0-24", "lease value is not JSON", A.subnet)
    assert not t.apply(Changes(bad=(bad,), revision=11))
    assert t.leases == {A.subnet: A, B.subnet: B}
    assert t.revision == 11


def test_bad_then_good_value_again():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    bad = BadLease("/coreos.com/network/subnets/10.0.1.0-24", "garbage", A.subnet)
    t.apply(Snapshot((), revision=11, bad=(bad,)))
    fixed = lease("10.0.1.0/24", "192.168.0.1", lease_id=3, rev=12, mac="aa:aa:aa:aa:aa:01")
    assert not t.apply(Changes(puts=(fixed,), revision=12))
    assert t.leases == {A.subnet: fixed}


def test_revision_never_goes_backwards():
    t = PeerTable()
    t.apply(Snapshot((A,), revision=10))
    t.apply(Changes(puts=(B,), revision=5))
    assert t.revision == 10


def test_peers_excludes_own_subnet():
    t = PeerTable()
    t.apply(Snapshot((A, B, C), revision=10))
    assert set(t.peers(B.subnet)) == {A.subnet, C.subnet}
    assert set(t.peers(None)) == {A.subnet, B.subnet, C.subnet}
    assert set(t.peers(N4("10.0.50.0/24"))) == {A.subnet, B.subnet, C.subnet}
    assert t.peers(A.subnet)[C.subnet] == C
    # peers() is a view for the caller: changing it does not change the table
    peers = dict(t.peers(A.subnet))
    peers.clear()
    assert len(t.leases) == 3


def test_a_deleted_lease_leaves_after_its_grace():
    t = PeerTable(grace=2.0)
    t.apply(Snapshot((A, B), revision=10))
    assert not t.apply(Changes(deletes=(B.subnet,), revision=11), now=100.0)
    assert t.leases == {A.subnet: A, B.subnet: B} and t.next_expiry() == 102.0
    assert not t.expire(101.9) and B.subnet in t.leases
    assert t.expire(102.0).removed == (B,)
    assert t.leases == {A.subnet: A} and t.next_expiry() is None
    assert not t.apply(Changes(deletes=(C.subnet,), revision=12), now=103.0) and t.next_expiry() is None


def test_a_deleted_lease_put_back_within_its_grace_changes_nothing():
    t = PeerTable(grace=2.0)
    t.apply(Snapshot((A, B), revision=10))
    t.apply(Changes(deletes=(B.subnet,), revision=11), now=100.0)
    back = lease("10.0.2.0/24", "192.168.0.2", mac="aa:aa:aa:aa:aa:02", lease_id=7, rev=12)
    assert not t.apply(Changes(puts=(back,), revision=12), now=100.05)  # its owner took it again
    assert t.leases[B.subnet] is back and t.next_expiry() is None and not t.expire(110.0)


def test_a_deleted_subnet_taken_by_another_host_within_the_grace_changes_at_once():
    t = PeerTable(grace=2.0)
    t.apply(Snapshot((A, B), revision=10))
    t.apply(Changes(deletes=(B.subnet,), revision=11), now=100.0)
    other = lease("10.0.2.0/24", "192.168.0.9", mac="aa:aa:aa:aa:aa:09", rev=12)
    assert t.apply(Changes(puts=(other,), revision=12), now=100.5).changed == (other,)
    assert t.leases[B.subnet] is other and not t.expire(110.0)


def test_a_snapshot_without_a_departing_lease_removes_it_at_once():
    t = PeerTable(grace=2.0)
    t.apply(Snapshot((A, B), revision=10))
    t.apply(Changes(deletes=(B.subnet,), revision=11), now=100.0)
    assert t.apply(Snapshot((A,), revision=12), now=100.5).removed == (B,)
    assert t.next_expiry() is None and t.leases == {A.subnet: A}
