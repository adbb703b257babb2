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

nftables mode: flannel's table ``ip flannel-ipv4`` (and the empty ``ip6 flannel-ipv6``) with its
chains ``postrtg`` and ``forward``, shared the same way: rules are added, inserted and deleted by
handle in one ``nft -f`` transaction, and a table is deleted only when no network's rules remain.
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
NFT_TABLE = "flannel-ipv4"
NFT_TABLE6 = "flannel-ipv6"
NFT_POSTRTG = "postrtg"
NFT_FORWARD = "forward"

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

    def naming(self, subnet: IPv4Network) -> OwnedChain:
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


def masq_chain(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network, random_fully: bool
               ) -> OwnedChain:
    """FLANNEL-POSTRTG for ``network`` (the config Network) and ``subnet`` (our lease); the mark
    rule is shared by every network. IPv6 (ip6tables): the same rules, ``ff00::/8`` for multicast."""
    cluster, pod = str(network), str(subnet)
    rules = _masq_rules(cluster, pod, random_fully)
    alt = _masq_rules(cluster, pod, not random_fully)[4:]
    jump = _rule("nat", "POSTROUTING", "-m", "comment", "--comment", MASQ_COMMENT, "-j", MASQ_CHAIN)
    return OwnedChain("nat", MASQ_CHAIN, "POSTROUTING", jump, rules, head=1, alt=alt)


def forward_chain(network: IPv4Network | IPv6Network) -> OwnedChain:
    """FLANNEL-FWD: accept forwarding to and from the flannel network."""
    tail = ("-m", "comment", "--comment", FWD_COMMENT)
    rules = (
        _rule("filter", FWD_CHAIN, "-s", str(network), *tail, "-j", "ACCEPT"),
        _rule("filter", FWD_CHAIN, "-d", str(network), *tail, "-j", "ACCEPT"),
    )
    jump = _rule("filter", "FORWARD", *tail, "-j", FWD_CHAIN)
    return OwnedChain("filter", FWD_CHAIN, "FORWARD", jump, rules)


def stale_masq_chain(network: IPv4Network, subnet: IPv4Network, prev_network: IPv4Network | None,
                     prev_subnet: IPv4Network | None, random_fully: bool) -> OwnedChain | None:
    """The masquerade rules of the previous run, to recycle when the network or the subnet changed;
    None when nothing changed or there was no previous run (no subnet.env)."""
    if prev_network is None or prev_subnet is None:
        return None
    if prev_network == network and prev_subnet == subnet:
        return None
    return masq_chain(prev_network, prev_subnet, random_fully)


def stale_forward_chain(network: IPv4Network, prev_network: IPv4Network | None) -> OwnedChain | None:
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


# ---- nftables ----------------------------------------------------------------------------------

def nft_masq_rules(network: IPv4Network, subnet: IPv4Network, random_fully: bool) -> list[str]:
    """The postrtg rules as ``nft list`` prints them (note flannel's fourth rule differs from the
    iptables one: ``saddr != pod daddr cluster``). The first (the mark) is shared by all networks."""
    cluster, pod = str(network), str(subnet)
    masq = "masquerade fully-random" if random_fully else "masquerade"
    return [
        "meta mark 0x00004000 return",
        f"ip saddr {pod} ip daddr {cluster} return",
        f"ip saddr {cluster} ip daddr {pod} return",
        f"ip saddr != {pod} ip daddr {cluster} return",
        f"ip saddr {cluster} ip daddr != {MULTICAST_V4} {masq}",
        f"ip saddr != {cluster} ip daddr {cluster} {masq}",
    ]


def nft_forward_rules(network: IPv4Network) -> list[str]:
    return [f"ip saddr {network} accept", f"ip daddr {network} accept"]


_NFT_CHAINS = {
    NFT_POSTRTG: ("nat", "postrouting", "srcnat", "chain to manage traffic masquerading by flannel"),
    NFT_FORWARD: ("filter", "forward", "filter", "chain to accept flannel traffic"),
}


@dataclass(frozen=True)
class NftPart:
    """One network's part of a flannel nftables chain: shared head, our block, other spellings."""

    chain: str
    head: tuple[str, ...]
    block: tuple[str, ...]
    alt: tuple[str, ...] = ()

    def ours(self) -> set[str]:
        return {*self.block, *self.alt}

    def shapes(self) -> set[str]:
        return {_shape(r) for r in (*self.head, *self.block)}

    def naming(self, subnet: IPv4Network) -> NftPart:
        """Only the rules that name ``subnet`` (see ``OwnedChain.naming``)."""
        return NftPart(self.chain, (), tuple(r for r in self.block if str(subnet) in r.split()))


def nft_parts(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
              random_fully: bool) -> list[NftPart]:
    parts = []
    if masq:  # flannel sets up masquerading before forwarding
        rules = nft_masq_rules(network, subnet, random_fully)
        parts.append(NftPart(NFT_POSTRTG, tuple(rules[:1]), tuple(rules[1:]),
                             tuple(nft_masq_rules(network, subnet, not random_fully)[4:])))
    if forward:
        parts.append(NftPart(NFT_FORWARD, (), tuple(nft_forward_rules(network))))
    return parts


def _nft_chains(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
                random_fully: bool) -> list[tuple[str, list[str]]]:
    return [(p.chain, [*p.head, *p.block])
            for p in nft_parts(network, subnet, masq=masq, forward=forward, random_fully=random_fully)]


_ANY = IPv4Network("10.0.0.0/8"), IPv4Network("10.0.0.0/24")
NFT_MARK_RULE = nft_masq_rules(*_ANY, False)[0]
_NFT_SHAPES = {_shape(r) for r in (*nft_masq_rules(*_ANY, False), *nft_forward_rules(_ANY[0]))}
_HANDLE = re.compile(r"^(.*?)\s+# handle (\d+)$")


def parse_nft_table(text: str) -> dict[str, list[tuple[str, int]]]:
    """``nft -a list table ip flannel-ipv4`` -> {chain: [(rule as ``nft list`` prints it, handle)]}."""
    chains: dict[str, list[tuple[str, int]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^chain (\S+) \{", line)
        if m:
            current = m[1]
            chains[current] = []
            continue
        if line == "}":
            current = None
            continue
        m = _HANDLE.match(line)
        if current is not None and m:
            chains[current].append((m[1], int(m[2])))
    return chains


def _nft_state(part: NftPart, rules: Sequence[str], drop: set[str]) -> tuple[set[str], bool, bool]:
    return _state(rules, part.ours(), part.head, part.block, part.shapes(), drop | set(part.alt))


def nft_in_sync(current: str, parts: Sequence[NftPart]) -> bool:
    """``current`` (``nft -a list table``) holds each part right: the chain, the shared head
    first, our block once and contiguous, no rule of a shape no flannel rule has."""
    chains = parse_nft_table(current)
    for part in parts:
        if part.chain not in chains:
            return False
        rules = [r for r, _ in chains[part.chain]]
        drop, head_ok, block_ok = _nft_state(part, rules, set())
        if not (head_ok and block_ok) or drop.intersection(rules):
            return False
    return True


def render_nft(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
               random_fully: bool, current: str = "", stale: Sequence[NftPart] = ()) -> str:
    """One ``nft -f -`` transaction making ``current`` (``nft -a list table ip flannel-ipv4``, empty
    when the table is missing) hold our part: both tables (as flannel's Init) and each chain added
    (a no-op when they exist: nothing is flushed), then by handle the deletion of stale rules (the
    ``stale`` parts' blocks, also in a chain of a rule kind that is off), of foreign rules and of our
    rules where they are not right, then the shared head inserted at the top and our block
    appended."""
    chains = parse_nft_table(current)
    lines = [f'add table ip {NFT_TABLE} {{ comment "rules for {NFT_TABLE}" ; }}',
             f'add table ip6 {NFT_TABLE6} {{ comment "rules for {NFT_TABLE6}" ; }}']
    parts = nft_parts(network, subnet, masq=masq, forward=forward, random_fully=random_fully)
    for name, have in chains.items():  # a chain of a rule kind that is off: only deletions
        if name not in {p.chain for p in parts}:
            gone = {r for s in stale if s.chain == name for r in s.ours()}
            lines += [f"delete rule ip {NFT_TABLE} {name} handle {h}" for r, h in have if r in gone]
    for part in parts:
        kind, hook, prio, comment = _NFT_CHAINS[part.chain]
        lines.append(f"add chain ip {NFT_TABLE} {part.chain} {{ type {kind} hook {hook} priority {prio} ; "
                     f'comment "{comment}" ; }}')
        have = chains.get(part.chain, [])
        wanted = {*part.head, *part.block}
        drop = {r for s in stale if s.chain == part.chain for r in s.ours()} - wanted
        drop, head_ok, block_ok = _nft_state(part, [r for r, _ in have], drop)
        lines += [f"delete rule ip {NFT_TABLE} {part.chain} handle {h}" for r, h in have if r in drop]
        if not head_ok:
            verb = "insert" if have else "add"
            order = reversed(part.head) if have else part.head
            lines += [f"{verb} rule ip {NFT_TABLE} {part.chain} {r}" for r in order]
        if not block_ok:
            lines += [f"add rule ip {NFT_TABLE} {part.chain} {r}" for r in part.block]
    return "\n".join(lines) + "\n"


def render_nft_release(current: str, tables: str, mine: Sequence[NftPart]) -> str:
    """``nft -f`` script removing the rules of ``mine`` (our parts, any spelling, and stale ones)
    from ``current`` (``nft -a list table ip flannel-ipv4``); when no other network's rule is left
    in any chain, flannel's tables (listed in ``tables``: ``nft list tables``) are deleted whole.
    Empty when there is nothing to do."""
    chains = parse_nft_table(current)
    gone = {r for p in mine for r in p.ours()}
    others = [r for rules in chains.values() for r, _ in rules
              if r not in gone and r != NFT_MARK_RULE and _shape(r) in _NFT_SHAPES]
    if not others:
        return nft_cleanup(tables)
    return "".join(f"delete rule ip {NFT_TABLE} {c} handle {h}\n" for c, rules in chains.items()
                   for r, h in rules if r in gone)


def nft_chain_listing(name: str, rules: Sequence[str]) -> list[str]:
    """The body of one chain as ``nft list`` prints it (tab-indented, one level inside a table)."""
    kind, hook, prio, comment = _NFT_CHAINS[name]
    return [f"\tchain {name} {{", f'\t\tcomment "{comment}"',
            f"\t\ttype {kind} hook {hook} priority {prio}; policy accept;", *(f"\t\t{r}" for r in rules), "\t}"]


def nft_listing(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
                random_fully: bool) -> str:
    """The expected ``nft list table ip flannel-ipv4`` when we are the only network."""
    lines = [f"table ip {NFT_TABLE} {{", f'\tcomment "rules for {NFT_TABLE}"']
    chains = _nft_chains(network, subnet, masq=masq, forward=forward, random_fully=random_fully)
    for i, (name, rules) in enumerate(chains):
        lines += ([""] if i else []) + nft_chain_listing(name, rules)
    return "\n".join([*lines, "}"]) + "\n"


def nft_random_fully_probe() -> str:
    """flannel's ``masqueradeTest`` chain, run with ``nft --check`` to see if the kernel has
    ``masquerade fully-random``."""
    return (f"add table ip {NFT_TABLE}\n"
            f"add chain ip {NFT_TABLE} masqueradeTest {{ type nat hook postrouting priority srcnat ; }}\n"
            f"add rule ip {NFT_TABLE} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n")


def nft_cleanup(tables_listing: str) -> str:
    """``nft -f`` script deleting flannel's tables listed by ``nft list tables``; empty if none."""
    ours = {f"table ip {NFT_TABLE}", f"table ip6 {NFT_TABLE6}"}
    present = [ln.strip() for ln in tables_listing.splitlines() if ln.strip() in ours]
    return "".join(f"delete {t}\n" for t in present)
