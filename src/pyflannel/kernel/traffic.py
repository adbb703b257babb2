"""Masquerade and forward rules in the kernel: flannel's trafficmngr.

Why so shaped: the rule text and what to add or delete come from ``core.masq`` (pure,
golden-tested); this module only runs the binaries and coordinates with the other flanneld of this
host. flannel's chains (iptables) and tables (nftables) are shared by every flanneld on the host,
each for its own network: an instance adds, checks, restores and removes only its own rules (those
naming its network and subnet) and the rules every network shares, never another network's.

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
import fcntl
import ipaddress
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
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
    parse_iptables_version,
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
from .netlink import KernelError

log = logging.getLogger(__name__)

_INSTALL = {"iptables": "iptables", "iptables-restore": "iptables", "ip6tables": "iptables",
            "ip6tables-restore": "iptables", "nft": "nftables"}
_TIMEOUT = 60.0
STATE_DIR = "/run/pyflannel"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def network_key(network: Net) -> str:
    return "net-" + str(network).replace("/", "_")


def subnet_key(network: Net, subnet: Net) -> str:
    return f"{network_key(network)}-sub-{str(subnet).replace('/', '_')}"


class HostPeers:
    """The other pyflannel instances of this network namespace, as far as rules go: a lock file
    serialising rule edits, and claim files (a shared ``flock`` held for the life of the process)
    telling whether some live instance serves a network. Files live in
    ``<state_dir>/netns-<inode of the network namespace>``; when that cannot be created, edits are
    not serialised and no network counts as claimed (a warning says so)."""

    def __init__(self, state_dir: str = STATE_DIR) -> None:
        self.dir: str | None = None
        self._held: dict[str, int] = {}
        self._exclusive: dict[str, int] = {}
        try:
            ino = os.stat("/proc/thread-self/ns/net").st_ino  # this thread's namespace (tests use setns)
            path = os.path.join(state_dir, f"netns-{ino}")
            os.makedirs(path, mode=0o755, exist_ok=True)
            self.dir = path
        except OSError as err:
            log.warning("cannot use %s (%s): rule changes are not coordinated with other flanneld on this host",
                        state_dir, err)

    def _open(self, name: str, create: bool = True) -> int | None:
        assert self.dir is not None
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            return os.open(os.path.join(self.dir, name), flags, 0o644)
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the rules lock of this network namespace."""
        if self.dir is None:
            yield
            return
        fd = self._open("rules.lock")
        assert fd is not None
        try:
            deadline = time.monotonic() + _TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as err:
                    if time.monotonic() > deadline:
                        raise KernelError(f"another flanneld has held {self.dir}/rules.lock for "
                                          f"{_TIMEOUT:g}s") from err
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    def claim(self, keys: Iterable[str]) -> None:
        """Hold exactly ``keys`` from now on (a claim not in ``keys`` is released)."""
        if self.dir is None:
            return
        keys = set(keys)
        for key in set(self._held) - keys:
            os.close(self._held.pop(key))
        for key in keys - set(self._held):
            fd = self._open(key)
            assert fd is not None
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._held[key] = fd

    def hold(self, key: str, note: str) -> str | None:
        """Take ``key`` exclusively for the life of this process (e.g. a device only one network may
        use), writing ``note`` (e.g. our network) into it. None when we hold it now; else the note
        of the live process that does, to name it in an error."""
        if self.dir is None or key in self._exclusive:
            return None
        fd = self._open(key)
        assert fd is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        self._exclusive[key] = fd
        return None

    def release(self, key: str) -> None:
        """Give up a key taken with ``hold`` (the process exiting does the same)."""
        fd = self._exclusive.pop(key, None)
        if fd is not None:
            os.close(fd)

    def claimed(self, key: str) -> bool:
        """True when a live process holds ``key`` (never asked for one we hold ourselves)."""
        if self.dir is None:
            return False
        fd = self._open(key, create=False)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


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
        self._bin = "ip6tables" if family == 6 else "iptables"
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
        self._version: tuple[int, int, int] | None = None
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
            where = self._bin
        what = ", ".join(parts) or "no rules (--ip-masq and --iptables-forward-rules are off)"
        return f"{where}: {what}; repairs {self.repairs}"

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self._peers.locked() if self._peers is not None else contextlib.nullcontext()

    # ---- iptables mode --------------------------------------------------------------------------
    def _iptables_version(self) -> tuple[int, int, int] | None:
        if self._version is None:
            self._version = parse_iptables_version(_run(["iptables", "--version"]).stdout)
        return self._version

    def _dump(self, table: str, binary: str = "") -> str:
        wait = ["-w"] if (self._iptables_version() or (0, 0, 0)) >= (1, 4, 20) else []
        return _run([binary or self._bin, *wait, "-t", table, "-S"]).stdout

    def _restore(self, payload: str, binary: str = "") -> None:
        wait = ["--wait"] if has_random_fully(self._iptables_version()) else []
        _run([binary or f"{self._bin}-restore", "--noflush", *wait], payload)

    def _apply_iptables(self, work: list[tuple[OwnedChain, OwnedChain | None]], release: list[tuple[OwnedChain,
                        OwnedChain | None]], *, move_jump: bool) -> dict[str, str]:
        """Dump, render, restore; once more from fresh dumps if the restore was refused (someone
        changed a rule between our dump and our restore). The dumps after it."""
        tables = list(dict.fromkeys(c.table for c, _ in (*work, *release)))
        for attempt in (1, 2):
            dumps = {t: self._dump(t) for t in tables}
            payload = "".join(render_table(c, dumps[c.table], s, move_jump=move_jump) for c, s in work)
            payload += "".join(wrap_table(c.table, render_release(c, dumps[c.table], s)) for c, s in release)
            if not payload:
                return dumps
            try:
                self._restore(payload)
                break
            except KernelError as err:
                if attempt == 2:
                    raise
                log.debug("iptables-restore refused (%s); retrying from fresh dumps", err)
        return {t: self._dump(t) for t in tables}

    def _setup_iptables(self, stale: Stale) -> None:
        assert self._network is not None and self._subnet is not None
        self.random_fully = self.random_fully_wanted and has_random_fully(self._iptables_version())
        if self.random_fully_wanted and not self.random_fully:
            log.warning("iptables %s has no MASQUERADE --random-fully (needs 1.6.2); masquerading without it",
                        ".".join(map(str, self._version or ())) or "(unknown version)")
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
            log.info("%s rules applied: %s", self._bin, ", ".join(f"{c.table}/{c.chain}" for c in self._chains))

    def _ensure_iptables(self) -> bool:
        if not self._chains:
            return False
        dumps = {t: self._dump(t) for t in dict.fromkeys(c.table for c in self._chains)}
        broken = [c for c in self._chains if not in_sync(dumps[c.table], c)]
        if not broken:
            return False
        log.warning("our rules in %s chain(s) %s changed or missing; re-applying", self._bin,
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
                nat, filt = self._dump("nat", binary), self._dump("filter", binary)
                payload = wrap_table("nat", render_release(masq, nat, stale.masq_chain()))
                payload += wrap_table("filter", render_release(fwd, filt, stale.forward_chain()))
                if payload:
                    self._restore(payload, f"{binary}-restore")
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
            probe = _run(["nft", "--check", "-f", "-"], nft_random_fully_probe(), check=False)
            self.random_fully = probe.returncode == 0
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
                _run(["nft", "-f", "-"], script)
                return
            except KernelError as err:
                if attempt == 2:
                    raise
                log.debug("nft refused (%s); retrying from a fresh listing", err)

    def _nft_list(self) -> str:
        return self._nft_list_of(self._nft.family, self._nft.table)

    @staticmethod
    def _nft_list_of(family: str, table: str) -> str:
        res = _run(["nft", "-a", "list", "table", family, table], check=False)
        return res.stdout if res.returncode == 0 else ""

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
        res = _run(["nft", "list", "tables"], check=False)
        if res.returncode:
            return
        mine = [*nft_parts(self._network, self._subnet, masq=True, forward=True, random_fully=True),
                *stale.nft_parts()]
        script = render_nft_release(self._nft_list(), res.stdout, mine, self.family)
        if self.family == 4:
            v6 = nft_family(6)
            script += render_nft_release(self._nft_list_of(v6.family, v6.table), res.stdout, [], 6)
        if script:
            res = _run(["nft", "-f", "-"], script, check=False)
            if res.returncode:
                log.debug("could not remove our nftables rules: %s", res.stderr.strip())
            else:
                log.info("removed this network's nftables rules (iptables mode)")

