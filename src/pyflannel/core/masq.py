"""flannel's masquerade and forward rules, rendered as text: pure, so every byte is golden-tested.

Why blocks, not whole chains: several flanneld, each for its own network, may run on one host, and
all of them use flannel's two chains (``FLANNEL-POSTRTG`` in nat, ``FLANNEL-FWD`` in filter) with
flannel's exact rule text. So a chain is shared and each instance owns only its **block**: the
rules that name its network and subnet, kept contiguous and in flannel's order. The rules that are
the same for every network (the jump to the chain, and the kube-proxy mark ``RETURN`` heading
FLANNEL-POSTRTG) are kept once: the jump once in the parent chain, the mark rule first in the
chain. An instance adds, checks, restores and removes only its block and those shared rules, and
never flushes a chain that exists; lines in a chain that have no flannel rule's shape at all
(someone's ``-I FLANNEL-POSTRTG -j ACCEPT``) are removed. Rules of our previous network/subnet
(flannel's "recycling") are deleted explicitly, block by block. A single instance gets exactly
flannel's listing. The same rule text is what ``iptables -S`` prints, so checks compare dumps with
it; every edit is one ``iptables-restore --noflush`` transaction.

nftables mode (both families) is rendered in ``core.nftrules``, shared the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
MULTICAST_V4 = "224.0.0.0/4"
MULTICAST_V6 = "ff00::/8"

Net = IPv4Network | IPv6Network

_ADDR = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b|(?<![\w:])[0-9a-f]*:[0-9a-f:]*(?:/\d{1,3})?")
_RANDOM_FULLY = (" --random-fully", " fully-random")


def _shape(line: str) -> str:
    """A rule with its addresses blanked (and random-fully dropped): the same for every network."""
    out = _ADDR.sub("<addr>", line)
    for flag in _RANDOM_FULLY:
        out = out.replace(flag, "")
    return out


@dataclass(frozen=True)
class Rule:
    """One iptables rule: table, chain and the rule spec as separate arguments."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def line(self, action: str = "-A") -> str:
        """The rule as ``iptables -S`` prints it and iptables-restore reads it (comment quoted)."""
        words = [f'"{w}"' if i and self.spec[i - 1] == "--comment" else w for i, w in enumerate(self.spec)]
        return " ".join([action, self.chain, *words])


@dataclass(frozen=True)
class OwnedChain:
    """One network's part of a flannel chain: the jump to it from a built-in chain, its rules in
    order (the first ``head`` of them shared by every network), and ``alt``: other spellings of our
    rules a previous run may have left (the MASQUERADE rules with or without ``--random-fully``)."""

    table: str
    chain: str
    parent: str
    jump: Rule
    rules: tuple[Rule, ...]
    head: int = 0
    alt: tuple[Rule, ...] = ()

    def all_rules(self) -> tuple[Rule, ...]:
        return (self.jump, *self.rules)

    @property
    def head_lines(self) -> list[str]:
        return [r.line() for r in self.rules[: self.head]]

    @property
    def block_lines(self) -> list[str]:
        return [r.line() for r in self.rules[self.head:]]

    def ours(self) -> set[str]:
        """Every spelling of this network's block."""
        return set(self.block_lines) | {r.line() for r in self.alt}

    def naming(self, subnet: Net) -> OwnedChain:
        """Only the rules that name ``subnet``: what may be recycled of a previous subnet's rules
        while another instance serves its network (the rest are that instance's rules too)."""
        return replace(self, rules=tuple(r for r in self.rules if str(subnet) in r.spec), head=0, alt=())

    def flannel_shaped(self, line: str) -> bool:
        """True for a line that is some network's flannel rule in this chain (ours or another's)."""
        return _shape(line) in {_shape(r.line()) for r in self.rules}


def _rule(table: str, chain: str, *spec: str) -> Rule:
    return Rule(table, chain, spec)


def _masq_rules(cluster: str, pod: str, random_fully: bool) -> tuple[Rule, ...]:
    tail = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    return (
        _rule("nat", MASQ_CHAIN, "-m", "mark", "--mark", KUBE_PROXY_MARK, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", pod, "-d", cluster, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", cluster, "-d", pod, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "!", "-s", cluster, "-d", pod, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", cluster, "!", "-d", MULTICAST_V6 if ":" in cluster else MULTICAST_V4, *tail,
              *masq),
        _rule("nat", MASQ_CHAIN, "!", "-s", cluster, "-d", cluster, *tail, *masq),
    )


def masq_chain(network: Net, subnet: Net, random_fully: bool) -> OwnedChain:
    """FLANNEL-POSTRTG for ``network`` (the config Network) and ``subnet`` (our lease); the mark
    rule is shared by every network. IPv6 (ip6tables): the same rules, ``ff00::/8`` for multicast."""
    cluster, pod = str(network), str(subnet)
    rules = _masq_rules(cluster, pod, random_fully)
    alt = _masq_rules(cluster, pod, not random_fully)[4:]
    jump = _rule("nat", "POSTROUTING", "-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN)
    return OwnedChain("nat", MASQ_CHAIN, "POSTROUTING", jump, rules, head=1, alt=alt)


def forward_chain(network: Net) -> OwnedChain:
    """FLANNEL-FWD: accept forwarding to and from the flannel network."""
    tail = ("-m", "comment", "--comment", FWD_COMMENT)
    rules = (
        _rule("filter", FWD_CHAIN, "-s", str(network), *tail, "-j", "ACCEPT"),
        _rule("filter", FWD_CHAIN, "-d", str(network), *tail, "-j", "ACCEPT"),
    )
    jump = _rule("filter", "FORWARD", *tail, "-j", FWD_CHAIN)
    return OwnedChain("filter", FWD_CHAIN, "FORWARD", jump, rules)


def stale_masq_chain(network: Net, subnet: Net, prev_network: Net | None, prev_subnet: Net | None,
                     random_fully: bool) -> OwnedChain | None:
    """The masquerade rules of the previous run, to recycle when the network or the subnet changed;
    None when nothing changed or there was no previous run (no subnet.env). Either family (Go's
    deleteIP4Tables / deleteIP6Tables of the previous network's rules)."""
    if prev_network is None or prev_subnet is None:
        return None
    if prev_network == network and prev_subnet == subnet:
        return None
    return masq_chain(prev_network, prev_subnet, random_fully)


def stale_forward_chain(network: Net, prev_network: Net | None) -> OwnedChain | None:
    """The forward rules of the previous run's network, when the network changed."""
    if prev_network is None or prev_network == network:
        return None
    return forward_chain(prev_network)


def listing(owned: OwnedChain) -> list[str]:
    """What flannel's e2e test expects: ``iptables -S <parent> | grep FLANNEL`` + ``-S <chain>``."""
    return [owned.jump.line(), f"-N {owned.chain}", *(r.line() for r in owned.rules)]


def _lines(dump: str) -> list[str]:
    return [ln.strip() for ln in dump.splitlines() if ln.strip()]


def chain_rules(dump: str, chain: str) -> list[str]:
    """The ``-A`` lines of ``chain`` in an ``iptables -t <table> -S`` dump, in order."""
    return [ln for ln in _lines(dump) if ln.startswith(f"-A {chain} ")]


def owned_lines(dump: str, owned: OwnedChain) -> list[str]:
    """The lines of a dump that are ours: the chain declaration, the jumps to it, the shared head
    and our block (in dump order). Other networks' rules in the same chain are not ours."""
    mine = {f"-N {owned.chain}", *owned.head_lines, *owned.ours()}

    def ours(line: str) -> bool:
        return line in mine or (line.startswith(f"-A {owned.parent} ") and line.endswith(f"-j {owned.chain}"))

    return [ln for ln in _lines(dump) if ours(ln)]


def _head_ok(rules: Sequence[str], head: Sequence[str]) -> bool:
    return list(rules[: len(head)]) == list(head) and all(rules.count(h) == 1 for h in head)


def _block_ok(rules: Sequence[str], ours: set[str], block: Sequence[str]) -> bool:
    at = [i for i, ln in enumerate(rules) if ln in ours]
    if not at:
        return not block
    return [rules[i] for i in at] == list(block) and at == list(range(at[0], at[0] + len(block)))


def _state(rules: Sequence[str], owned_ours: set[str], head: Sequence[str], block: Sequence[str],
           shaped: Iterable[str] | None, drop: set[str]) -> tuple[set[str], bool, bool]:
    """What must go from a chain's rules and whether head and block are right afterwards. ``drop``
    starts with the lines to delete anyway (stale rules, other spellings of ours); lines not in
    ``shaped`` (the chain's flannel rule shapes) are added as foreign."""
    if shaped is not None:
        shapes = set(shaped)
        drop = drop | {ln for ln in rules if _shape(ln) not in shapes}
    kept = [ln for ln in rules if ln not in drop]
    head_ok, block_ok = _head_ok(kept, head), _block_ok(kept, owned_ours, block)
    if not head_ok:
        drop |= set(head)
    if not block_ok:
        drop |= set(block)
    return drop, head_ok, block_ok


def _shapes(owned: OwnedChain) -> set[str]:
    return {_shape(r.line()) for r in owned.rules}


def in_sync(dump: str, owned: OwnedChain) -> bool:
    """True when the dump holds our part exactly: the chain, one jump to it, the shared head first,
    our block once, contiguous and in order, and no line of a shape no flannel rule has."""
    if f"-N {owned.chain}" not in _lines(dump):
        return False
    if _lines(dump).count(owned.jump.line()) != 1:
        return False
    rules = chain_rules(dump, owned.chain)
    drop, head_ok, block_ok = _state(rules, owned.ours(), owned.head_lines, owned.block_lines, _shapes(owned),
                                     {r.line() for r in owned.alt})
    return head_ok and block_ok and not drop.intersection(rules)


def render_table(owned: OwnedChain, dump: str, stale: OwnedChain | None = None, *, move_jump: bool = True) -> str:
    """One table's section of an ``iptables-restore --noflush`` payload that makes ``dump`` (the
    table's current ``-S`` output) hold our part of the chain, touching no other network's rules:

    1. declare the chain only if it does not exist (declaring an existing one would flush it);
    2. ``-D`` every copy of: the ``stale`` block's rules (those not also wanted), other spellings
       of ours, foreign lines, and our block or the shared head where they are not right;
    3. with ``move_jump`` (setup) or a jump count other than one, ``-D`` every copy of the jump,
       then ``-A`` it once (so it ends up last, as flannel's does);
    4. ``-I`` the shared head at the top (``-A`` into a new chain), ``-A`` our block at the end.
    """
    present = _lines(dump)
    exists = f"-N {owned.chain}" in present
    rules = chain_rules(dump, owned.chain)
    wanted = {r.line() for r in owned.all_rules()}
    drop = {r.line() for r in owned.alt}
    if stale is not None:
        drop |= ({r.line() for r in (*stale.rules, *stale.alt)} - wanted)
    drop, head_ok, block_ok = _state(rules, owned.ours(), owned.head_lines, owned.block_lines, _shapes(owned), drop)
    lines = [f"*{owned.table}"]
    if not exists:
        lines.append(f":{owned.chain} - [0:0]")
    lines += ["-D" + ln[2:] for ln in rules if ln in drop]
    jumps = present.count(owned.jump.line())
    if move_jump or jumps != 1:
        lines += [owned.jump.line("-D")] * jumps + [owned.jump.line()]
    head = owned.rules[: owned.head]
    if not head_ok:
        lines += [r.line() for r in head] if not exists else [r.line("-I") for r in reversed(head)]
    if not block_ok:
        lines += owned.block_lines
    if len(lines) == 1:
        return ""
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_release(owned: OwnedChain, dump: str, stale: OwnedChain | None = None) -> list[str]:
    """Body lines (no ``*table``/``COMMIT``) of an ``iptables-restore --noflush`` payload removing
    our block (any spelling) and the ``stale`` one from ``dump``. When no other network's rule is
    left, the whole chain goes: every jump to it, the chain flushed and deleted. Used for the mode
    we do not run in (nftables on) and for a rule kind that is off."""
    present = _lines(dump)
    if f"-N {owned.chain}" not in present:
        return []
    rules = chain_rules(dump, owned.chain)
    mine = owned.ours() | (stale.ours() if stale is not None else set())
    shapes = _shapes(owned)
    others = [ln for ln in rules if ln not in mine and ln not in owned.head_lines and _shape(ln) in shapes]
    if not others:
        jumps = [ln for ln in present if ln.startswith(f"-A {owned.parent} ") and ln.endswith(f"-j {owned.chain}")]
        return ["-D" + ln[2:] for ln in jumps] + [f":{owned.chain} - [0:0]", f"-X {owned.chain}"]
    return ["-D" + ln[2:] for ln in rules if ln in mine]


def wrap_table(table: str, body: Sequence[str]) -> str:
    """``*table`` + body + ``COMMIT``; empty for an empty body."""
    return "\n".join([f"*{table}", *body, "COMMIT"]) + "\n" if body else ""


def parse_iptables_version(text: str) -> tuple[int, int, int] | None:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9)."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def has_random_fully(version: tuple[int, int, int] | None) -> bool:
    """go-iptables HasRandomFully: MASQUERADE --random-fully exists since iptables 1.6.2; the same
    version added ``iptables-restore --wait``."""
    return version is not None and version >= (1, 6, 2)
