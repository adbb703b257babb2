"""flannel's IPv6 nftables rules (``ip6 flannel-ipv6``): golden listing and script, a flushed table
repaired, and release by family (one family's release never deletes the other family's table)."""

from __future__ import annotations

from ipaddress import IPv4Network as N4
from ipaddress import IPv6Network as N6

from pyflannel.core.nftrules import (
    nft_chain_listing,
    nft_in_sync,
    nft_listing,
    nft_parts,
    render_nft,
    render_nft_release,
)

NET6, POD6 = N6("2001:db8:42::/56"), N6("2001:db8:42:5::/64")

GOLDEN6 = """\
table ip6 flannel-ipv6 {
	comment "rules for flannel-ipv6"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x00004000 return
		ip6 saddr 2001:db8:42:5::/64 ip6 daddr 2001:db8:42::/56 return
		ip6 saddr 2001:db8:42::/56 ip6 daddr 2001:db8:42:5::/64 return
		ip6 saddr != 2001:db8:42:5::/64 ip6 daddr 2001:db8:42::/56 return
		ip6 saddr 2001:db8:42::/56 ip6 daddr != ff00::/8 masquerade fully-random
		ip6 saddr != 2001:db8:42::/56 ip6 daddr 2001:db8:42::/56 masquerade fully-random
	}

	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip6 saddr 2001:db8:42::/56 accept
		ip6 daddr 2001:db8:42::/56 accept
	}
}
"""


def test_ipv6_nft_listing_is_flannels():
    assert nft_listing(NET6, POD6, masq=True, forward=True, random_fully=True) == GOLDEN6


def test_ipv6_nft_script_fills_the_ip6_table_only():
    script = render_nft(NET6, POD6, masq=True, forward=True, random_fully=False)
    assert script.splitlines() == [
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
        'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }',
        "add chain ip6 flannel-ipv6 postrtg { type nat hook postrouting priority srcnat ; "
        'comment "chain to manage traffic masquerading by flannel" ; }',
        "add rule ip6 flannel-ipv6 postrtg meta mark 0x00004000 return",
        "add rule ip6 flannel-ipv6 postrtg ip6 saddr 2001:db8:42:5::/64 ip6 daddr 2001:db8:42::/56 return",
        "add rule ip6 flannel-ipv6 postrtg ip6 saddr 2001:db8:42::/56 ip6 daddr 2001:db8:42:5::/64 return",
        "add rule ip6 flannel-ipv6 postrtg ip6 saddr != 2001:db8:42:5::/64 ip6 daddr 2001:db8:42::/56 return",
        "add rule ip6 flannel-ipv6 postrtg ip6 saddr 2001:db8:42::/56 ip6 daddr != ff00::/8 masquerade",
        "add rule ip6 flannel-ipv6 postrtg ip6 saddr != 2001:db8:42::/56 ip6 daddr 2001:db8:42::/56 masquerade",
        "add chain ip6 flannel-ipv6 forward { type filter hook forward priority filter ; "
        'comment "chain to accept flannel traffic" ; }',
        "add rule ip6 flannel-ipv6 forward ip6 saddr 2001:db8:42::/56 accept",
        "add rule ip6 flannel-ipv6 forward ip6 daddr 2001:db8:42::/56 accept",
    ]


def _handled(listing: str) -> str:
    """A listing as ``nft -a`` prints it: each rule with a handle."""
    out, n = [], 10
    for line in listing.splitlines():
        if line.startswith("\t\t") and not line.strip().startswith(("comment", "type")):
            n += 1
            line += f" # handle {n}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_ipv6_nft_in_sync_and_a_flushed_chain_is_refilled():
    parts = nft_parts(NET6, POD6, masq=True, forward=True, random_fully=True)
    full = _handled(GOLDEN6)
    assert nft_in_sync(full, parts)
    assert not render_nft(NET6, POD6, masq=True, forward=True, random_fully=True, current=full).count(" rule ")
    flushed = _handled(GOLDEN6.replace("\t\tip6 saddr 2001:db8:42::/56 accept\n", ""))
    assert not nft_in_sync(flushed, parts)
    script = render_nft(NET6, POD6, masq=True, forward=True, random_fully=True, current=flushed)
    assert "delete rule ip6 flannel-ipv6 forward handle" in script
    assert script.endswith("add rule ip6 flannel-ipv6 forward ip6 saddr 2001:db8:42::/56 accept\n"
                           "add rule ip6 flannel-ipv6 forward ip6 daddr 2001:db8:42::/56 accept\n")
    assert not nft_in_sync("", parts)


def test_ipv6_release_deletes_only_the_ip6_table_and_keeps_another_networks_rules():
    tables = "table ip flannel-ipv4\ntable ip6 flannel-ipv6\n"
    mine = nft_parts(NET6, POD6, masq=True, forward=True, random_fully=True)
    assert render_nft_release(_handled(GOLDEN6), tables, mine, 6) == "delete table ip6 flannel-ipv6\n"
    # the IPv4 release does not count IPv6 rules as its own, nor delete the ip6 table with them in it
    assert render_nft_release(_handled(GOLDEN6), tables, [], 6) == ""
    v4 = nft_parts(N4("10.244.0.0/16"), N4("10.244.1.0/24"), masq=True, forward=True, random_fully=True)
    assert render_nft_release("", tables, v4, 4) == "delete table ip flannel-ipv4\n"
    other = nft_parts(N6("fd00:9::/48"), N6("fd00:9:0:1::/64"), masq=True, forward=True, random_fully=True)
    chains = [nft_chain_listing(a.chain, [*a.head, *a.block, *b.block]) for a, b in zip(mine, other, strict=True)]
    both = _handled("\n".join(["table ip6 flannel-ipv6 {", *chains[0], *chains[1], "}"]))
    script = render_nft_release(both, tables, mine, 6)
    assert "delete table" not in script and script.count("delete rule ip6 flannel-ipv6") == 7
