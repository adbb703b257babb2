"""Running iptables, ip6tables and nft, and reading back what they hold: the kernel I/O of the
traffic rules (kernel/traffic.py decides what to apply; core/masq.py and core/nftrules.py render it).
A missing binary is the host's fault (``LocalConfigError`` naming the package), a failure the
kernel's (``KernelError`` with the command, its stderr and the input it refused)."""

from __future__ import annotations

import subprocess

from ..core.errors import LocalConfigError
from ..core.masq import has_random_fully, parse_iptables_version
from .netlink import KernelError

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


class Iptables:
    """iptables (``binary``: iptables or ip6tables) of this host: its version, asked once, table
    dumps (``-S``) and ``-restore --noflush`` of a payload, waiting for the xtables lock where the
    version can."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._version: tuple[int, int, int] | None = None

    def version(self) -> tuple[int, int, int] | None:
        if self._version is None:
            self._version = parse_iptables_version(_run(["iptables", "--version"]).stdout)
        return self._version

    def dump(self, table: str, binary: str = "") -> str:
        wait = ["-w"] if (self.version() or (0, 0, 0)) >= (1, 4, 20) else []
        return _run([binary or self.binary, *wait, "-t", table, "-S"]).stdout

    def restore(self, payload: str, binary: str = "") -> None:
        wait = ["--wait"] if has_random_fully(self.version()) else []
        _run([binary or f"{self.binary}-restore", "--noflush", *wait], payload)


def nft_apply(script: str) -> None:
    """One ``nft -f -`` transaction; KernelError when nft refuses it."""
    _run(["nft", "-f", "-"], script)


def nft_try(script: str) -> str | None:
    """One ``nft -f -`` transaction; None when applied, else nft's complaint."""
    res = _run(["nft", "-f", "-"], script, check=False)
    return res.stderr.strip() if res.returncode else None


def nft_accepts(script: str) -> bool:
    """Whether ``nft --check`` accepts ``script`` (nothing is applied)."""
    return _run(["nft", "--check", "-f", "-"], script, check=False).returncode == 0


def nft_list(family: str, table: str) -> str:
    """``nft -a list table``; "" when there is no such table."""
    res = _run(["nft", "-a", "list", "table", family, table], check=False)
    return res.stdout if res.returncode == 0 else ""


def nft_tables() -> str | None:
    """``nft list tables``; None when nft cannot (no nf_tables)."""
    res = _run(["nft", "list", "tables"], check=False)
    return None if res.returncode else res.stdout
