"""The open-files limit raised at start-up (in a child process, under prlimit) and the SIGUSR1
state dump's lines."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys

import pytest

from pyflannel.converger import ConvergeStats
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.observe import Stats, View, state_lines

RAISE = """
import logging, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from pyflannel.process import raise_file_limit
raise_file_limit()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
@pytest.mark.parametrize(("limits", "said", "soft"), [
    ("1024:4096", "open files limit: raised from 1024 to 4096", 4096),
    ("1024:1024", "open files limit: 1024 (already the hard limit)", 1024),
])
def test_raise_file_limit(limits: str, said: str, soft: int) -> None:
    out = subprocess.run(["prlimit", f"--nofile={limits}", sys.executable, "-c", RAISE], capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    assert out == [said, str(soft)]


def _lease(subnet: str, ip: str, expiration: float | None) -> Lease:
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ipaddress.IPv4Address(ip)),
                 lease_id=0 if expiration is None else 7, expiration=expiration)


def test_state_lines() -> None:
    stats = Stats(subnet_file_written=True, store_ok=False, watch_relists=2, started=1000.0)
    conv = ConvergeStats(runs=7, full_runs=3, changes=12, errors=1, last_ok=4990.0)
    peers = [{"subnet": f"10.0.{i}.0/24", "public_ip": f"198.18.0.{i}"} for i in range(1, 11)]
    view = View(stats, lease=lambda: _lease("10.0.53.0/24", "198.18.0.11", 5000.0 + 3725),
                backend=lambda: "udp", peers=lambda: 10, datapath=lambda: {"tx_packets": 5, "rx_drop_ttl": 0},
                etcd_errors=lambda: 4, bad_leases=lambda: 1, reconcile=lambda: conv,
                programmed=lambda: {"peers": peers}, known=lambda: 11)
    assert state_lines(view, now=5000.0, show=2) == [
        # not ready while etcd is unreachable, as /readyz and flannel_ready say
        "state: lease 10.0.53.0/24 public_ip=198.18.0.11 expires_in=1h02m05s backend=udp ready=no "
        "etcd=UNREACHABLE up=1h06m40s",
        "state: peers in etcd=11 programmed=10 bad_keys=1: 10.0.1.0/24 via 198.18.0.1, "
        "10.0.2.0/24 via 198.18.0.2 (+8 more)",
        "state: converger runs=7 full=3 changes=12 errors=1 last_ok=0m10s ago; etcd errors=4 relists=2",
        "state: datapath tx_packets=5",
    ]


def test_state_lines_before_a_lease() -> None:
    lines = state_lines(View(Stats(started=0.0)), now=30.0)
    assert lines == ["state: lease: none yet backend=- ready=no etcd=ok up=0m30s",
                     "state: peers in etcd=0 programmed=0 bad_keys=0"]


def test_state_lines_reservation() -> None:
    view = View(Stats(started=0.0), lease=lambda: _lease("10.0.9.0/24", "198.18.0.9", None))
    assert state_lines(view, now=1.0)[0].startswith("state: lease 10.0.9.0/24 public_ip=198.18.0.9 reservation")
