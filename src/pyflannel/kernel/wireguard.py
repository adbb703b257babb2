"""WireGuard on this host: the private key file, the device (the kernel's, else wireguard-go) and
the converger target that configures it with ``wg`` (wireguard-tools), which speaks the kernel's
netlink and wireguard-go's UAPI socket (/var/run/wireguard/<dev>.sock) alike.

wireguard-go runs in its own session: it outlives flanneld, so a restart keeps the device, its
key and its peers (under systemd this needs ``KillMode=process``; see README). The key is never
logged; a key file with loose permissions is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time

from ..core.errors import KernelError, LocalConfigError
from ..core.plan import Plan, WgPlan
from ..core.wgconf import DeviceState, new_private_key, parse_dump, set_args, valid_key
from . import netlink

log = logging.getLogger(__name__)

WG_TOOLS = "install Debian's wireguard-tools (apt-get install wireguard-tools)"


def _wg(*args: str, stdin: str | None = None, timeout: float = 10.0) -> str:
    if shutil.which("wg") is None:
        raise LocalConfigError(f"wireguard backend: the `wg` command is missing: {WG_TOOLS}")
    try:
        res = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise KernelError(f"`wg {args[0]}` did not answer within {timeout:g}s") from err
    if res.returncode != 0:
        # argv may name a file holding a key, never a key itself: safe to show
        raise KernelError(f"`wg {' '.join(args[:2])}` failed: {res.stderr.strip() or res.returncode}")
    return res.stdout


def wg_show_dump(dev: str) -> str:
    """``wg show <dev> dump`` (its first line holds the private key: parse it, never print it)."""
    return _wg("show", dev, "dump")


def load_key(path: str) -> str:
    """Our public key from the private key file at ``path``, made (0400, its folder 0755) when
    missing. LocalConfigError for a file we cannot read, a loose mode or content not a key."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _create_key(path)
    except OSError as err:
        raise LocalConfigError(f"wireguard key file {path}: {err.strerror}; fix it or set WIREGUARD_KEY_FILE") from err
    if not stat.S_ISREG(st.st_mode):
        raise LocalConfigError(f"cannot read the wireguard key file {path}: it is not a regular file; remove it "
                               "or set WIREGUARD_KEY_FILE")
    if st.st_mode & 0o077:
        raise LocalConfigError(f"wireguard key file {path} has loose permissions ({stat.filemode(st.st_mode)}): "
                               f"others could read the private key; run `chmod 400 {path}`")
    try:
        with open(path) as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not text"
        raise LocalConfigError(f"cannot read the wireguard key file {path}: {why}; fix it or remove it "
                               "(a new key is made then, and the peers learn it from our lease)") from err
    if not valid_key(key):
        raise LocalConfigError(f"wireguard key file {path} holds no WireGuard private key (32 bytes, base64): "
                               "remove it (a new key is made then) or put a `wg genkey` output there")
    return _wg("pubkey", stdin=key).strip()


def _create_key(path: str) -> str:
    key = new_private_key()
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".wgkey-", dir=folder)
        try:
            os.write(fd, key.encode())  # as Go writes it: base64, no newline
            os.fchmod(fd, 0o400)
            os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise LocalConfigError(f"cannot write the wireguard key file {path}: {err.strerror}; "
                               "set WIREGUARD_KEY_FILE to a writable place") from err
    log.info("wireguard: made a new private key in %s", path)
    return _wg("pubkey", stdin=key).strip()


def _answers(name: str) -> bool:
    try:
        _wg("show", name, "listen-port", timeout=3.0)
    except KernelError:
        return False
    return True


def ensure_device(name: str, mtu: int) -> str:
    """The WireGuard device ``name``: kept when it already answers ``wg`` (our previous run's, with
    its peers), else the kernel's (link kind ``wireguard``), else wireguard-go. Its link kind."""
    kind = _link_kind(name)
    if kind is not None:
        if kind in ("wireguard", "tun") and _answers(name):
            log.info("wireguard: keeping %s (%s) and its peers from the previous run", name,
                     "kernel" if kind == "wireguard" else "wireguard-go")
            return kind
        raise LocalConfigError(f"a device named {name} exists but is not a WireGuard device flanneld can "
                               f"configure (kind {kind or 'unknown'}): remove it (ip link del {name})")
    try:
        with netlink.session(f"create wireguard device {name}") as ipr:
            ipr.link("add", ifname=name, kind="wireguard", mtu=mtu)
        log.info("wireguard: using the kernel's WireGuard for %s", name)
        return "wireguard"
    except KernelError as err:
        log.info("wireguard: the kernel has no WireGuard (%s); starting wireguard-go", err)
    _start_wireguard_go(name)
    return "tun"


def _link_kind(name: str) -> str | None:
    from .reconciler import link_kind_attrs

    with netlink.session(f"look up device {name}") as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        return link_kind_attrs(ipr.get_links(found[0])[0])[0]


def _start_wireguard_go(name: str, wait: float = 10.0) -> None:
    binary = shutil.which("wireguard-go")
    if binary is None:
        raise LocalConfigError("wireguard backend: this kernel has no WireGuard and wireguard-go is not installed: "
                               "install Debian's wireguard-go (apt-get install wireguard-go)")
    # its own session: it must outlive flanneld (a restart keeps the device and its peers)
    # its output to a file, never a pipe: the daemon it forks must not hold our pipe open
    with tempfile.TemporaryFile() as out:
        try:
            res = subprocess.run([binary, name], stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=wait,
                                 check=False, start_new_session=True)
        except subprocess.TimeoutExpired as err:
            raise LocalConfigError(f"wireguard-go {name} did not start within {wait:g}s") from err
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    if res.returncode != 0:
        raise LocalConfigError(f"wireguard-go {name} failed ({res.returncode}): {text[-300:]}")
    deadline = time.monotonic() + wait
    while not _answers(name):
        if time.monotonic() > deadline:
            raise LocalConfigError(f"wireguard-go started but {name} does not answer `wg show` within {wait:g}s")
        time.sleep(0.05)
    log.info("wireguard: using wireguard-go for %s (it outlives flanneld)", name)


class WgTarget:
    """The WireGuard device as a converger target: read ``wg show <dev> dump``, apply the
    difference in one ``wg set``. Peers are keyed by public key, so a lease that went away
    removes exactly its own peer."""

    inline = False
    full_check_s = 10.0

    def __init__(self, dev: str, public_key: str) -> None:
        self.dev = dev
        self.public_key = public_key
        self._sent: dict[str, str] = {}  # public key -> the endpoint we last set
        self._last: DeviceState | None = None
        self._subnets: dict[str, str] = {}  # public key -> subnet, for the metrics

    def read(self) -> DeviceState:
        try:
            return parse_dump(wg_show_dump(self.dev))
        except ValueError as err:
            raise KernelError(f"cannot read {self.dev}: {err}") from err

    def apply(self, plan: Plan, full: bool) -> int:
        assert isinstance(plan, WgPlan)
        try:
            actual = self.read()
        except KernelError:
            if _link_kind(self.dev) is not None:
                raise
            # the device is gone (wireguard-go killed, or someone deleted it): make it again, with
            # every peer; the kernel target then gives it its address and route
            log.warning("%s is gone: creating it again with all %d peers", self.dev, len(plan.peers))
            ensure_device(self.dev, plan.mtu)
            self._sent.clear()
            actual = self.read()
        with _psk_file(plan.psk) as psk_file:
            args = set_args(plan, actual, self.public_key, psk_file, self._sent)
            if args:
                _wg("set", plan.dev, *args)
        for peer in plan.peers:
            self._sent[peer.public_key] = peer.endpoint
        wanted = {p.public_key for p in plan.peers}
        if plan.prune:
            self._sent = {k: v for k, v in self._sent.items() if k in wanted}
        self._subnets = {p.public_key: ",".join(p.allowed_ips) for p in plan.peers}
        self._last = self.read() if args else actual
        return args.count("peer") + ("listen-port" in args) + ("private-key" in args)

    def peer_stats(self) -> list[dict[str, object]]:
        """Each peer as last read: public key, subnet, endpoint, last handshake (unix time, 0 =
        never), bytes received and sent."""
        last = self._last
        if last is None:
            return []
        return [{"public_key": p.public_key, "subnet": self._subnets.get(p.public_key, ""),
                 "endpoint": p.endpoint, "latest_handshake": p.latest_handshake, "rx_bytes": p.rx,
                 "tx_bytes": p.tx} for p in sorted(last.peers.values(), key=lambda p: p.public_key)]


@contextlib.contextmanager
def _psk_file(psk: str):  # type: ignore[no-untyped-def]
    """The pre-shared key in a private file for ``wg set … preshared-key FILE`` (never on argv)."""
    if not psk:
        yield "/dev/null"
        return
    fd, path = tempfile.mkstemp(prefix="pyflannel-psk-", dir="/run" if os.path.isdir("/run") else None)
    try:
        os.write(fd, psk.encode())
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
