"""Masquerade and forward rules in the kernel: flannel's trafficmngr.

Why so shaped: the rule text and what to add or delete come from ``core.masq`` (pure,
golden-tested); running iptables/nft and reading their tables back is ``kernel/rulesio.py``, the lock and
claim files shared with the other flanneld of this host ``kernel/hostpeers.py``; this module
decides, per network and family, what to apply, recycle and repair. flannel's chains (iptables) and
tables (nftables) are shared by every flanneld on the host, each for its own network: an instance
adds, checks, restores and removes only its own rules (those naming its network and subnet) and the
rules every network shares, never another network's.

Setup applies our part with one ``iptables-restore --noflush`` (or one ``nft -f -`` transaction);
``ensure`` (every ``--iptables-resync`` seconds) dumps the tables and repairs our part when it is
missing, out of order or mixed with foreign lines. Every edit (dump, compute, apply) runs under a
lock file of this network namespace, so two instances never apply from stale dumps. Each instance
also holds a shared lock on a claim file per network and per (network, subnet) for its whole life:
the rules of our previous network or subnet (read from the old subnet.env) are recycled only when
no live instance claims them.

Synchronous by design: the daemon calls it through ``asyncio.to_thread``; a lock keeps a resync
from interleaving with a setup.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from dataclasses import dataclass

from ..core.errors import LocalConfigError
from ..core.masq import (
    FWD_CHAIN,
    MASQ_CHAIN,
    OwnedChain,
    forward_chain,
    has_random_fully,
    in_sync,
    masq_chain,
    render_release,
    render_table,
    stale_forward_chain,
    stale_masq_chain,
    wrap_table,
)
from ..core.nftrules import (
    NFT_FORWARD,
    NFT_POSTRTG,
    NftPart,
    nft_family,
    nft_in_sync,
    nft_parts,
    nft_random_fully_probe,
    render_nft,
    render_nft_release,
)
from .hostpeers import STATE_DIR, HostPeers, Net, network_key, subnet_key
from .netlink import KernelError
from .rulesio import Iptables, nft_accepts, nft_apply, nft_list, nft_tables, nft_try

log = logging.getLogger(__name__)


@dataclass
class Stale:
    """Our rules of the previous run to recycle: (network, subnet) of the masquerade rules, network
    of the forward rules; None for nothing."""

    masq: tuple[Net, Net] | None = None
    forward: Net | None = None
    network_served: bool = False  # another live instance serves the masq rules' network

    def masq_chain(self) -> OwnedChain | None:
        if self.masq is None:
            return None
        chain = masq_chain(*self.masq, True)
        return chain.naming(self.masq[1]) if self.network_served else chain

    def forward_chain(self) -> OwnedChain | None:
        return forward_chain(self.forward) if self.forward is not None else None

    def nft_parts(self) -> list[NftPart]:
        out = []
        if self.masq is not None:
            parts = nft_parts(*self.masq, masq=True, forward=False, random_fully=True)
            out += [p.naming(self.masq[1]) for p in parts] if self.network_served else parts
        if self.forward is not None:
            out += nft_parts(self.forward, self.forward, masq=False, forward=True, random_fully=True)
        return out


class TrafficManager:
    """flannel's IPTablesManager / NFTablesManager behind one object, for one network of one
    family: ``family=6`` gives the same rules for the IPv6 network, with ip6tables or in nftables'
    ``ip6 flannel-ipv6`` table.

    ``state_dir`` is where instances of this host coordinate (see ``HostPeers``)."""

    def __init__(self, *, nftables: bool, ip_masq: bool, forward_rules: bool, random_fully: bool = True,
                 state_dir: str = STATE_DIR, family: int = 4) -> None:
        self.family = family
        self._ipt = Iptables("ip6tables" if family == 6 else "iptables")
        self._nft = nft_family(family)
        self.nftables = nftables
        self.ip_masq = ip_masq
        self.forward_rules = forward_rules
        self.random_fully_wanted = random_fully  # False with --ip-masq-fully-random-disable
        self.random_fully = False  # what is in effect, after asking iptables / the kernel
        self.repairs = 0
        self._state_dir = state_dir
        self._peers: HostPeers | None = None
        self._network: Net | None = None
        self._subnet: Net | None = None
        self._chains: list[OwnedChain] = []
        self._parts: list[NftPart] = []
        self._lock = threading.Lock()

    # ---- the interface the daemon uses ----------------------------------------------------------
    def setup(self, network: Net, subnet: Net, prev_network: Net | None, prev_subnet: Net | None) -> None:
        """Startup: claim our network, remove our rules of the other mode, recycle our stale rules
        (unless another live instance serves that network), apply ours."""
        with self._lock:
            self._network, self._subnet = network, subnet
            if self._peers is None:
                self._peers = HostPeers(self._state_dir)
            peers = self._peers
            peers.claim([network_key(network), subnet_key(network, subnet)])
            stale = Stale()
            if stale_masq_chain(network, subnet, prev_network, prev_subnet, True) is not None:
                assert prev_network is not None and prev_subnet is not None
                if peers.claimed(subnet_key(prev_network, prev_subnet)):
                    log.info("keeping the masquerade rules of %s in %s: another flanneld on this host serves them",
                             prev_subnet, prev_network)
                else:
                    log.info("network or subnet (%s, %s) differs from the previous one (%s, %s): recycling old "
                             "rules", network, subnet, prev_network, prev_subnet)
                    stale.masq = (prev_network, prev_subnet)
                    stale.network_served = prev_network != network and peers.claimed(network_key(prev_network))
            if stale_forward_chain(network, prev_network) is not None:
                assert prev_network is not None
                if peers.claimed(network_key(prev_network)):
                    log.info("keeping the forward rules of %s: another flanneld on this host serves it", prev_network)
                else:
                    stale.forward = prev_network
            with peers.locked():
                if self.nftables:
                    self._release_iptables(stale)
                    self._setup_nft(stale)
                else:
                    self._release_nft(stale)
                    self._setup_iptables(stale)

    def ensure(self) -> bool:
        """Repair our part where it differs; True when something had to be repaired."""
        with self._lock:
            repaired = self._ensure_nft() if self.nftables else self._ensure_iptables()
            self.repairs += repaired
            return repaired

    def describe(self) -> str:
        if self._network is None:
            return "traffic rules: not set up yet"
        rf = "fully-random" if self.random_fully else "no random-fully"
        parts = []
        if self.nftables:
            if self.ip_masq:
                parts.append(f"masquerade {self._network} from {self._subnet} ({rf})")
            if self.forward_rules:
                parts.append(f"forward {self._network}")
            where = f"nftables table {self._nft.ref}"
        else:
            if self.ip_masq:
                parts.append(f"masquerade {self._network} from {self._subnet} in nat/{MASQ_CHAIN} ({rf})")
            if self.forward_rules:
                parts.append(f"forward {self._network} in filter/{FWD_CHAIN}")
            where = self._ipt.binary
        what = ", ".join(parts) or "no rules (--ip-masq and --iptables-forward-rules are off)"
        return f"{where}: {what}; repairs {self.repairs}"

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self._peers.locked() if self._peers is not None else contextlib.nullcontext()

    # ---- iptables mode --------------------------------------------------------------------------
    def _apply_iptables(self, work: list[tuple[OwnedChain, OwnedChain | None]], release: list[tuple[OwnedChain,
                        OwnedChain | None]], *, move_jump: bool) -> dict[str, str]:
        """Dump, render, restore; once more from fresh dumps if the restore was refused (someone
        changed a rule between our dump and our restore). The dumps after it."""
        tables = list(dict.fromkeys(c.table for c, _ in (*work, *release)))
        for attempt in (1, 2):
            dumps = {t: self._ipt.dump(t) for t in tables}
            payload = "".join(render_table(c, dumps[c.table], s, move_jump=move_jump) for c, s in work)
            payload += "".join(wrap_table(c.table, render_release(c, dumps[c.table], s)) for c, s in release)
            if not payload:
                return dumps
            try:
                self._ipt.restore(payload)
                break
            except KernelError as err:
                if attempt == 2:
                    raise
                log.debug("iptables-restore refused (%s); retrying from fresh dumps", err)
        return {t: self._ipt.dump(t) for t in tables}

    def _setup_iptables(self, stale: Stale) -> None:
        assert self._network is not None and self._subnet is not None
        version = self._ipt.version()
        self.random_fully = self.random_fully_wanted and has_random_fully(version)
        if self.random_fully_wanted and not self.random_fully:
            log.warning("iptables %s has no MASQUERADE --random-fully (needs 1.6.2); masquerading without it",
                        ".".join(map(str, version or ())) or "(unknown version)")
        work: list[tuple[OwnedChain, OwnedChain | None]] = []
        release: list[tuple[OwnedChain, OwnedChain | None]] = []  # a rule kind that is off: ours go
        masq = (masq_chain(self._network, self._subnet, self.random_fully), stale.masq_chain())
        (work if self.ip_masq else release).append(masq)
        fwd = (forward_chain(self._network), stale.forward_chain())
        (work if self.forward_rules else release).append(fwd)
        self._chains = [chain for chain, _ in work]
        dumps = self._apply_iptables(work, release, move_jump=True)
        for chain in self._chains:
            if not in_sync(dumps[chain.table], chain):
                log.warning("iptables -S shows %s differently from what was applied; resync will re-apply it",
                            chain.chain)
        if self._chains:
            log.info("%s rules applied: %s", self._ipt.binary, ", ".join(f"{c.table}/{c.chain}" for c in self._chains))

    def _ensure_iptables(self) -> bool:
        if not self._chains:
            return False
        dumps = {t: self._ipt.dump(t) for t in dict.fromkeys(c.table for c in self._chains)}
        broken = [c for c in self._chains if not in_sync(dumps[c.table], c)]
        if not broken:
            return False
        log.warning("our rules in %s chain(s) %s changed or missing; re-applying", self._ipt.binary,
                    ", ".join(c.chain for c in broken))
        with self._locked():
            self._apply_iptables([(c, None) for c in broken], [], move_jump=False)
        return True

    def _release_iptables(self, stale: Stale) -> None:
        """nftables mode: remove our rules (and our stale ones) from FLANNEL-POSTRTG (nat) and
        FLANNEL-FWD (filter), and each chain with its jumps once no other network's rules are
        left (IPv4: with iptables and ip6tables, as flannel; IPv6: ip6tables). Failures are only
        logged, as in flannel."""
        assert self._network is not None and self._subnet is not None
        masq = masq_chain(self._network, self._subnet, True)
        fwd = forward_chain(self._network)
        for binary in ("ip6tables",) if self.family == 6 else ("iptables", "ip6tables"):
            if shutil.which(binary) is None:
                continue
            try:
                nat, filt = self._ipt.dump("nat", binary), self._ipt.dump("filter", binary)
                payload = wrap_table("nat", render_release(masq, nat, stale.masq_chain()))
                payload += wrap_table("filter", render_release(fwd, filt, stale.forward_chain()))
                if payload:
                    self._ipt.restore(payload, f"{binary}-restore")
                    log.info("removed this network's %s rules (nftables mode)", binary)
            except (KernelError, LocalConfigError) as err:
                log.debug("could not clean up %s chains: %s", binary, err)

    # ---- nftables mode --------------------------------------------------------------------------
    def _stale_parts(self, stale: Stale) -> list[NftPart]:
        """Our rules to remove: the stale ones, and ours of a rule kind that is off."""
        assert self._network is not None and self._subnet is not None
        return [*stale.nft_parts(), *nft_parts(self._network, self._subnet, masq=not self.ip_masq,
                                               forward=not self.forward_rules, random_fully=True)]

    def _setup_nft(self, stale: Stale) -> None:
        assert self._network is not None and self._subnet is not None
        self.random_fully = False
        if self.ip_masq and self.random_fully_wanted:
            self.random_fully = nft_accepts(nft_random_fully_probe())
            if not self.random_fully:
                log.warning("nftables: masquerade fully-random unsupported; masquerading without it")
        self._parts = nft_parts(self._network, self._subnet, masq=self.ip_masq, forward=self.forward_rules,
                                random_fully=self.random_fully)
        self._apply_nft(self._stale_parts(stale))
        chains = [name for name, on in ((NFT_POSTRTG, self.ip_masq), (NFT_FORWARD, self.forward_rules)) if on]
        log.info("nftables rules applied: table %s chains %s", self._nft.ref, ", ".join(chains) or "(none)")

    def _apply_nft(self, stale: list[NftPart]) -> None:
        assert self._network is not None and self._subnet is not None
        for attempt in (1, 2):
            script = render_nft(self._network, self._subnet, masq=self.ip_masq, forward=self.forward_rules,
                                random_fully=self.random_fully, current=self._nft_list(), stale=stale)
            try:
                nft_apply(script)
                return
            except KernelError as err:
                if attempt == 2:
                    raise
                log.debug("nft refused (%s); retrying from a fresh listing", err)

    def _nft_list(self) -> str:
        return nft_list(self._nft.family, self._nft.table)

    def _ensure_nft(self) -> bool:
        if self._network is None or not self._parts or nft_in_sync(self._nft_list(), self._parts):
            return False
        log.warning("our rules in nftables table %s changed or missing; re-applying", self._nft.ref)
        with self._locked():
            self._apply_nft([])
        return True

    def _release_nft(self, stale: Stale) -> None:
        """iptables mode: remove our rules from flannel's nftables table of our family, and the table
        once no other network's rules are left, if nft and nf_tables are there. IPv4 also deletes
        the ``ip6 flannel-ipv6`` table when it holds no network's rules (flannel's Init makes both)."""
        assert self._network is not None and self._subnet is not None
        if shutil.which("nft") is None:
            return
        tables = nft_tables()
        if tables is None:
            return
        mine = [*nft_parts(self._network, self._subnet, masq=True, forward=True, random_fully=True),
                *stale.nft_parts()]
        script = render_nft_release(self._nft_list(), tables, mine, self.family)
        if self.family == 4:
            v6 = nft_family(6)
            script += render_nft_release(nft_list(v6.family, v6.table), tables, [], 6)
        if script:
            refused = nft_try(script)
            if refused is not None:
                log.debug("could not remove our nftables rules: %s", refused)
            else:
                log.info("removed this network's nftables rules (iptables mode)")

