"""Go flannel beside pyflannel in kube mode (issue 16 item 4): three lab hosts on one real
kube-apiserver, h1 and h2 running pyflannel's flanneld with -kube-subnet-mgr, h3 Go flannel's
(v0.28.9, built by setup) with the same flags, all as the user bound to the manifest's ClusterRole,
on vxlan. Each reads the other's node annotations: every pair pings, and each programs the other's
VTEP MAC as its annotation names it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Lab

from .helpers import all_pairs_ping, ip, wait_for

A = "flannel.alpha.coreos.com/"


@pytest.fixture(scope="module")
def lab(make_lab, kube_apiserver: str, go_flanneld: str) -> Iterator[Lab]:
    with make_lab("pfkm", 3, "vxlan", kube=True, go_hosts=(3,), wait=60.0) as lab:
        yield lab


def annotations(lab: Lab, index: int) -> dict[str, str]:
    assert lab.kube_api is not None
    return dict(lab.kube_api.node(f"h{index}")["metadata"]["annotations"])


def test_go_and_pyflannel_read_each_other_and_ping_across(lab: Lab) -> None:
    assert [h.subnet for h in lab.hosts] == ["10.0.1.1/24", "10.0.2.1/24", "10.0.3.1/24"]
    assert all_pairs_ping(lab) == []
    macs = {}
    for h in lab.hosts:
        ann = annotations(lab, h.index)
        assert ann[A + "kube-subnet-manager"] == "true" and ann[A + "public-ip"] == h.ip, ann
        assert ann[A + "backend-type"] == "vxlan"
        macs[h.index] = json.loads(ann[A + "backend-data"])["VtepMAC"]
    # Go's h3 has our h1's VTEP MAC as a neighbour and FDB entry, and our h1 has Go's
    h1, h3 = lab.hosts[0], lab.hosts[2]
    assert macs[1] in ip(h3.ns, "neigh", "show", "dev", "flannel.1")
    assert macs[3] in ip(h1.ns, "neigh", "show", "dev", "flannel.1")
    wait_for(lambda: "NetworkUnavailable" in json.dumps(lab.kube_api.node("h3").get("status", {})), 20,
             what="Go flannel to set its node's condition")
