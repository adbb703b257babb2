"""The shape rules a lease must meet before any backend sees it (issue 13: stolen half subnets)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from pyflannel.core.config import parse_config
from pyflannel.core.events import Changes, PeerTable, Snapshot
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.leasecheck import screen, screen_held, subnet_problem

CONFIG = parse_config('{"Network": "10.0.0.0/16"}')
N = ipaddress.IPv4Network


def lease(subnet: str, ip: str = "198.18.0.2") -> Lease:
    return Lease(N(subnet), LeaseAttrs(ipaddress.IPv4Address(ip)), lease_id=7)


@pytest.mark.parametrize("subnet,why", [
    ("10.0.5.128/25", "is a /25"),  # half of a host's /24
    ("10.0.4.0/23", "is a /23"),  # two hosts' /24s
    ("10.0.0.0/16", "is a /16"),  # the whole network
    ("10.1.5.0/24", "outside the network"),
    ("192.168.0.0/24", "outside the network"),
])
def test_misshapen_subnets_are_refused(subnet, why):
    assert why in (subnet_problem(N(subnet), CONFIG) or "")


def test_a_host_sized_subnet_inside_the_network_passes():
    assert subnet_problem(N("10.0.5.0/24"), CONFIG) is None
    # SubnetMin/SubnetMax bound allocation only: a reservation below SubnetMin is still a host's
    assert subnet_problem(N("10.0.0.0/24"), CONFIG) is None


def test_screen_moves_misfits_to_bad_in_a_snapshot():
    snap = Snapshot((lease("10.0.5.0/24"), lease("10.0.5.128/25", "198.18.0.66"), lease("10.0.4.0/23")), 9)
    got = screen(snap, CONFIG)
    assert isinstance(got, Snapshot) and got.revision == 9
    assert [le.subnet for le in got.leases] == [N("10.0.5.0/24")]
    assert {b.key for b in got.bad} == {"10.0.5.128-25", "10.0.4.0-23"}
    assert all(b.subnet is None for b in got.bad)  # nothing to keep: it never was a peer
    table = PeerTable()
    table.apply(got)
    assert set(table.leases) == {N("10.0.5.0/24")}


def test_screen_moves_misfits_to_bad_in_changes_and_passes_deletes():
    ch = Changes((lease("10.0.6.0/24"), lease("10.0.6.0/25")), (N("10.0.7.0/24"),), 12)
    got = screen(ch, CONFIG, "/p/subnets/")
    assert isinstance(got, Changes)
    assert got.puts == (lease("10.0.6.0/24"),) and got.deletes == (N("10.0.7.0/24"),)
    assert [b.key for b in got.bad] == ["/p/subnets/10.0.6.0-25"]


def test_screen_refuses_an_ipv6_only_peer_on_the_ipv4_data_path():
    v6only = Lease(N("10.0.8.0/24"), LeaseAttrs(ipaddress.IPv4Address(0), ipaddress.IPv6Address("2001:db8::8")))
    got = screen(Snapshot((v6only,), 3), CONFIG)
    assert got.leases == () and "IPv6-only" in got.bad[0].reason


def test_screen_returns_a_clean_event_unchanged():
    snap = Snapshot((lease("10.0.5.0/24"),), 4)
    assert screen(snap, CONFIG) is snap


def test_kube_mode_takes_a_podcidr_of_any_length_inside_the_network():
    # the controller manager's --node-cidr-mask-size, not SubnetLen, sets a podCIDR's length
    snap = Snapshot((lease("10.0.5.0/25"), lease("10.0.6.0/23", "198.18.0.66"), lease("10.1.0.0/24", "198.18.0.67")), 5)
    got = screen(snap, CONFIG, "node ", any_len=True)
    assert [le.subnet for le in got.leases] == [N("10.0.5.0/25"), N("10.0.6.0/23")]
    assert [b.key for b in got.bad] == ["node 10.1.0.0-24"] and "outside the network" in got.bad[0].reason


# ---- a second key for a subnet already held (issue 13, 1: "must not overlap a lease already held") ----
V6 = ipaddress.IPv6Network


def alias(subnet: str, v6: str, ip: str = "198.18.0.66", created: int = 0) -> Lease:
    """A canonical key for ``subnet`` that is not the holder's: ``10.0.5.0-24&fd00:99::-64``."""
    return Lease(N(subnet), LeaseAttrs(ipaddress.IPv4Address(ip)), V6(v6), lease_id=9, create_revision=created)


def held(*leases: Lease) -> PeerTable:
    table = PeerTable()
    table.apply(Snapshot(leases, 1))
    return table


def test_a_second_key_for_a_held_subnet_is_refused_and_its_delete_changes_nothing():
    victim = lease("10.0.5.0/24", "198.18.0.2")
    table = held(victim)
    thief = alias("10.0.5.0/24", "fd00:99::/64")
    got = screen_held(Changes((thief,), (), 5), table, "/p/subnets/")
    assert got.puts == () and [b.key for b in got.bad] == ["/p/subnets/10.0.5.0-24&fd00:99::-64"]
    assert "already held by /p/subnets/10.0.5.0-24" in got.bad[0].reason and got.bad[0].subnet is None
    table.apply(got)
    assert table.leases[N("10.0.5.0/24")] == victim
    # the thief's key deleted: the holder stays; the holder's own key deleted: it goes
    gone = screen_held(Changes((), (N("10.0.5.0/24"),), 6, deleted_keys=(thief.key,)), table)
    assert gone.deletes == () and not table.apply(gone)
    gone = screen_held(Changes((), (N("10.0.5.0/24"),), 7, deleted_keys=(victim.key,)), table)
    assert gone.deletes == (N("10.0.5.0/24"),) and table.apply(gone).removed == (victim,)


def test_an_ipv6_subnet_held_by_another_key_is_refused():
    owner = alias("10.0.5.0/24", "fd00:5::/64", "198.18.0.2")
    table = held(owner)
    thief = alias("10.0.99.0/24", "fd00:5::/64")
    got = screen_held(Changes((thief, alias("10.0.98.0/24", "fd00:98::/64")), (), 5), table)
    assert [le.subnet for le in got.puts] == [N("10.0.98.0/24")]
    assert "fd00:5::/64 is already held by 10.0.5.0-24&fd00:5::-64" in got.bad[0].reason
    # once the owner's key is deleted, its subnets are free for a new key in the same batch
    free = screen_held(Changes((thief,), (owner.subnet,), 6, deleted_keys=(owner.key,)), table)
    assert free.puts == (thief,) and free.deletes == (owner.subnet,)


def test_a_snapshot_keeps_the_holder_then_our_own_key_then_the_oldest_key():
    victim = lease("10.0.5.0/24", "198.18.0.2")
    thief = alias("10.0.5.0/24", "fd00:99::/64", created=3)
    # a fresh host: the older key wins, whichever order etcd lists them in
    for order in ((victim, thief), (thief, victim)):
        older = dataclasses.replace(victim, create_revision=2)
        got = screen_held(Snapshot(tuple(older if le is victim else le for le in order), 9), PeerTable())
        assert got.leases == (older,) and [b.key for b in got.bad] == [thief.key]
    # the key our keeper holds wins on our host, and the key in the table keeps its subnet on a re-list
    young = dataclasses.replace(victim, create_revision=5)
    assert screen_held(Snapshot((young, thief), 9), PeerTable(), prefer=victim.key).leases == (young,)
    assert screen_held(Snapshot((young, thief), 9), held(victim)).leases == (young,)
    snap = Snapshot((victim,), 9)
    assert screen_held(snap, held(victim)) is snap


def test_ipv6_only_keys_share_no_ipv4_subnet():
    # Go names an IPv6-only lease 0.0.0.0-0&<IPv6 subnet>: 0.0.0.0/0 is no subnet, held by nobody
    a, b = alias("0.0.0.0/0", "fd00:1::/64", "198.18.0.2"), alias("0.0.0.0/0", "fd00:2::/64", "198.18.0.3")
    snap = Snapshot((a, b), 3)
    assert screen_held(snap, PeerTable()) is snap
    ch = Changes((b,), (), 4)
    assert screen_held(ch, held(a)) is ch


def test_bad_keys_are_counted_while_they_are_bad():
    """flannel_bad_leases counts the keys bad right now: a bad key deleted or put right is no longer
    counted, and warned about again only if it breaks anew (it used to count for ever)."""
    from pyflannel.core.events import BadLease
    from pyflannel.store.manager import track_bad

    seen: set[str] = set()
    p = "/p/subnets/"
    track_bad(Snapshot((), 1, (BadLease(p + "10.0.5.128-25", "a /25"), BadLease(p + "x", "not a key"))), seen, p)
    assert seen == {p + "10.0.5.128-25", p + "x"}
    track_bad(Changes((), (N("10.0.5.128/25"),), 2, deleted_keys=("10.0.5.128-25",)), seen, p)
    assert seen == {p + "x"}
    track_bad(Changes((), (), 3, (BadLease(p + "10.0.6.0-24", "not JSON", N("10.0.6.0/24")),)), seen, p)
    track_bad(Changes((lease("10.0.6.0/24"),), (), 4), seen, p)
    assert seen == {p + "x"}
    track_bad(Snapshot((), 5), seen, p)  # a re-list without it: gone
    assert seen == set()


def test_a_revoked_second_key_is_no_longer_counted():
    """The delete of a second key for a held subnet is screened away (it removes nobody), yet the key
    is gone: the gauge learns it from the keys the store reported, before screening. So does a key
    that names no subnet at all (the store reports it after the subnets' keys)."""
    from pyflannel.store.manager import track_bad

    p = "/p/subnets/"
    holder = lease("10.0.5.0/24")
    table = held(holder)
    second = "10.0.5.0-24&fd00:99::-64"
    seen = {p + second, p + "junk"}
    raw = Changes((), (N("10.0.5.0/24"),), 7, deleted_keys=(second, "junk"))
    ev = screen_held(raw, table)
    assert not ev.deletes, "the second key's delete removed the holder"
    track_bad(ev, seen, p, raw.deleted_keys)
    assert seen == set()
