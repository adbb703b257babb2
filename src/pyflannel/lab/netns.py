"""Thin helpers over `ip netns` for the lab: create, exec, kill what runs inside, delete.

Only ever touches namespaces whose names it is given; the root namespace gets no address,
route or device from here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence


class LabError(Exception):
    """A lab step failed; the message carries the command and its output."""


def sh(cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                             env=None if env is None else dict(os.environ, **env))
    except subprocess.TimeoutExpired as err:
        raise LabError(f"timed out after {timeout:g}s: {' '.join(cmd)}") from err
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
    return res


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def ns_list() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_add(ns: str) -> None:
    sh(["ip", "netns", "add", ns])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])


def ns_pids(ns: str) -> list[int]:
    out = sh(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def ns_kill_all(ns: str, grace: float = 3.0) -> None:
    """SIGTERM everything running in ``ns``, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ns_pids(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as gone
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
    return False


def ns_delete(ns: str) -> None:
    ns_kill_all(ns)
    sh(["ip", "netns", "delete", ns], check=False)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int | None = None) -> None:
    """A veth pair with one end in each namespace (created inside ``ns_a``)."""
    sh(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])
    for ns, name in ((ns_a, name_a), (ns_b, name_b)):
        cmd = ["ip", "-n", ns, "link", "set", name, "up"]
        if mtu:
            cmd += ["mtu", str(mtu)]
        sh(cmd)


def sysctl(ns: str, key: str, value: str) -> None:
    sh(in_ns(ns, "sysctl", "-qw", f"{key}={value}"))
