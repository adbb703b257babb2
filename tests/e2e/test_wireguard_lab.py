"""The wireguard backend end to end: 3 hosts over wireguard-go (these kernels have no WireGuard),
each in its own mount namespace with its own /run/wireguard."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import sh

from .helpers import lease_key, log_text

pytestmark = pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg") is None,
                                reason="needs wireguard-go and wireguard-tools (make setup installs them)")


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfwg", 3, "wireguard", subnet_max="10.0.199.0") as lab:
        yield lab


def wg_peers(lab: Lab, host: Host) -> set[str]:
    return set(lab.wg(host, "show", "flannel-wg", "peers").split())


def public_key(lab: Lab, host: Host) -> str:
    value = json.loads(lab.etcdctl("get", lease_key(host), "--print-value-only"))
    return str(value["BackendData"]["PublicKey"])


def wireguard_go_pids(host: Host) -> list[int]:
    pids = sh(["ip", "netns", "pids", host.ns]).stdout.split()
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "wireguard-go":
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_six_pairs_ping_over_wireguard_go(lab: Lab) -> None:
    failed = [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping(a, b)[0]]
    assert failed == []
    for h in lab.hosts:
        assert "using wireguard-go for flannel-wg" in log_text(lab, h)
        assert len(wg_peers(lab, h)) == 2
        assert h.docker_opts.endswith("--mtu=1420")
        assert len(wireguard_go_pids(h)) == 1


def test_lease_json_is_gos(lab: Lab) -> None:
    h = lab.hosts[0]
    value = lab.etcdctl("get", lease_key(h), "--print-value-only").strip()
    key = public_key(lab, h)
    assert value == (f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendType":"wireguard",'
                     f'"BackendData":{{"PublicKey":"{key}","Port":51820}}}}')
