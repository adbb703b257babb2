"""flannel's masquerade and forward rules, rendered as text: pure, so every byte is golden-tested.

Why whole chains: flanneld owns two iptables chains (``FLANNEL-POSTRTG`` in nat, ``FLANNEL-FWD``
in filter) and one jump rule to each. Declaring a chain (``:FLANNEL-POSTRTG - [0:0]``) in an
``iptables-restore --noflush`` payload creates or flushes just that chain, so one transaction
rewrites everything we own, in order, and touches nothing else. Rules left by the previous
network/subnet (flannel's "recycling", §6.1 step 4) are deleted explicitly, before the flush.
The same rule text is what ``iptables -S`` prints, so resync compares dumps with it.

nftables mode (§6.2) renders one ``nft -f`` script for table ``ip flannel-ipv4``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
MULTICAST_V4 = "224.0.0.0/4"
NFT_TABLE = "flannel-ipv4"
NFT_TABLE6 = "flannel-ipv6"
NFT_POSTRTG = "postrtg"
NFT_FORWARD = "forward"


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
    """A chain flanneld owns, the jump to it from a built-in chain, and its rules in order."""

    table: str
    chain: str
    parent: str
    jump: Rule
    rules: tuple[Rule, ...]

    def all_rules(self) -> tuple[Rule, ...]:
        return (self.jump, *self.rules)


def _rule(table: str, chain: str, *spec: str) -> Rule:
    return Rule(table, chain, spec)


def masq_chain(network: IPv4Network, subnet: IPv4Network, random_fully: bool) -> OwnedChain:
    """FLANNEL-POSTRTG for ``network`` (the config Network) and ``subnet`` (our lease), §6.1."""
    cluster, pod = str(network), str(subnet)
    tail = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    rules = (
        _rule("nat", MASQ_CHAIN, "-m", "mark", "--mark", KUBE_PROXY_MARK, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", pod, "-d", cluster, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", cluster, "-d", pod, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "!", "-s", cluster, "-d", pod, *tail, "-j", "RETURN"),
        _rule("nat", MASQ_CHAIN, "-s", cluster, "!", "-d", MULTICAST_V4, *tail, *masq),
        _rule("nat", MASQ_CHAIN, "!", "-s", cluster, "-d", cluster, *tail, *masq),
    )
    jump = _rule("nat", "POSTROUTING", *tail, "-j", MASQ_CHAIN)
    return OwnedChain("nat", MASQ_CHAIN, "POSTROUTING", jump, rules)


def forward_chain(network: IPv4Network) -> OwnedChain:
    """FLANNEL-FWD: accept forwarding to and from the flannel network, §6.1."""
    tail = ("-m", "comment", "--comment", FWD_COMMENT)
    rules = (
        _rule("filter", FWD_CHAIN, "-s", str(network), *tail, "-j", "ACCEPT"),
        _rule("filter", FWD_CHAIN, "-d", str(network), *tail, "-j", "ACCEPT"),
    )
    jump = _rule("filter", "FORWARD", *tail, "-j", FWD_CHAIN)
    return OwnedChain("filter", FWD_CHAIN, "FORWARD", jump, rules)


def stale_masq_chain(network: IPv4Network, subnet: IPv4Network, prev_network: IPv4Network | None,
                     prev_subnet: IPv4Network | None, random_fully: bool) -> OwnedChain | None:
    """The rule set of the previous run, to recycle when the network or the subnet changed; None
    when nothing changed or there was no previous run (no subnet.env)."""
    if prev_network is None or prev_subnet is None:
        return None
    if prev_network == network and prev_subnet == subnet:
        return None
    return masq_chain(prev_network, prev_subnet, random_fully)


def listing(owned: OwnedChain) -> list[str]:
    """What flannel's e2e test expects: ``iptables -S <parent> | grep FLANNEL`` + ``-S <chain>``."""
    return [owned.jump.line(), f"-N {owned.chain}", *(r.line() for r in owned.rules)]


def owned_lines(dump: str, owned: OwnedChain) -> list[str]:
    """The lines of an ``iptables -t <table> -S`` dump that belong to us: the chain, its rules and
    every jump to it from the parent chain."""
    def ours(line: str) -> bool:
        if line == f"-N {owned.chain}" or line.startswith(f"-A {owned.chain} "):
            return True
        return line.startswith(f"-A {owned.parent} ") and line.endswith(f"-j {owned.chain}")

    return [ln.strip() for ln in dump.splitlines() if ours(ln.strip())]


def in_sync(dump: str, owned: OwnedChain) -> bool:
    """True when the dump holds exactly our chain, in order, and one jump to it."""
    have = owned_lines(dump, owned)
    rules = [ln for ln in have if ln.startswith(f"-A {owned.chain} ")]
    return sorted(have) == sorted(listing(owned)) and rules == [r.line() for r in owned.rules]


def render_table(owned: OwnedChain, dump: str, stale: OwnedChain | None = None) -> str:
    """One table's section of an ``iptables-restore --noflush`` payload that makes ``dump`` (the
    table's current ``-S`` output) hold exactly ``owned``:

    1. ``-D`` each rule of the ``stale`` set that is present (and not also wanted);
    2. declare the chain, which creates or flushes it;
    3. ``-D`` every copy of the jump, then ``-A`` it once (so it ends up last, as flannel's does);
    4. ``-A`` the chain's rules in order.
    """
    present = [ln.strip() for ln in dump.splitlines()]
    wanted = {r.line() for r in owned.all_rules()}
    lines = [f"*{owned.table}"]
    if stale is not None:
        lines += [r.line("-D") for r in stale.all_rules() if r.line() in present and r.line() not in wanted]
    lines.append(f":{owned.chain} - [0:0]")
    lines += [owned.jump.line("-D")] * present.count(owned.jump.line())
    lines += [r.line() for r in owned.all_rules()]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_cleanup(table: str, chains: Iterable[tuple[str, str]], dump: str) -> str:
    """Payload removing our chains from ``table`` (given as (chain, parent) pairs): delete every
    jump to them, flush, delete. Empty when none of them exists. Used when nftables mode is on."""
    present = [ln.strip() for ln in dump.splitlines()]
    body = []
    for chain, parent in chains:
        if f"-N {chain}" not in present:
            continue
        jumps = [ln for ln in present if ln.startswith(f"-A {parent} ") and ln.endswith(f"-j {chain}")]
        body += ["-D" + ln[2:] for ln in jumps]
        body += [f":{chain} - [0:0]", f"-X {chain}"]
    return "\n".join([f"*{table}", *body, "COMMIT"]) + "\n" if body else ""


def parse_iptables_version(text: str) -> tuple[int, int, int] | None:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9)."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def has_random_fully(version: tuple[int, int, int] | None) -> bool:
    """go-iptables HasRandomFully: MASQUERADE --random-fully exists since iptables 1.6.2; the same
    version added ``iptables-restore --wait``."""
    return version is not None and version >= (1, 6, 2)


# ---- nftables (§6.2) ---------------------------------------------------------------------------

def nft_masq_rules(network: IPv4Network, subnet: IPv4Network, random_fully: bool) -> list[str]:
    """The postrtg rules as ``nft list`` prints them (note flannel's fourth rule differs from the
    iptables one: ``saddr != pod daddr cluster``)."""
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


def _nft_chains(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
                random_fully: bool) -> list[tuple[str, list[str]]]:
    chains = []
    if masq:  # flannel sets up masquerading (step 16) before forwarding (step 17)
        chains.append((NFT_POSTRTG, nft_masq_rules(network, subnet, random_fully)))
    if forward:
        chains.append((NFT_FORWARD, nft_forward_rules(network)))
    return chains


def render_nft(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
               random_fully: bool) -> str:
    """One ``nft -f -`` transaction: both tables (as flannel's Init), then each chain added,
    flushed and filled, so re-running it rewrites exactly our chains."""
    lines = [f'add table ip {NFT_TABLE} {{ comment "rules for {NFT_TABLE}" ; }}',
             f'add table ip6 {NFT_TABLE6} {{ comment "rules for {NFT_TABLE6}" ; }}']
    for name, rules in _nft_chains(network, subnet, masq=masq, forward=forward, random_fully=random_fully):
        kind, hook, prio, comment = _NFT_CHAINS[name]
        lines.append(f"add chain ip {NFT_TABLE} {name} {{ type {kind} hook {hook} priority {prio} ; "
                     f'comment "{comment}" ; }}')
        lines.append(f"flush chain ip {NFT_TABLE} {name}")
        lines += [f"add rule ip {NFT_TABLE} {name} {r}" for r in rules]
    return "\n".join(lines) + "\n"


def nft_chain_listing(name: str, rules: Sequence[str]) -> list[str]:
    """The body of one chain as ``nft list`` prints it (tab-indented, one level inside a table)."""
    kind, hook, prio, comment = _NFT_CHAINS[name]
    return [f"\tchain {name} {{", f'\t\tcomment "{comment}"',
            f"\t\ttype {kind} hook {hook} priority {prio}; policy accept;", *(f"\t\t{r}" for r in rules), "\t}"]


def nft_listing(network: IPv4Network, subnet: IPv4Network, *, masq: bool, forward: bool,
                random_fully: bool) -> str:
    """The expected ``nft list table ip flannel-ipv4``."""
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
