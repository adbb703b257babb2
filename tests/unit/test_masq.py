"""Masquerade/forward rule rendering, golden against FLANNEL-COMPAT §6.1 (incl. flannel's e2e
golden rules) and §6.2, plus recycling of the rules of a previous network/subnet."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.errors import LocalConfigError
from pyflannel.core.masq import (
    forward_chain,
    has_random_fully,
    in_sync,
    listing,
    masq_chain,
    nft_cleanup,
    nft_listing,
    nft_random_fully_probe,
    owned_lines,
    parse_iptables_version,
    render_cleanup,
    render_nft,
    render_table,
    stale_masq_chain,
)
from pyflannel.kernel.netlink import KernelError
from pyflannel.kernel.traffic import _run

NET = IPv4Network("10.244.0.0/16")
POD = IPv4Network("10.244.1.0/24")

# flannel e2e/rules.go: `iptables -t nat -S POSTROUTING | grep FLANNEL` + `-S FLANNEL-POSTRTG`
GOLDEN_POSTRTG = "\n".join([
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    "-N FLANNEL-POSTRTG",
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
])

# the flannel part of e2e's `iptables -t filter -S FORWARD` + `-S FLANNEL-FWD`
GOLDEN_FWD = """\
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"""

GOLDEN_NFT_POSTRTG = """\
\tchain postrtg {
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}"""

GOLDEN_NFT_FORWARD = """\
\tchain forward {
\t\tcomment "chain to accept flannel traffic"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}"""

NAT_POLICIES = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"


def dump_of(*chains, before: str = NAT_POLICIES) -> str:
    """An `iptables -t T -S` dump holding ``chains`` the way iptables prints a whole table."""
    lines = before.splitlines()
    lines += [f"-N {c.chain}" for c in chains]
    lines += [c.jump.line() for c in chains]
    lines += [r.line() for c in chains for r in c.rules]
    return "\n".join(lines) + "\n"


# ---- iptables rules ------------------------------------------------------------------------------

def test_masq_listing_is_flannels_e2e_golden():
    assert "\n".join(listing(masq_chain(NET, POD, random_fully=True))) == GOLDEN_POSTRTG


def test_masq_without_random_fully_drops_only_that_flag():
    plain = listing(masq_chain(NET, POD, random_fully=False))
    assert plain == [ln.removesuffix(" --random-fully") for ln in GOLDEN_POSTRTG.splitlines()]


def test_forward_listing_is_flannels_e2e_golden():
    assert "\n".join(listing(forward_chain(NET))) == GOLDEN_FWD


def test_fresh_payload_declares_chain_then_appends_everything_in_order():
    payload = render_table(masq_chain(NET, POD, True), NAT_POLICIES)
    rules = [ln for ln in GOLDEN_POSTRTG.splitlines() if not ln.startswith("-N")]
    assert payload == "*nat\n:FLANNEL-POSTRTG - [0:0]\n" + "\n".join(rules) + "\nCOMMIT\n"


def test_payload_moves_every_existing_jump_copy_to_the_end():
    chain = forward_chain(NET)
    dump = dump_of(chain, before="-P FORWARD ACCEPT\n" + chain.jump.line() + "\n-A FORWARD -j KUBE-FORWARD\n")
    payload = render_table(chain, dump)
    assert payload == (
        "*filter\n"
        ":FLANNEL-FWD - [0:0]\n"
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'
        "COMMIT\n"
    )


# ---- recycling -------------------------------------------------------------------------------

def test_no_recycling_without_a_previous_run_or_a_change():
    assert stale_masq_chain(NET, POD, None, None, True) is None
    assert stale_masq_chain(NET, POD, NET, None, True) is None
    assert stale_masq_chain(NET, POD, NET, POD, True) is None


def test_recycling_when_only_the_subnet_changed():
    old = IPv4Network("10.244.7.0/24")
    stale = stale_masq_chain(NET, POD, NET, old, True)
    assert stale == masq_chain(NET, old, True)


def test_stale_rules_are_deleted_before_the_flush_and_the_shared_jump_only_once():
    prev_net, prev_pod = IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24")
    old = masq_chain(prev_net, prev_pod, True)
    new = masq_chain(NET, POD, True)
    payload = render_table(new, dump_of(old), stale_masq_chain(NET, POD, prev_net, prev_pod, True))
    lines = payload.splitlines()
    flush = lines.index(":FLANNEL-POSTRTG - [0:0]")
    # the old chain's rules that differ from the new ones, each deleted once, before the flush
    deleted = lines[1:flush]
    assert deleted == [r.line("-D") for r in old.rules[1:]]
    assert all("10.5." in ln for ln in deleted)
    # the jump (identical for both) is deleted once and re-appended; the new rules follow in order
    assert lines[flush + 1:-1] == [new.jump.line("-D"), *(ln for ln in listing(new) if not ln.startswith("-N"))]
    assert not any("10.5." in ln for ln in lines[flush:])


def test_stale_rules_not_present_are_not_deleted():
    prev = masq_chain(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24"), True)
    payload = render_table(masq_chain(NET, POD, True), NAT_POLICIES, prev)
    assert "-D" not in payload


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.booleans())
def test_any_change_recycles_exactly_the_old_rules_that_exist(a, b, c, d, rf):
    prev_net, prev_pod = IPv4Network(f"10.{a}.0.0/16"), IPv4Network(f"10.{a}.{b}.0/24")
    net, pod = IPv4Network(f"10.{c}.0.0/16"), IPv4Network(f"10.{c}.{d}.0/24")
    old, new = masq_chain(prev_net, prev_pod, rf), masq_chain(net, pod, rf)
    stale = stale_masq_chain(net, pod, prev_net, prev_pod, rf)
    payload = render_table(new, dump_of(old), stale)
    deletes = [ln for ln in payload.splitlines() if ln.startswith("-D FLANNEL-POSTRTG")]
    assert deletes == ([] if stale is None else [r.line("-D") for r in old.rules if r not in new.rules])
    # after the payload, the chain is the new one: simulate what iptables-restore leaves behind
    assert in_sync(dump_of(new), new)


# ---- resync checks -------------------------------------------------------------------------------

def test_in_sync_ignores_foreign_rules_but_not_a_flushed_chain_or_a_duplicate_jump():
    chain = masq_chain(NET, POD, True)
    foreign = NAT_POLICIES + "-A POSTROUTING -j KUBE-POSTROUTING\n"
    assert in_sync(dump_of(chain, before=foreign), chain)
    flushed = foreign + f"-N {chain.chain}\n{chain.jump.line()}\n"
    assert not in_sync(flushed, chain)
    assert not in_sync(dump_of(chain) + chain.jump.line() + "\n", chain)
    assert not in_sync(NAT_POLICIES, chain)
    swapped = dump_of(chain).replace(chain.rules[1].line(), "X").replace(chain.rules[2].line(), chain.rules[1].line())
    assert not in_sync(swapped.replace("X", chain.rules[2].line()), chain)


def test_owned_lines_are_our_chain_and_jumps_only():
    chain = forward_chain(NET)
    dump = dump_of(chain, before="-P FORWARD ACCEPT\n-N KUBE-FORWARD\n-A FORWARD -j KUBE-FORWARD\n")
    assert owned_lines(dump, chain) == [listing(chain)[1], listing(chain)[0], *listing(chain)[2:]]  # dump order


def test_cleanup_removes_jumps_then_flushes_and_deletes():
    chain = masq_chain(NET, POD, True)
    assert render_cleanup("nat", [("FLANNEL-POSTRTG", "POSTROUTING")], dump_of(chain)) == (
        "*nat\n"
        '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG\n'
        ":FLANNEL-POSTRTG - [0:0]\n"
        "-X FLANNEL-POSTRTG\n"
        "COMMIT\n"
    )
    assert render_cleanup("nat", [("FLANNEL-POSTRTG", "POSTROUTING")], NAT_POLICIES) == ""


def test_random_fully_needs_iptables_1_6_2_like_go_iptables():
    assert parse_iptables_version("iptables v1.8.9 (nf_tables)\n") == (1, 8, 9)
    assert parse_iptables_version("iptables v1.6.1\n") == (1, 6, 1)
    assert parse_iptables_version("garbage") is None
    assert has_random_fully((1, 6, 2)) and has_random_fully((1, 8, 9)) and has_random_fully((2, 0, 0))
    assert not has_random_fully((1, 6, 1)) and not has_random_fully((1, 4, 21)) and not has_random_fully(None)


# ---- nftables ------------------------------------------------------------------------------------

def test_nft_listing_chains_are_flannels_e2e_golden():
    text = nft_listing(NET, POD, masq=True, forward=True, random_fully=True)
    assert text == (
        "table ip flannel-ipv4 {\n"
        '\tcomment "rules for flannel-ipv4"\n'
        f"{GOLDEN_NFT_POSTRTG}\n\n{GOLDEN_NFT_FORWARD}\n"
        "}\n"
    )


def test_nft_listing_without_masq_or_random_fully():
    only_fwd = nft_listing(NET, POD, masq=False, forward=True, random_fully=True)
    assert only_fwd == 'table ip flannel-ipv4 {\n\tcomment "rules for flannel-ipv4"\n' + GOLDEN_NFT_FORWARD + "\n}\n"
    plain = nft_listing(NET, POD, masq=True, forward=False, random_fully=False)
    assert "masquerade fully-random" not in plain and plain.count("masquerade\n") == 2


def test_nft_script_is_one_transaction_adding_flushing_and_filling_each_chain():
    assert render_nft(NET, POD, masq=True, forward=True, random_fully=True) == (
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }\n'
        'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }\n'
        "add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; "
        'comment "chain to manage traffic masquerading by flannel" ; }\n'
        "flush chain ip flannel-ipv4 postrtg\n"
        "add rule ip flannel-ipv4 postrtg meta mark 0x00004000 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n"
        "add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; "
        'comment "chain to accept flannel traffic" ; }\n'
        "flush chain ip flannel-ipv4 forward\n"
        "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n"
        "add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n"
    )


def test_nft_probe_and_cleanup():
    assert "masqueradeTest" in nft_random_fully_probe() and "fully-random" in nft_random_fully_probe()
    tables = "table ip nat\ntable ip flannel-ipv4\ntable ip6 flannel-ipv6\ntable inet flannel-ipv4\n"
    assert nft_cleanup(tables) == "delete table ip flannel-ipv4\ndelete table ip6 flannel-ipv6\n"
    assert nft_cleanup("table ip filter\n") == ""


# ---- error messages of the runner (no root needed) -----------------------------------------------

def test_missing_binary_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    for binary, package in (("iptables-restore", "iptables"), ("nft", "nftables")):
        with pytest.raises(LocalConfigError) as err:
            _run([binary, "--version"])
        assert str(err.value) == f"{binary} not found: apt-get install {package}"


def test_failing_command_names_command_stderr_and_input():
    with pytest.raises(KernelError) as err:
        _run(["sh", "-c", "cat >/dev/null; echo 'line 3: RULE_DELETE failed' >&2; exit 4"], "*nat\nCOMMIT\n")
    assert str(err.value).startswith("`sh -c ")
    assert "failed (exit 4): line 3: RULE_DELETE failed\ninput was:\n*nat\nCOMMIT\n" in str(err.value)
