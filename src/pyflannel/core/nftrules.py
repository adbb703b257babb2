"""flannel's nftables masquerade and forward rules, for both families, rendered as text: pure.

flannel's tables are ``ip flannel-ipv4`` and ``ip6 flannel-ipv6``, each with the chains ``postrtg``
and ``forward``, and the same rules in each (``ip6`` matches and ``ff00::/8`` for multicast in the
IPv6 one). A table is shared by every flanneld of the host, each for its own network, the same way
as the iptables chains (see ``core.masq``): rules are added, inserted and deleted by handle in one
``nft -f`` transaction, and a table is deleted only when no network's rules remain in it. The family
comes from the network: an ``IPv6Network`` gets the ip6 table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from .masq import MULTICAST_V4, MULTICAST_V6, _shape, _state

Net = IPv4Network | IPv6Network

NFT_TABLE = "flannel-ipv4"
NFT_TABLE6 = "flannel-ipv6"
NFT_POSTRTG = "postrtg"
NFT_FORWARD = "forward"


@dataclass(frozen=True)
class NftFamily:
    """One of flannel's tables: the nft family, the table name, the match keyword, multicast."""

    family: str
    table: str
    match: str
    multicast: str

    @property
    def ref(self) -> str:
        """``ip flannel-ipv4``: how nft names the table in a command."""
        return f"{self.family} {self.table}"


V4 = NftFamily("ip", NFT_TABLE, "ip", MULTICAST_V4)
V6 = NftFamily("ip6", NFT_TABLE6, "ip6", MULTICAST_V6)


def nft_family(version: int) -> NftFamily:
    return V6 if version == 6 else V4


def _fam(network: Net) -> NftFamily:
    return nft_family(network.version)


def nft_masq_rules(network: Net, subnet: Net, random_fully: bool) -> list[str]:
    """The postrtg rules as ``nft list`` prints them (note flannel's fourth rule differs from the
    iptables one: ``saddr != pod daddr cluster``). The first (the mark) is shared by all networks."""
    cluster, pod, f = str(network), str(subnet), _fam(network)
    m = f.match
    masq = "masquerade fully-random" if random_fully else "masquerade"
    return [
        "meta mark 0x00004000 return",
        f"{m} saddr {pod} {m} daddr {cluster} return",
        f"{m} saddr {cluster} {m} daddr {pod} return",
        f"{m} saddr != {pod} {m} daddr {cluster} return",
        f"{m} saddr {cluster} {m} daddr != {f.multicast} {masq}",
        f"{m} saddr != {cluster} {m} daddr {cluster} {masq}",
    ]


def nft_forward_rules(network: Net) -> list[str]:
    m = _fam(network).match
    return [f"{m} saddr {network} accept", f"{m} daddr {network} accept"]


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

    def naming(self, subnet: Net) -> NftPart:
        """Only the rules that name ``subnet`` (see ``OwnedChain.naming``)."""
        return NftPart(self.chain, (), tuple(r for r in self.block if str(subnet) in r.split()))


def nft_parts(network: Net, subnet: Net, *, masq: bool, forward: bool, random_fully: bool) -> list[NftPart]:
    parts = []
    if masq:  # flannel sets up masquerading before forwarding
        rules = nft_masq_rules(network, subnet, random_fully)
        parts.append(NftPart(NFT_POSTRTG, tuple(rules[:1]), tuple(rules[1:]),
                             tuple(nft_masq_rules(network, subnet, not random_fully)[4:])))
    if forward:
        parts.append(NftPart(NFT_FORWARD, (), tuple(nft_forward_rules(network))))
    return parts


def _nft_chains(network: Net, subnet: Net, *, masq: bool, forward: bool,
                random_fully: bool) -> list[tuple[str, list[str]]]:
    return [(p.chain, [*p.head, *p.block])
            for p in nft_parts(network, subnet, masq=masq, forward=forward, random_fully=random_fully)]


_ANY = IPv4Network("10.0.0.0/8"), IPv4Network("10.0.0.0/24")
_ANY6 = IPv6Network("fd00::/48"), IPv6Network("fd00::/64")
NFT_MARK_RULE = nft_masq_rules(*_ANY, False)[0]
_NFT_SHAPES = {_shape(r) for a in (_ANY, _ANY6) for r in (*nft_masq_rules(*a, False), *nft_forward_rules(a[0]))}
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


def render_nft(network: Net, subnet: Net, *, masq: bool, forward: bool,
               random_fully: bool, current: str = "", stale: Sequence[NftPart] = ()) -> str:
    """One ``nft -f -`` transaction making ``current`` (``nft -a list table <family> <table>`` of
    ``network``'s family, empty when the table is missing) hold our part: both tables (as flannel's
    Init) and each chain added (a no-op when they exist: nothing is flushed), then by handle the
    deletion of stale rules (the ``stale`` parts' blocks, also in a chain of a rule kind that is
    off), of foreign rules and of our rules where they are not right, then the shared head inserted
    at the top and our block appended."""
    chains, ref = parse_nft_table(current), _fam(network).ref
    lines = [f'add table {f.ref} {{ comment "rules for {f.table}" ; }}' for f in (V4, V6)]
    parts = nft_parts(network, subnet, masq=masq, forward=forward, random_fully=random_fully)
    for name, have in chains.items():  # a chain of a rule kind that is off: only deletions
        if name not in {p.chain for p in parts}:
            gone = {r for s in stale if s.chain == name for r in s.ours()}
            lines += [f"delete rule {ref} {name} handle {h}" for r, h in have if r in gone]
    for part in parts:
        kind, hook, prio, comment = _NFT_CHAINS[part.chain]
        lines.append(f"add chain {ref} {part.chain} {{ type {kind} hook {hook} priority {prio} ; "
                     f'comment "{comment}" ; }}')
        have = chains.get(part.chain, [])
        wanted = {*part.head, *part.block}
        drop = {r for s in stale if s.chain == part.chain for r in s.ours()} - wanted
        drop, head_ok, block_ok = _nft_state(part, [r for r, _ in have], drop)
        lines += [f"delete rule {ref} {part.chain} handle {h}" for r, h in have if r in drop]
        if not head_ok:
            verb = "insert" if have else "add"
            order = reversed(part.head) if have else part.head
            lines += [f"{verb} rule {ref} {part.chain} {r}" for r in order]
        if not block_ok:
            lines += [f"add rule {ref} {part.chain} {r}" for r in part.block]
    return "\n".join(lines) + "\n"


def render_nft_release(current: str, tables: str, mine: Sequence[NftPart], family: int = 4) -> str:
    """``nft -f`` script removing the rules of ``mine`` (our parts, any spelling, and stale ones)
    from ``current`` (``nft -a list table`` of flannel's table of ``family``); when no other
    network's rule is left in any of its chains, that table (if ``tables``, ``nft list tables``,
    lists it) is deleted whole. Empty when there is nothing to do."""
    chains, fam = parse_nft_table(current), nft_family(family)
    gone = {r for p in mine for r in p.ours()}
    others = [r for rules in chains.values() for r, _ in rules
              if r not in gone and r != NFT_MARK_RULE and _shape(r) in _NFT_SHAPES]
    if not others:
        return nft_cleanup(tables, (family,))
    return "".join(f"delete rule {fam.ref} {c} handle {h}\n" for c, rules in chains.items()
                   for r, h in rules if r in gone)


def nft_chain_listing(name: str, rules: Sequence[str]) -> list[str]:
    """The body of one chain as ``nft list`` prints it (tab-indented, one level inside a table)."""
    kind, hook, prio, comment = _NFT_CHAINS[name]
    return [f"\tchain {name} {{", f'\t\tcomment "{comment}"',
            f"\t\ttype {kind} hook {hook} priority {prio}; policy accept;", *(f"\t\t{r}" for r in rules), "\t}"]


def nft_listing(network: Net, subnet: Net, *, masq: bool, forward: bool, random_fully: bool) -> str:
    """The expected ``nft list table <family> <table>`` when we are the only network."""
    f = _fam(network)
    lines = [f"table {f.ref} {{", f'\tcomment "rules for {f.table}"']
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


def nft_cleanup(tables_listing: str, families: Sequence[int] = (4, 6)) -> str:
    """``nft -f`` script deleting flannel's tables of ``families`` listed by ``nft list tables``;
    empty if none."""
    ours = {f"table {nft_family(v).ref}" for v in families}
    present = [ln.strip() for ln in tables_listing.splitlines() if ln.strip() in ours]
    return "".join(f"delete {t}\n" for t in present)
