"""Masquerade/forward rule rendering, golden against flannel's e2e rules (iptables and nftables),
recycling of the rules of a previous network/subnet, and several networks sharing flannel's chains
(checked against small models of `iptables-restore --noflush` and `nft -f`)."""

from __future__ import annotations

import fcntl
import os
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.errors import LocalConfigError
from pyflannel.core.masq import (
    MASQ_CHAIN,
    chain_rules,
    forward_chain,
    has_random_fully,
    in_sync,
    listing,
    masq_chain,
    owned_lines,
    parse_iptables_version,
    render_release,
    render_table,
    stale_forward_chain,
    stale_masq_chain,
    wrap_table,
)
from pyflannel.core.nftrules import (
    nft_cleanup,
    nft_in_sync,
    nft_listing,
    nft_parts,
    nft_random_fully_probe,
    parse_nft_table,
    render_nft,
    render_nft_release,
)
from pyflannel.kernel.hostpeers import HostPeers, network_key, subnet_key
from pyflannel.kernel.netlink import KernelError
from pyflannel.kernel.rulesio import _run

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


def test_payload_moves_every_existing_jump_copy_to_the_end_and_leaves_a_right_block_alone():
    chain = forward_chain(NET)
    dump = dump_of(chain, before="-P FORWARD ACCEPT\n" + chain.jump.line() + "\n-A FORWARD -j KUBE-FORWARD\n")
    assert render_table(chain, dump) == (
        "*filter\n"
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        "COMMIT\n"
    )
    # a resync (move_jump off) of a right chain sends nothing at all
    assert render_table(chain, dump_of(chain, before="-P FORWARD ACCEPT\n"), move_jump=False) == ""


def test_an_existing_chain_is_never_declared_again_which_would_flush_it():
    a, b = masq_chain(NET, POD, True), masq_chain(NET_B, POD_B, True)
    dump = restore(restore(NAT_POLICIES, render_table(a, NAT_POLICIES)), render_table(b, dump_of(a)))
    for payload in (render_table(a, dump), render_table(b, dump), render_table(masq_chain(NET, POD_2, True), dump)):
        assert ":FLANNEL-POSTRTG" not in payload


# ---- a model of `iptables-restore --noflush` on an `iptables -S` dump -----------------------------

def restore(dump: str, payload: str) -> str:
    """What `iptables-restore --noflush` leaves of ``dump`` (one table): chains declared are created
    or flushed; -A appends, -I inserts first, -D deletes the first equal rule (or fails the whole
    transaction, like iptables-restore), -X deletes an empty chain."""
    lines = [ln for ln in dump.splitlines() if ln]
    policies = [ln for ln in lines if ln.startswith("-P ")]
    chains = {ln.split()[1]: [] for ln in policies}
    chains |= {ln.split()[1]: [] for ln in lines if ln.startswith("-N ")}
    for ln in lines:
        if ln.startswith("-A "):
            chains[ln.split()[1]].append(ln)
    for ln in payload.splitlines():
        if ln.startswith(("*", "COMMIT")):
            continue
        if ln.startswith(":"):
            chains[ln[1:].split()[0]] = []
            continue
        op, chain, rest = ln.split(" ", 2) if ln.count(" ") >= 2 else (*ln.split(" ", 1), "")
        if op == "-X":
            assert not chains[chain], f"-X of a non-empty chain: {ln}"
            del chains[chain]
            continue
        rule = f"-A {chain} {rest}"
        assert chain in chains, f"no chain {chain}: {ln}"
        if op == "-A":
            chains[chain].append(rule)
        elif op == "-I":
            chains[chain].insert(0, rule)
        elif op == "-D":
            assert rule in chains[chain], f"iptables-restore: line failed (no such rule): {ln}"
            chains[chain].remove(rule)
        else:
            raise AssertionError(ln)
    builtin = [ln.split()[1] for ln in policies]
    out = policies + [f"-N {c}" for c in chains if c not in builtin]
    out += [r for c in chains for r in chains[c]]
    return "\n".join(out) + "\n"


def setup(dump: str, owned, stale=None) -> str:
    return restore(dump, render_table(owned, dump, stale))


def ensure(dump: str, owned) -> str:
    return restore(dump, render_table(owned, dump, move_jump=False))


NET_B, POD_B = IPv4Network("10.20.0.0/16"), IPv4Network("10.20.3.0/24")
POD_2 = IPv4Network("10.244.9.0/24")


def block(owned) -> list[str]:
    return owned.block_lines


# ---- several networks on one host ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["masq", "forward"])
def test_two_networks_keep_both_blocks_and_neither_resync_changes_anything(kind):
    make = (lambda n, p: masq_chain(n, p, True)) if kind == "masq" else (lambda n, p: forward_chain(n))
    a, b = make(NET, POD), make(NET_B, POD_B)
    before = NAT_POLICIES if kind == "masq" else "-P FORWARD DROP\n"
    dump = setup(setup(before, a), b)
    rules = chain_rules(dump, a.chain)
    assert rules == [*a.head_lines, *block(a), *block(b)]
    assert in_sync(dump, a) and in_sync(dump, b)
    assert render_table(a, dump, move_jump=False) == "" and render_table(b, dump, move_jump=False) == ""
    # a restart of either (setup again) keeps the other's block and changes no rule
    assert chain_rules(setup(dump, a), a.chain) == rules and chain_rules(setup(dump, b), a.chain) == rules
    assert dump.count(a.jump.line()) == 1


def test_setup_in_the_middle_of_a_full_chain_gives_one_shared_head():
    a, b = masq_chain(NET, POD, True), masq_chain(NET_B, POD_B, False)
    dump = setup(setup(NAT_POLICIES, a), b)
    assert chain_rules(dump, MASQ_CHAIN).count(a.head_lines[0]) == 1
    assert in_sync(dump, a) and in_sync(dump, b)


OPS = ["setup_a", "setup_b", "ensure_a", "ensure_b", "flush", "drop_mark", "drop_jump", "foreign", "dup_jump",
       "drop_first_a", "drop_last_b", "mark_last"]


def _break(dump: str, op: str, a, b) -> str:
    rules = chain_rules(dump, MASQ_CHAIN)
    if op == "flush":
        return restore(dump, f"*nat\n:{MASQ_CHAIN} - [0:0]\nCOMMIT\n")
    if op == "drop_mark" and a.head_lines[0] in rules:
        return restore(dump, "*nat\n-D" + a.head_lines[0][2:] + "\nCOMMIT\n")
    if op == "drop_jump" and a.jump.line() in dump:
        return restore(dump, f"*nat\n{a.jump.line('-D')}\nCOMMIT\n")
    if op == "foreign" and f"-N {MASQ_CHAIN}" in dump:
        return restore(dump, f"*nat\n-I {MASQ_CHAIN} -j ACCEPT\nCOMMIT\n")
    if op == "dup_jump" and f"-N {MASQ_CHAIN}" in dump:
        return restore(dump, f"*nat\n{a.jump.line()}\nCOMMIT\n")
    if op == "drop_first_a" and block(a)[0] in rules:
        return restore(dump, "*nat\n-D" + block(a)[0][2:] + "\nCOMMIT\n")
    if op == "drop_last_b" and block(b)[-1] in rules:
        return restore(dump, "*nat\n-D" + block(b)[-1][2:] + "\nCOMMIT\n")
    if op == "mark_last" and a.head_lines[0] in rules:
        return restore(dump, "*nat\n-D" + a.head_lines[0][2:] + "\n" + a.head_lines[0] + "\nCOMMIT\n")
    return dump


@given(st.lists(st.sampled_from(OPS), max_size=12), st.booleans(), st.booleans())
def test_two_instances_never_remove_each_others_block_and_always_converge(ops, rf_a, rf_b):
    a, b = masq_chain(NET, POD, rf_a), masq_chain(NET_B, POD_B, rf_b)
    dump = setup(setup(NAT_POLICIES, a), b)
    for op in ops:
        if op.startswith(("setup", "ensure")):
            me, other = (a, b) if op.endswith("_a") else (b, a)
            theirs = [ln for ln in chain_rules(dump, MASQ_CHAIN) if ln in set(block(other))]
            dump = setup(dump, me) if op.startswith("setup") else ensure(dump, me)
            after = [ln for ln in chain_rules(dump, MASQ_CHAIN) if ln in set(block(other))]
            assert after == theirs, f"{op} touched the other network's block"
        else:
            dump = _break(dump, op, a, b)
    dump = ensure(ensure(dump, a), b)
    assert in_sync(dump, a) and in_sync(dump, b), dump
    assert render_table(a, dump, move_jump=False) == render_table(b, dump, move_jump=False) == ""
    assert chain_rules(dump, MASQ_CHAIN)[0] == a.head_lines[0]


# ---- recycling -------------------------------------------------------------------------------

def test_no_recycling_without_a_previous_run_or_a_change():
    assert stale_masq_chain(NET, POD, None, None, True) is None
    assert stale_masq_chain(NET, POD, NET, None, True) is None
    assert stale_masq_chain(NET, POD, NET, POD, True) is None
    assert stale_forward_chain(NET, None) is None and stale_forward_chain(NET, NET) is None
    assert stale_forward_chain(NET, NET_B) == forward_chain(NET_B)


def test_recycling_when_only_the_subnet_changed():
    old = IPv4Network("10.244.7.0/24")
    stale = stale_masq_chain(NET, POD, NET, old, True)
    assert stale == masq_chain(NET, old, True)


def test_stale_rules_are_deleted_and_the_shared_rules_kept():
    prev_net, prev_pod = IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24")
    old = masq_chain(prev_net, prev_pod, True)
    new = masq_chain(NET, POD, True)
    dump = dump_of(old)
    payload = render_table(new, dump, stale_masq_chain(NET, POD, prev_net, prev_pod, True))
    lines = payload.splitlines()
    assert ":FLANNEL-POSTRTG - [0:0]" not in lines  # the chain exists: never flushed
    # the old block, each rule deleted once; the jump (identical for both) deleted once and re-appended;
    # the shared mark rule stays where it is; the new block appended
    assert lines[1:-1] == [*(r.line("-D") for r in old.rules[1:]), new.jump.line("-D"), new.jump.line(),
                           *block(new)]
    after = restore(dump, payload)
    assert "10.5." not in after and in_sync(after, new)


def test_stale_rules_not_present_are_not_deleted():
    prev = masq_chain(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24"), True)
    payload = render_table(masq_chain(NET, POD, True), NAT_POLICIES, prev)
    assert "-D" not in payload


def test_stale_rules_of_a_network_another_instance_serves_keep_that_instances_rules():
    # we ran for NET_B with POD_B; another instance now serves NET_B with another subnet
    other = masq_chain(NET_B, IPv4Network("10.20.8.0/24"), True)
    ours_old = masq_chain(NET_B, POD_B, True)
    new = masq_chain(NET, POD, True)
    dump = setup(dump_of(ours_old), other)
    dump = setup(dump, new, ours_old.naming(POD_B))
    rules = chain_rules(dump, MASQ_CHAIN)
    assert not [ln for ln in rules if "10.20.3.0/24" in ln]
    assert in_sync(dump, new) and in_sync(ensure(dump, other), other)
    assert [ln for ln in chain_rules(ensure(dump, other), MASQ_CHAIN) if ln in block(other)] == block(other)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.booleans())
def test_any_change_recycles_exactly_the_old_rules_that_exist(a, b, c, d, rf):
    prev_net, prev_pod = IPv4Network(f"10.{a}.0.0/16"), IPv4Network(f"10.{a}.{b}.0/24")
    net, pod = IPv4Network(f"10.{c}.0.0/16"), IPv4Network(f"10.{c}.{d}.0/24")
    old, new = masq_chain(prev_net, prev_pod, rf), masq_chain(net, pod, rf)
    stale = stale_masq_chain(net, pod, prev_net, prev_pod, rf)
    payload = render_table(new, dump_of(old), stale)
    deletes = [ln for ln in payload.splitlines() if ln.startswith("-D FLANNEL-POSTRTG")]
    assert deletes == ([] if stale is None else [r.line("-D") for r in old.rules[1:]])
    after = restore(dump_of(old), payload)
    assert in_sync(after, new) and chain_rules(after, MASQ_CHAIN) == [*new.head_lines, *block(new)]


# ---- resync checks -------------------------------------------------------------------------------

def test_in_sync_ignores_foreign_jumps_and_other_networks_but_not_a_flushed_chain_or_a_duplicate_jump():
    chain = masq_chain(NET, POD, True)
    foreign = NAT_POLICIES + "-A POSTROUTING -j KUBE-POSTROUTING\n"
    assert in_sync(dump_of(chain, before=foreign), chain)
    flushed = foreign + f"-N {chain.chain}\n{chain.jump.line()}\n"
    assert not in_sync(flushed, chain)
    assert not in_sync(dump_of(chain) + chain.jump.line() + "\n", chain)
    assert not in_sync(NAT_POLICIES, chain)
    swapped = dump_of(chain).replace(chain.rules[1].line(), "X").replace(chain.rules[2].line(), chain.rules[1].line())
    assert not in_sync(swapped.replace("X", chain.rules[2].line()), chain)
    assert not in_sync(dump_of(chain) + f"-A {chain.chain} -j ACCEPT\n", chain)  # a foreign rule in our chain
    other = masq_chain(NET_B, POD_B, False)
    assert in_sync(dump_of(chain) + "\n".join(block(other)) + "\n", chain)  # another network's block
    # our MASQUERADE rules with the other random-fully spelling are left-overs, not another network's
    assert not in_sync(dump_of(chain) + "\n".join(r.line() for r in chain.alt) + "\n", chain)


def test_owned_lines_are_our_chain_jumps_head_and_block_only():
    chain = forward_chain(NET)
    other = forward_chain(NET_B)
    dump = dump_of(chain, before="-P FORWARD ACCEPT\n-N KUBE-FORWARD\n-A FORWARD -j KUBE-FORWARD\n")
    dump += "\n".join(block(other)) + "\n"
    assert owned_lines(dump, chain) == [listing(chain)[1], listing(chain)[0], *listing(chain)[2:]]  # dump order


def test_release_removes_our_block_and_the_chain_only_when_no_other_network_is_left():
    chain = masq_chain(NET, POD, True)
    assert wrap_table("nat", render_release(chain, dump_of(chain))) == (
        "*nat\n"
        '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG\n'
        ":FLANNEL-POSTRTG - [0:0]\n"
        "-X FLANNEL-POSTRTG\n"
        "COMMIT\n"
    )
    assert render_release(chain, NAT_POLICIES) == []
    other = masq_chain(NET_B, POD_B, True)
    both = setup(dump_of(chain), other)
    after = restore(both, wrap_table("nat", render_release(chain, both)))
    assert chain_rules(after, MASQ_CHAIN) == [*other.head_lines, *block(other)] and in_sync(after, other)
    # the other spelling of ours (random-fully changed) goes too
    alt = masq_chain(NET, POD, False)
    assert chain_rules(restore(setup(both, alt), wrap_table("nat", render_release(chain, setup(both, alt)))),
                       MASQ_CHAIN) == [*other.head_lines, *block(other)]


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


def test_nft_script_for_a_new_table_is_one_transaction_adding_and_filling_each_chain():
    assert render_nft(NET, POD, masq=True, forward=True, random_fully=True) == (
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }\n'
        'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }\n'
        "add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; "
        'comment "chain to manage traffic masquerading by flannel" ; }\n'
        "add rule ip flannel-ipv4 postrtg meta mark 0x00004000 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n"
        "add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; "
        'comment "chain to accept flannel traffic" ; }\n'
        "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n"
        "add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n"
    )


def test_nft_probe_and_cleanup():
    assert "masqueradeTest" in nft_random_fully_probe() and "fully-random" in nft_random_fully_probe()
    tables = "table ip nat\ntable ip flannel-ipv4\ntable ip6 flannel-ipv6\ntable inet flannel-ipv4\n"
    assert nft_cleanup(tables) == "delete table ip flannel-ipv4\ndelete table ip6 flannel-ipv6\n"
    assert nft_cleanup("table ip filter\n") == ""


# ---- a model of `nft -f` on flannel's table, listed as `nft -a list table ip flannel-ipv4` ----------

class NftModel:
    def __init__(self) -> None:
        self.chains: dict[str, list[tuple[str, int]]] | None = None
        self.handle = 10

    def listing(self) -> str:
        if self.chains is None:
            return ""
        out = ["table ip flannel-ipv4 { # handle 1", '\tcomment "rules for flannel-ipv4"']
        for name, rules in self.chains.items():
            out += [f"\tchain {name} {{ # handle 2", "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
            out += [f"\t\t{r} # handle {h}" for r, h in rules]
            out.append("\t}")
        return "\n".join([*out, "}"]) + "\n"

    def run(self, script: str) -> None:
        """Atomic, like `nft -f`: a delete of a missing handle fails the whole script."""
        chains = None if self.chains is None else {c: list(r) for c, r in self.chains.items()}
        for line in script.splitlines():
            words = line.split()
            if line.startswith("add table ip flannel"):
                chains = {} if chains is None else chains
            elif line.startswith("delete table ip flannel-ipv4"):
                chains = None
            elif line.startswith(("add table", "delete table")):
                continue
            else:
                assert chains is not None, line
                verb, name = words[0], words[4]
                if words[1] == "chain":
                    chains.setdefault(name, [])
                elif verb == "delete":
                    handle = int(words[-1])
                    assert any(h == handle for _, h in chains[name]), f"no handle: {line}"
                    chains[name] = [(r, h) for r, h in chains[name] if h != handle]
                else:
                    self.handle += 1
                    rule = (" ".join(words[5:]), self.handle)
                    chains[name].insert(0, rule) if verb == "insert" else chains[name].append(rule)
        self.chains = chains

    def rules(self, chain: str) -> list[str]:
        return [r for r, _ in (self.chains or {}).get(chain, [])]


def nft_apply(model: NftModel, net, pod, rf=True, stale=()) -> None:
    model.run(render_nft(net, pod, masq=True, forward=True, random_fully=rf, current=model.listing(), stale=stale))


def test_nft_listing_model_parses_like_nft_prints():
    model = NftModel()
    nft_apply(model, NET, POD)
    assert parse_nft_table(model.listing())["forward"] == [("ip saddr 10.244.0.0/16 accept", 17),
                                                            ("ip daddr 10.244.0.0/16 accept", 18)]


def test_nft_two_networks_share_flannels_tables_and_keep_each_others_rules():
    model = NftModel()
    nft_apply(model, NET, POD)
    nft_apply(model, NET_B, POD_B, rf=False)
    a = nft_parts(NET, POD, masq=True, forward=True, random_fully=True)
    b = nft_parts(NET_B, POD_B, masq=True, forward=True, random_fully=False)
    assert model.rules("postrtg") == [*a[0].head, *a[0].block, *b[0].block]
    assert model.rules("forward") == [*a[1].block, *b[1].block]
    assert nft_in_sync(model.listing(), a) and nft_in_sync(model.listing(), b)
    # a restart of either adds, inserts and deletes nothing
    for net, pod, rf in ((NET, POD, True), (NET_B, POD_B, False)):
        script = render_nft(net, pod, masq=True, forward=True, random_fully=rf, current=model.listing())
        assert not [ln for ln in script.splitlines() if ln.split()[1] == "rule"], script
    # the chain flushed: each puts back its own, and the shared mark rule stays first
    model.chains["postrtg"] = []  # type: ignore[index]
    assert not nft_in_sync(model.listing(), b)
    nft_apply(model, NET_B, POD_B, rf=False)
    nft_apply(model, NET, POD)
    assert model.rules("postrtg") == [*b[0].head, *b[0].block, *a[0].block]
    assert nft_in_sync(model.listing(), a) and nft_in_sync(model.listing(), b)
    # a foreign rule in front, and the mark rule moved to the end: repaired, the other block untouched
    model.chains["postrtg"].insert(0, ("accept", 99))  # type: ignore[index]
    assert not nft_in_sync(model.listing(), a)
    nft_apply(model, NET, POD)
    assert model.rules("postrtg") == [*b[0].head, *b[0].block, *a[0].block]


def test_nft_stale_rules_and_release():
    model = NftModel()
    nft_apply(model, NET_B, POD_B)
    nft_apply(model, IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24"))
    # restart of the second instance in NET: its 10.5 rules are recycled, NET_B's stay
    stale = nft_parts(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24"), masq=True, forward=True,
                      random_fully=True)
    nft_apply(model, NET, POD, stale=stale)
    assert "10.5." not in model.listing()
    a = nft_parts(NET, POD, masq=True, forward=True, random_fully=True)
    b = nft_parts(NET_B, POD_B, masq=True, forward=True, random_fully=True)
    assert nft_in_sync(model.listing(), a) and nft_in_sync(model.listing(), b)
    tables = "table ip flannel-ipv4\ntable ip6 flannel-ipv6\n"
    # NET's instance goes back to iptables mode: only its rules go, the tables stay for NET_B
    model.run(render_nft_release(model.listing(), tables, a))
    assert model.rules("postrtg") == [*b[0].head, *b[0].block] and model.rules("forward") == list(b[1].block)
    # and NET_B's too: nothing of any network is left, so the tables go
    assert render_nft_release(model.listing(), tables, b) == nft_cleanup(tables, (4,))
    model.run(render_nft_release(model.listing(), tables, b))
    assert model.chains is None


def test_nft_stale_rules_of_a_served_network_keep_that_instances_rules():
    model = NftModel()
    nft_apply(model, NET_B, IPv4Network("10.20.8.0/24"))  # the other instance
    nft_apply(model, NET_B, POD_B)  # our previous run, same network
    ours_old = nft_parts(NET_B, POD_B, masq=True, forward=False, random_fully=True)
    nft_apply(model, NET, POD, stale=[p.naming(POD_B) for p in ours_old])
    assert "10.20.3.0/24" not in model.listing()
    other = nft_parts(NET_B, IPv4Network("10.20.8.0/24"), masq=True, forward=True, random_fully=True)
    nft_apply(model, NET_B, IPv4Network("10.20.8.0/24"))
    assert nft_in_sync(model.listing(), other)


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


# ---- coordination between the instances of one host (flock: two objects act as two processes) -----

def test_claims_tell_live_instances_apart_and_go_with_them(tmp_path):
    a, b = HostPeers(str(tmp_path)), HostPeers(str(tmp_path))
    assert a.dir == b.dir and a.dir is not None and a.dir.startswith(str(tmp_path) + "/netns-")
    key = network_key(NET_B)
    assert not b.claimed(key)
    a.claim([key, subnet_key(NET_B, POD_B)])
    assert b.claimed(key) and b.claimed(subnet_key(NET_B, POD_B)) and not b.claimed(network_key(NET))
    c = HostPeers(str(tmp_path))
    c.claim([key])  # two instances may claim one network (shared)
    a.claim([network_key(NET)])  # a moved to NET: its NET_B claims are released
    assert b.claimed(key)  # c still holds it
    c.claim([])
    assert not b.claimed(key) and not b.claimed(subnet_key(NET_B, POD_B)) and b.claimed(network_key(NET))


def test_exclusive_hold_names_the_holder(tmp_path):
    a, b = HostPeers(str(tmp_path)), HostPeers(str(tmp_path))
    assert a.hold("vxlan-flannel.1", "network 10.10.0.0/16") is None
    assert a.hold("vxlan-flannel.1", "network 10.10.0.0/16") is None  # already ours
    assert b.hold("vxlan-flannel.1", "network 10.20.0.0/16") == "network 10.10.0.0/16"
    assert b.hold("vxlan-flannel.2", "network 10.20.0.0/16") is None


def test_lock_serialises_edits(tmp_path):
    a, b = HostPeers(str(tmp_path)), HostPeers(str(tmp_path))
    with a.locked():
        fd = os.open(os.path.join(str(b.dir), "rules.lock"), os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    with b.locked():
        pass


def test_without_a_state_dir_nothing_is_coordinated(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    peers = HostPeers(str(blocker))  # a file where the directory should be
    assert peers.dir is None
    peers.claim([network_key(NET)])
    assert not peers.claimed(network_key(NET)) and peers.hold("x", "y") is None
    with peers.locked():
        pass
