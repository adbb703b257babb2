"""Issue 13.3: the health port cannot kill flanneld.

A flanneld limited to 1024 open files (systemd's default soft limit; here soft = hard, so it
cannot raise it) gets 1100 idle connections to its health port, each opened again as soon as it is
closed, from another lab host. It keeps running, forwarding (ping between the containers) and
serving /healthz, and its log stays small. Then the file limit is pulled below what it already
has open, so that every new descriptor fails with EMFILE (the iptables check, the health server's
accept, the kernel check): no task dies, and each failure is logged once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import in_ns, sh

from .helpers import log_text, ping_counts, wait_for

PORT = 8081
FLOOD_CONNECTIONS = 1100

# Keeps N connections open (idle: nothing is sent) to HOST:PORT for HOLD seconds, opened at 400 a
# second (all of them within a server's idle timeout of a few seconds); one closed by the server
# is opened again at once. Prints how many connections were established in all.
FLOOD = r"""
import asyncio, resource, sys, time
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, n + 256))
opened = 0

async def one(i, end):
    global opened
    await asyncio.sleep(i / 400)  # 400 new connections a second: no SYN is dropped on the way in
    while time.monotonic() < end:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), max(0.01, end - time.monotonic()))
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
            continue
        opened += 1
        try:
            await asyncio.wait_for(r.read(), max(0.01, end - time.monotonic()))
        except (OSError, asyncio.TimeoutError):
            pass
        w.transport.abort()

async def main():
    end = time.monotonic() + hold
    await asyncio.gather(*(one(i, end) for i in range(n)))
    print(opened)

asyncio.run(main())
"""

FETCH = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def healthz(host: Host, timeout: float = 5.0) -> tuple[int, str]:
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", FETCH, f"http://127.0.0.1:{PORT}/healthz", str(timeout)),
                         capture_output=True, text=True, timeout=timeout + 20).stdout
    code, _, body = out.partition("\n")
    return int(code or 0), body.strip()


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    # the health server on every address, as flannel's default; the iptables check every second
    with make_lab("pfhf", 2, extra=(f"-healthz-port={PORT}", "-iptables-resync=1")) as lab:
        yield lab


def pid_of(lab: Lab, host: Host) -> int:
    pid = lab.flanneld_pid(host)
    assert pid is not None, f"flanneld on {host.ns} is not running; its log ends with:\n{lab.log_tail(host)}"
    return pid


def set_nofile(pid: int, soft: int, hard: int = 1024, *, check: bool = True) -> None:
    """prlimit on flanneld (a hard limit, once lowered, cannot be raised again here: no CAP_SYS_RESOURCE
    over another process in a container)."""
    sh(["prlimit", f"--pid={pid}", f"--nofile={soft}:{hard}"], check=check)


def pinger(lab: Lab, src: Host, dst: Host, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(in_ns(src.container_ns, "ping", "-n", "-q", "-i", "0.05", "-c", str(int(seconds / 0.05)),
                                  "-W", "1", dst.container_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def ping_result(proc: subprocess.Popen[str]) -> tuple[int, int]:
    try:
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return ping_counts(out)


class FdPeak:
    """The most descriptors ``pid`` holds at once, sampled every 50 ms in a thread until ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.most, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            try:
                self.most = max(self.most, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                return

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.most


def alive_and(lab: Lab, host: Host, pid: int, cond):
    """``cond()``, but fail at once (with the log) if flanneld is gone."""
    def check():
        assert lab.flanneld_pid(host) == pid, f"flanneld died; its log ends with:\n{lab.log_tail(host)}"
        return cond()
    return check


def test_1100_idle_connections_at_1024_files(lab: Lab) -> None:
    h1, h2 = lab.hosts
    pid = pid_of(lab, h1)
    set_nofile(pid, 1024)
    assert healthz(h1) == (200, "flanneld is running")
    log_before = os.path.getsize(lab.log_file(h1))
    ping = pinger(lab, h1, h2, 14)
    peak = FdPeak(pid)
    flood = subprocess.run(in_ns(h2.ns, sys.executable, "-c", FLOOD, h1.ip, str(PORT), str(FLOOD_CONNECTIONS), "12"),
                           capture_output=True, text=True, timeout=90)
    most = peak.stop()
    assert flood.returncode == 0, flood.stderr
    assert int(flood.stdout) > 0, "the flood reached the health port"
    assert most < 200, f"flanneld had {most} descriptors open at once"
    sent, received = ping_result(ping)
    assert lab.flanneld_pid(h1) == pid, f"flanneld died; its log ends with:\n{lab.log_tail(h1)}"
    assert received == sent, f"{sent - received} of {sent} pings lost during the flood"
    assert healthz(h1) == (200, "flanneld is running")
    assert lab.ping(h1, h2, 2)[0] and lab.ping(h2, h1, 2)[0]
    grew = os.path.getsize(lab.log_file(h1)) - log_before
    assert grew < 4096, f"the log grew by {grew} bytes during the flood:\n{lab.log_tail(h1)}"
    # the idle connections were timed out and closed: flanneld holds few descriptors again
    wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) < 100, timeout=10, what="the connections closed")


def test_emfile_takes_no_task_down(lab: Lab) -> None:
    """No descriptor can be opened for a while: every task survives, each failure is logged once."""
    h1, h2 = lab.hosts
    pid = pid_of(lab, h1)
    set_nofile(pid, 1024)
    log_before = len(log_text(lab, h1))
    set_nofile(pid, len(os.listdir(f"/proc/{pid}/fd")))  # every new descriptor now fails
    try:
        # a health check arrives meanwhile: it waits in the listen backlog, answered afterwards
        late = subprocess.Popen(in_ns(h1.ns, sys.executable, "-c", FETCH, f"http://127.0.0.1:{PORT}/healthz", "20"),
                                stdout=subprocess.PIPE, text=True)
        wait_for(alive_and(lab, h1, pid, lambda: "cannot check the iptables/nftables rules"
                           in log_text(lab, h1)[log_before:]), timeout=10, what="the iptables check to fail on EMFILE")
        time.sleep(3)  # several more checks fail meanwhile, and more accepts
        assert lab.flanneld_pid(h1) == pid, f"flanneld died; its log ends with:\n{lab.log_tail(h1)}"
    finally:
        set_nofile(pid, 1024, check=False)  # (flanneld may be gone: the assertion above says so)
    out = late.communicate(timeout=30)[0]
    assert out.startswith("200\n"), f"{out}\nflanneld's log since:\n{log_text(lab, h1)[log_before:]}"
    wait_for(lambda: "iptables/nftables rules can be checked again" in log_text(lab, h1)[log_before:],
             timeout=10, what="the iptables check to work again")
    assert lab.flanneld_pid(h1) == pid
    assert lab.ping(h1, h2, 2)[0] and lab.ping(h2, h1, 2)[0]
    new = log_text(lab, h1)[log_before:]
    assert new.count("cannot check the iptables/nftables rules") == 1, new
    assert "Traceback" not in new, new
    assert len(new) < 4096, new
