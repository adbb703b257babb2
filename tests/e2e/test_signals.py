"""Issue 13.7: SIGUSR1, SIGUSR2, SIGALRM and SIGHUP change nothing (they ended flanneld, and on
udp took flannel0 with it); SIGUSR1 writes the daemon's state to the log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns

from .helpers import log_text, ping_counts, subnet_of, wait_for


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfsg", 2) as lab:  # udp: flannel0 lives only as long as the process
        yield lab


def test_signals_change_nothing_and_sigusr1_dumps_the_state(lab: Lab) -> None:
    h1, h2 = lab.hosts
    pid = lab.flanneld_pid(h1)
    assert pid is not None
    seen = len(log_text(lab, h1))
    ping = subprocess.Popen(in_ns(h1.container_ns, "ping", "-n", "-q", "-i", "0.01", "-c", "600", "-W", "1",
                                  h2.container_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGHUP) * 2:
            os.kill(pid, sig)
            time.sleep(0.3)
            assert lab.flanneld_pid(h1) == pid, f"{sig.name} ended flanneld; its log ends with:\n{lab.log_tail(h1)}"
        out = ping.communicate(timeout=60)[0]
    finally:
        if ping.poll() is None:
            ping.kill()
    sent, received = ping_counts(out)
    assert sent == received, f"pings lost while signalled: {out}"
    assert lab.flanneld_pid(h1) == pid
    assert "flannel0" in subprocess.run(["ip", "-n", h1.ns, "link"], capture_output=True, text=True).stdout
    new = log_text(lab, h1)[seen:]
    # the dump, once per SIGUSR1: our lease, the peer, the converger
    assert new.count(f"state: lease {subnet_of(h1)} public_ip={h1.ip} expires_in=") == 2, new
    assert new.count(f"state: peers in etcd=1 programmed=1 bad_keys=0: {subnet_of(h2)} via {h2.ip}") == 2, new
    assert "state: converger runs=" in new and "state: datapath " in new, new
    for name in ("SIGUSR2", "SIGALRM", "SIGHUP"):
        assert new.count(f"received {name}: ignored") == 1, new
    assert "shutting down" not in new and "Traceback" not in new, new
    wait_for(lambda: lab.ping(h1, h2, 1)[0] and lab.ping(h2, h1, 1)[0], timeout=5, what="pings both ways")
