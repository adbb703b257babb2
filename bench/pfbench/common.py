"""Shared pieces: figures (median, min, max of runs), /proc readings, the lease writer, cleanup.

Cleanup is the one thing that must never be skipped: every namespace the suite creates is named
``pfb-…``; ``teardown`` stops what runs in them (SIGTERM to all at once, SIGKILL after a grace
period) and deletes them, and ``guarded`` makes sure it runs on a normal end, an error, Ctrl-C,
SIGTERM and SIGHUP alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyflannel.lab.cluster import STATE_ROOT, Lab
from pyflannel.lab.netns import in_ns, ns_list, ns_pids, sh

NS_PREFIX = "pfb-"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: treated like Ctrl-C (clean up, then exit)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- figures --------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Figure:
    """One figure measured in several runs."""

    values: list[float] = field(default_factory=list)
    capped: bool = False  # at least one run hit its time cap: the value is a lower bound

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    def summary(self) -> dict[str, Any]:
        if not self.values:
            return {"median": None, "min": None, "max": None, "runs": 0}
        return {"median": _round(self.median), "min": _round(min(self.values)), "max": _round(max(self.values)),
                "runs": len(self.values)}


def _round(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x


# ---- /proc ----------------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    """utime + stime of the process (all its threads) and of any children it runs (a pump worker
    process, say), in seconds; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK + sum(cpu_seconds(c) for c in _children(pid))


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(c) for c in f.read().split())
    return out


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy all CPUs are right now (before the suite starts anything): others' load."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    (t0, i0), _ = sample(), time.sleep(seconds)
    t1, i1 = sample()
    return round(100.0 * (1 - (i1 - i0) / max(t1 - t0, 1)), 1)


def rss_mb(pid: int | None, key: str = "VmRSS") -> float:
    """Resident set size (``VmHWM`` for the peak) in MB (10^6 bytes)."""
    with contextlib.suppress(OSError, TypeError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    return math.nan


# ---- the lease writer -----------------------------------------------------------------------------
class LeaseWriter:
    """``leasewriter.py`` running in the lab's etcd namespace; one JSON command, one JSON reply."""

    def __init__(self, lab: Lab) -> None:
        from pyflannel.lab.cluster import PREFIX

        cmd = in_ns(lab.etcd_ns, sys.executable, os.path.join(HERE, "leasewriter.py"), lab.etcd_endpoint, PREFIX)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.read(30.0)

    @property
    def stdout(self) -> Any:
        return self.proc.stdout

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise BenchError(f"the lease writer gave no answer within {timeout:g}s (exit {self.proc.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"the lease writer failed: {reply.get('error') or reply}")
        return reply

    def call(self, timeout: float = 120.0, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.read(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- Go flannel, the anchor of the comparison (issue 14) ------------------------------------------------
def ensure_go_flannel(notes: list[str]) -> bool:
    """Go flannel's flanneld as ``make setup`` builds it (scripts/goflannel.sh into .cache/goflannel);
    built the same way when missing (a few minutes the first time). False, with a note naming what
    is missing and how to install it, when it cannot be had: the suite then runs without Go's paths."""
    from pyflannel.lab import goflannel

    if goflannel.binary() is None:
        script = os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts", "goflannel.sh")
        log(f"Go flannel {goflannel.VERSION} is not built yet: running {script} (as make setup does)")
        subprocess.run([script], check=False, env={k: v for k, v in os.environ.items()
                                                    if k != goflannel.REQUIRE_ENV})
    if goflannel.binary() is None:
        notes.append(f"no Go flannel figures: {goflannel.missing()}")
        log(notes[-1])
        return False
    return True


# ---- cleanup --------------------------------------------------------------------------------------
def bench_namespaces() -> list[str]:
    return [ns for ns in ns_list() if ns.startswith(NS_PREFIX)]


def teardown(grace: float = 8.0) -> int:
    """Stop everything in every ``pfb-`` namespace and delete them all, with their state dirs.
    flanneld first, etcd and the underlay switch last; all processes of a stage signalled at once."""
    spaces = bench_namespaces()
    stages = ([n for n in spaces if not n.endswith(("-etcd", "-ul"))], [n for n in spaces if n.endswith("-etcd")],
              [n for n in spaces if n.endswith("-ul")])
    for stage in stages:
        pids = {p for ns in stage for p in ns_pids(ns)}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = {p for p in pids if _alive(p)}
                time.sleep(0.05)
            if not pids:
                break
    for ns in spaces:
        sh(["ip", "netns", "delete", ns], check=False)
    if os.path.isdir(STATE_ROOT):
        for name in os.listdir(STATE_ROOT):
            if name.startswith(NS_PREFIX):
                shutil.rmtree(os.path.join(STATE_ROOT, name), ignore_errors=True)
    return len(spaces)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Run the body with SIGTERM/SIGHUP turned into exceptions; always tear down at the end (with
    further Ctrl-C ignored, so that a second one cannot leave namespaces behind)."""
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        n = len(bench_namespaces())
        if n:
            log(f"cleaning up {n} namespaces")
        teardown()
        left = bench_namespaces()
        if left:
            log(f"WARNING: could not delete {left}; remove them with `ip netns delete NAME`")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s, h in old.items():
            signal.signal(s, h)
