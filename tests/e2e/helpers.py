"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from pyflannel.lab.cluster import PREFIX, Host, Lab
from pyflannel.lab.netns import in_ns, sh


def wait_for(cond, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def returns_within(fn, timeout: float, what: str):
    """``fn()``'s result, failing the test if it has not returned by the deadline (``fn`` runs in a
    daemon thread, so a hung call cannot hang the suite)."""
    result: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:  # re-raised in the test's thread
            error.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: not thread.is_alive(), timeout=timeout, interval=0.01, what=what)
    if error:
        raise error[0]
    return result[0]


def log_text(lab: Lab, host: Host) -> str:
    with open(lab.log_file(host)) as f:
        return f.read()


def subnet_of(host: Host) -> str:
    """FLANNEL_SUBNET 10.0.53.1/24 -> 10.0.53.0/24"""
    return host.subnet.rsplit(".", 1)[0] + ".0/" + host.subnet.split("/")[1]


def lease_key(host: Host) -> str:
    return f"{PREFIX}/subnets/{subnet_of(host).replace('/', '-')}"


def wireguard_go_pids(host: Host) -> list[int]:
    """The wireguard-go processes in ``host``'s network namespace."""
    out = []
    for pid in sh(["ip", "netns", "pids", host.ns]).stdout.split():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "wireguard-go":
                    out.append(int(pid))
        except OSError:
            pass
    return out


def ip(host_ns: str, *args: str) -> str:
    return sh(["ip", "-n", host_ns, *args]).stdout


def all_pairs_ping(lab: Lab) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping(a, b, 1)[0]]


_SERVER = """
import hashlib, socket, sys
srv = socket.create_server(("0.0.0.0", 5201))
print("ready", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

_CLIENT = """
import random, socket, sys
data = random.Random(int(sys.argv[2])).randbytes(int(sys.argv[3]))
with socket.create_connection((sys.argv[1], 5201), timeout=20) as s:
    s.sendall(data)
"""


def transfer(a: Host, b: Host, size: int = 20 * 1024 * 1024, seed: int = 0, timeout: float = 120) -> None:
    """``size`` random bytes from a's container to b's over TCP; the receiver's byte count and
    sha256 must be the sender's."""
    srv = subprocess.Popen(in_ns(b.container_ns, sys.executable, "-c", _SERVER), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        subprocess.run(in_ns(a.container_ns, sys.executable, "-c", _CLIENT, b.container_ip, str(seed), str(size)),
                       check=True, timeout=timeout)
        n, digest = srv.stdout.readline().split()
    finally:
        srv.kill()
        srv.wait(timeout=10)
    assert int(n) == size
    assert digest == hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()


# Runs a TrafficManager inside a namespace, as one flanneld would: one JSON command per stdin line,
# one JSON answer per line.
_DRIVER = r"""
import ipaddress, json, sys
from pyflannel.kernel.traffic import TrafficManager
tm = TrafficManager(**json.loads(sys.argv[1]))
net = lambda s: ipaddress.ip_network(s) if s else None
for line in sys.stdin:
    cmd, *args = json.loads(line)
    try:
        out = tm.setup(*map(net, args)) if cmd == "setup" else getattr(tm, cmd)()
        print(json.dumps({"ok": out}), flush=True)
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
"""


class TrafficDriver:
    """A TrafficManager living in a process of its own inside ``ns``."""

    def __init__(self, ns: str, **opts: bool | int) -> None:
        self.proc = subprocess.Popen(in_ns(ns, sys.executable, "-c", _DRIVER, json.dumps(opts)), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def call(self, *cmd: str | None) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"driver died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer["ok"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ping_counts(out: str) -> tuple[int, int]:
    """(sent, received) from ping's summary line; fails the test, showing ``out``, without one."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def capture_one(ns: str, iface: str, bpf: str, action: Callable[[], object], timeout: float = 5.0) -> str:
    """Run ``action`` while tcpdump on ``iface`` in ``ns`` waits for one packet matching ``bpf``;
    that packet's line ("" if none came within ``timeout``)."""
    proc = subprocess.Popen(in_ns(ns, "tcpdump", "-n", "-l", "-i", iface, "-c", "1", bpf),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in proc.stderr.readline() and time.monotonic() < deadline:
            pass
        action()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return ""
        return out.strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ping_across_restart(lab: Lab, h1: Host, dst_ip: str, *, ipv6: bool = False, count: int = 500) -> str:
    """``ping -i 0.01`` from ``h1``'s container to ``dst_ip`` while ``h1``'s flanneld stops and starts
    again; ping's summary output once flanneld is ready again and the pings are done."""
    ping = subprocess.Popen(in_ns(h1.container_ns, "ping", *(["-6"] if ipv6 else []), "-n", "-q", "-i", "0.01",
                                  "-c", str(count), "-W", "1", dst_ip),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        lab.stop_flanneld(h1)
        lab.start_flanneld(h1)
        wait_for(lambda: log_text(lab, h1).count("flannel is ready") >= 2, what="flanneld back")
        return ping.communicate(timeout=60)[0]
    finally:
        if ping.poll() is None:
            ping.kill()
