"""/healthz, /readyz and /metrics of a running flanneld, fetched from inside its host namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Host, Lab

from .helpers import subnet_of, wait_for

FETCH = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:8081" + sys.argv[1], timeout=5)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def get(host: Host, path: str) -> tuple[int, str]:
    out = subprocess.run(["ip", "netns", "exec", host.ns, sys.executable, "-c", FETCH, path], capture_output=True,
                         text=True, timeout=30).stdout
    code, _, body = out.partition("\n")
    return int(code or 0), body.removesuffix("\n")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    lab = Lab(name="pfth", hosts_n=2)
    try:
        lab.up(write_config=False)
        for h in lab.hosts:  # restart with the health server on
            lab.stop_flanneld(h)
            lab.start_flanneld(h, ("-healthz-port=8081", "-healthz-ip=127.0.0.1"))
        yield lab
    finally:
        lab.down()


def test_not_ready_until_subnet_env(lab: Lab) -> None:
    h = lab.hosts[0]
    wait_for(lambda: get(h, "/healthz")[0] == 200, what="the health server")
    assert get(h, "/healthz") == (200, "flanneld is running")
    assert get(h, "/readyz") == (503, "flanneld is not ready yet")
    lab.put_config('{"Network": "10.0.0.0/16"}')
    lab.finish(20)
    assert get(h, "/readyz") == (200, "flanneld is ready")


def test_metrics(lab: Lab) -> None:
    h1, h2 = lab.hosts
    assert lab.ping(h1, h2, 3)[0]
    code, text = get(h1, "/metrics")
    assert code == 200
    assert f'flannel_lease_info{{backend="udp",public_ip="{h1.ip}",reservation="false",subnet="{subnet_of(h1)}"}} 1.0' \
        in text
    assert "flannel_lease_expiry_timestamp_seconds " in text
    assert "flannel_peers 1.0" in text
    assert "flannel_ready 1.0" in text
    tx = next(line for line in text.splitlines() if line.startswith('flannel_udp_packets_total{direction="tx"}'))
    assert float(tx.split()[-1]) >= 3
    assert "flannel_reconcile_duration_seconds_count" in text
    assert "flannel_etcd_errors_total 0.0" in text
    assert get(h1, "/nope")[0] == 404
