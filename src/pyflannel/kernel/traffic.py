"""Masquerade and forward rules in the kernel: flannel's trafficmngr (§0 steps 14-17, §6).

Why so shaped: the rule text comes from ``core.masq`` (pure, golden-tested); this module only
runs the binaries. Setup writes every chain we own with one ``iptables-restore --noflush``
(or one ``nft -f -`` transaction), then remembers what ``iptables -S`` / ``nft list`` shows for
those chains. ``ensure`` (every ``--iptables-resync`` seconds) dumps again and re-applies a chain
as a whole when its lines differ from that snapshot, so someone flushing FLANNEL-POSTRTG gets it
back in order. Only our chains and the jumps to them are ever touched.

Synchronous by design: the daemon calls it through ``asyncio.to_thread``; a lock keeps a resync
from interleaving with a setup.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import threading

from ..core.errors import LocalConfigError
from ..core.masq import (
    FWD_CHAIN,
    MASQ_CHAIN,
    NFT_FORWARD,
    NFT_POSTRTG,
    NFT_TABLE,
    OwnedChain,
    forward_chain,
    has_random_fully,
    in_sync,
    masq_chain,
    nft_cleanup,
    nft_random_fully_probe,
    owned_lines,
    parse_iptables_version,
    render_cleanup,
    render_nft,
    render_table,
    stale_masq_chain,
)
from .netlink import KernelError

log = logging.getLogger(__name__)

_INSTALL = {"iptables": "iptables", "iptables-restore": "iptables", "ip6tables": "iptables",
            "ip6tables-restore": "iptables", "nft": "nftables"}
_TIMEOUT = 60.0


def _run(cmd: list[str], stdin: str | None = None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one binary; a missing binary is the host's fault, a failure the kernel's."""
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError as err:
        raise LocalConfigError(f"{cmd[0]} not found: apt-get install {_INSTALL.get(cmd[0], cmd[0])}") from err
    except subprocess.TimeoutExpired as err:
        raise KernelError(f"`{' '.join(cmd)}` timed out after {_TIMEOUT:g}s; is another program holding "
                          "the xtables lock (/run/xtables.lock)?") from err
    if check and res.returncode != 0:
        err_text = (res.stderr or res.stdout).strip()
        msg = f"`{' '.join(cmd)}` failed (exit {res.returncode}): {err_text}"
        if "ermission denied" in err_text or "not permitted" in err_text:
            msg += "; run flanneld as root (it needs CAP_NET_ADMIN)"
        elif stdin is not None:
            msg += "\ninput was:\n" + stdin
        raise KernelError(msg)
    return res


class TrafficManager:
    """flannel's IPTablesManager / NFTablesManager for IPv4, behind one object."""

    def __init__(self, *, nftables: bool, ip_masq: bool, forward_rules: bool, random_fully: bool = True) -> None:
        self.nftables = nftables
        self.ip_masq = ip_masq
        self.forward_rules = forward_rules
        self.random_fully_wanted = random_fully  # False with --ip-masq-fully-random-disable
        self.random_fully = False  # what is in effect, after asking iptables / the kernel
        self.repairs = 0
        self._network: ipaddress.IPv4Network | None = None
        self._subnet: ipaddress.IPv4Network | None = None
        self._chains: list[OwnedChain] = []
        self._baseline: dict[str, list[str]] = {}
        self._nft_baseline: str | None = None
        self._version: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    # ---- the interface the daemon uses ----------------------------------------------------------
    def setup(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
              prev_network: ipaddress.IPv4Network | None, prev_subnet: ipaddress.IPv4Network | None) -> None:
        """Startup: remove the other mode's rules, recycle stale rules, apply ours."""
        with self._lock:
            self._network, self._subnet = network, subnet
            if self.nftables:
                self._cleanup_iptables()
                self._setup_nft()
            else:
                self._cleanup_nft()
                self._setup_iptables(prev_network, prev_subnet)

    def ensure(self) -> bool:
        """Re-apply whatever differs from what setup left; True when something had to be repaired."""
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
            where = f"nftables table ip {NFT_TABLE}"
        else:
            if self.ip_masq:
                parts.append(f"masquerade {self._network} from {self._subnet} in nat/{MASQ_CHAIN} ({rf})")
            if self.forward_rules:
                parts.append(f"forward {self._network} in filter/{FWD_CHAIN}")
            where = "iptables"
        what = ", ".join(parts) or "no rules (--ip-masq and --iptables-forward-rules are off)"
        return f"{where}: {what}; repairs {self.repairs}"

    # ---- iptables mode --------------------------------------------------------------------------
    def _iptables_version(self) -> tuple[int, int, int] | None:
        if self._version is None:
            self._version = parse_iptables_version(_run(["iptables", "--version"]).stdout)
        return self._version

    def _dump(self, table: str, binary: str = "iptables") -> str:
        wait = ["-w"] if (self._iptables_version() or (0, 0, 0)) >= (1, 4, 20) else []
        return _run([binary, *wait, "-t", table, "-S"]).stdout

    def _restore(self, payload: str, binary: str = "iptables-restore") -> None:
        wait = ["--wait"] if has_random_fully(self._iptables_version()) else []
        _run([binary, "--noflush", *wait], payload)

    def _setup_iptables(self, prev_network: ipaddress.IPv4Network | None,
                        prev_subnet: ipaddress.IPv4Network | None) -> None:
        assert self._network is not None and self._subnet is not None
        self.random_fully = self.random_fully_wanted and has_random_fully(self._iptables_version())
        if self.random_fully_wanted and not self.random_fully:
            log.warning("iptables %s has no MASQUERADE --random-fully (needs 1.6.2); masquerading without it",
                        ".".join(map(str, self._version or ())) or "(unknown version)")
        work: list[tuple[OwnedChain, OwnedChain | None]] = []
        if self.ip_masq:
            stale = stale_masq_chain(self._network, self._subnet, prev_network, prev_subnet, self.random_fully)
            if stale is not None:
                log.info("network or subnet (%s, %s) differs from the previous one (%s, %s): recycling old "
                         "iptables rules", self._network, self._subnet, prev_network, prev_subnet)
            work.append((masq_chain(self._network, self._subnet, self.random_fully), stale))
        if self.forward_rules:
            work.append((forward_chain(self._network), None))
        self._chains = [chain for chain, _ in work]
        if not work:
            return
        dumps = {t: self._dump(t) for t in dict.fromkeys(c.table for c in self._chains)}
        self._restore("".join(render_table(chain, dumps[chain.table], stale) for chain, stale in work))
        dumps = {t: self._dump(t) for t in dumps}
        self._baseline = {c.chain: owned_lines(dumps[c.table], c) for c in self._chains}
        for chain in self._chains:
            if not in_sync(dumps[chain.table], chain):
                log.warning("iptables -S shows %s differently from what was applied; resync compares with "
                            "what it shows:\n%s", chain.chain, "\n".join(self._baseline[chain.chain]))
        log.info("iptables rules applied: %s", ", ".join(f"{c.table}/{c.chain}" for c in self._chains))

    def _ensure_iptables(self) -> bool:
        if not self._chains:
            return False
        dumps = {t: self._dump(t) for t in dict.fromkeys(c.table for c in self._chains)}
        broken = [c for c in self._chains if owned_lines(dumps[c.table], c) != self._baseline.get(c.chain)]
        if not broken:
            return False
        log.warning("iptables chain(s) %s changed or missing; re-applying", ", ".join(c.chain for c in broken))
        self._restore("".join(render_table(c, dumps[c.table]) for c in broken))
        for c in broken:
            self._baseline[c.chain] = owned_lines(self._dump(c.table), c)
        return True

    def _cleanup_iptables(self) -> None:
        """nftables mode: remove FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) and the jumps to
        them, for IPv4 and IPv6. Failures are only logged, as in flannel."""
        for binary in ("iptables", "ip6tables"):
            if shutil.which(binary) is None:
                continue
            try:
                payload = render_cleanup("nat", [(MASQ_CHAIN, "POSTROUTING")], self._dump("nat", binary))
                payload += render_cleanup("filter", [(FWD_CHAIN, "FORWARD")], self._dump("filter", binary))
                if payload:
                    self._restore(payload, f"{binary}-restore")
                    log.info("removed flannel's %s chains (nftables mode)", binary)
            except (KernelError, LocalConfigError) as err:
                log.debug("could not clean up %s chains: %s", binary, err)

    # ---- nftables mode --------------------------------------------------------------------------
    def _setup_nft(self) -> None:
        assert self._network is not None and self._subnet is not None
        self.random_fully = False
        if self.ip_masq and self.random_fully_wanted:
            probe = _run(["nft", "--check", "-f", "-"], nft_random_fully_probe(), check=False)
            self.random_fully = probe.returncode == 0
            if not self.random_fully:
                log.warning("nftables: masquerade fully-random unsupported; masquerading without it")
        self._apply_nft()
        chains = [name for name, on in ((NFT_POSTRTG, self.ip_masq), (NFT_FORWARD, self.forward_rules)) if on]
        log.info("nftables rules applied: table ip %s chains %s", NFT_TABLE, ", ".join(chains) or "(none)")

    def _apply_nft(self) -> None:
        assert self._network is not None and self._subnet is not None
        _run(["nft", "-f", "-"], render_nft(self._network, self._subnet, masq=self.ip_masq,
                                            forward=self.forward_rules, random_fully=self.random_fully))
        self._nft_baseline = self._nft_list()

    def _nft_list(self) -> str | None:
        res = _run(["nft", "list", "table", "ip", NFT_TABLE], check=False)
        return res.stdout if res.returncode == 0 else None

    def _ensure_nft(self) -> bool:
        if self._network is None or self._nft_list() == self._nft_baseline:
            return False
        log.warning("nftables table ip %s changed or missing; re-applying", NFT_TABLE)
        self._apply_nft()
        return True

    def _cleanup_nft(self) -> None:
        """iptables mode: delete flannel's nftables tables, if nft and nf_tables are there."""
        if shutil.which("nft") is None:
            return
        res = _run(["nft", "list", "tables"], check=False)
        script = nft_cleanup(res.stdout) if res.returncode == 0 else ""
        if script:
            res = _run(["nft", "-f", "-"], script, check=False)
            if res.returncode:
                log.debug("could not delete flannel's nftables tables: %s", res.stderr.strip())
            else:
                log.info("deleted flannel's nftables tables (iptables mode)")
