"""flannel's IPv6 masquerade and forward rules (ip6tables): Go's IPv4 rules with the IPv6 network
and subnet, and ff00::/8 where IPv4 has 224.0.0.0/4; one network's block found among others."""

from __future__ import annotations

from ipaddress import IPv6Network as N6

from pyflannel.core.masq import forward_chain, in_sync, listing, masq_chain, render_table

NET6, POD6 = N6("2001:db8:42::/56"), N6("2001:db8:42:5::/64")
GOLDEN6 = """\
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:db8:42:5::/64 -d 2001:db8:42::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:db8:42::/56 -d 2001:db8:42:5::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 2001:db8:42::/56 -d 2001:db8:42:5::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:db8:42::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 2001:db8:42::/56 -d 2001:db8:42::/56 -m comment --comment "flanneld masq" -j MASQUERADE \
--random-fully"""


def test_ipv6_masquerade_rules_are_flannels():
    assert "\n".join(listing(masq_chain(NET6, POD6, random_fully=True))) == GOLDEN6


def test_ipv6_forward_rules_are_flannels():
    assert listing(forward_chain(NET6)) == [
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD', "-N FLANNEL-FWD",
        '-A FLANNEL-FWD -s 2001:db8:42::/56 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 2001:db8:42::/56 -m comment --comment "flanneld forward" -j ACCEPT']


def test_another_ipv6_networks_block_is_flannel_shaped_and_left_alone():
    ours, theirs = masq_chain(NET6, POD6, True), masq_chain(N6("fd00:7::/56"), N6("fd00:7:0:9::/64"), True)
    dump = "-P POSTROUTING ACCEPT\n" + "\n".join(ln for ln in listing(theirs) if not ln.startswith("-N")) + "\n"
    dump = dump.replace("-A POSTROUTING", "-N FLANNEL-POSTRTG\n-A POSTROUTING", 1)
    assert all(theirs.flannel_shaped(r.line()) for r in theirs.rules) and ours.flannel_shaped(theirs.rules[1].line())
    payload = render_table(ours, dump)
    assert "-D FLANNEL-POSTRTG" not in payload  # their block stays
    assert "2001:db8:42:5::/64" in payload and not in_sync(dump, ours)
