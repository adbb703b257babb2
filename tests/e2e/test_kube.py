"""Kube mode end to end (issue 16): three hosts with -kube-subnet-mgr against a real kube-apiserver
(built by setup, backed by Debian's etcd, client certificates and RBAC on): subnets from the Node
objects' podCIDRs, peers from their annotations, node changes followed through the watch."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from pyflannel.lab import kube_lab
from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns

from .helpers import all_pairs_ping, ip, log_text, wait_for

A = "flannel.alpha.coreos.com/"


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "udp"])
def lab(request: pytest.FixtureRequest, kube_apiserver: str, make_lab) -> Iterator[Lab]:
    name = {"vxlan": "pfkv", "host-gw": "pfkg", "udp": "pfku"}[request.param]
    with make_lab(name, 3, request.param, kube=True, wait=60.0) as lab:
        yield lab


def api(lab: Lab) -> kube_lab.KubeApi:
    assert lab.kube_api is not None
    return lab.kube_api


def has_route(lab: Lab, host, cidr: str) -> bool:
    return cidr in ip(host.ns, "route", "show", cidr)


def test_subnets_are_the_podcidrs_and_all_pairs_ping(lab: Lab) -> None:
    assert [h.subnet for h in lab.hosts] == ["10.0.1.1/24", "10.0.2.1/24", "10.0.3.1/24"]
    assert all_pairs_ping(lab) == []


def test_annotations_and_network_condition_as_go_flannel(lab: Lab) -> None:
    h = lab.hosts[0]
    node = api(lab).node("h1")
    ann = node["metadata"]["annotations"]
    assert ann[A + "kube-subnet-manager"] == "true"
    assert ann[A + "public-ip"] == h.ip
    assert ann[A + "backend-type"] == lab.backend
    if lab.backend == "vxlan":
        mac = ip(h.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0]
        assert ann[A + "backend-data"] == f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    else:
        assert ann[A + "backend-data"] == "null"
    cond = wait_for(lambda: [c for c in api(lab).node("h1").get("status", {}).get("conditions", [])
                             if c["type"] == "NetworkUnavailable"], 20, what="NetworkUnavailable condition")
    assert (cond[0]["status"], cond[0]["reason"]) == ("False", "FlannelIsUp")


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_node_delete_and_add_are_followed(lab: Lab) -> None:
    h1, h3 = lab.hosts[0], lab.hosts[2]
    saved = api(lab).node("h3")["metadata"]["annotations"]
    api(lab).delete_node("h3")
    wait_for(lambda: not has_route(lab, h1, "10.0.3.0/24"), 20, what="h1 to drop h3's route")
    assert has_route(lab, h1, "10.0.2.0/24")
    assert "peer removed subnet=10.0.3.0/24" in log_text(lab, h1)
    api(lab).create_node("h3", "10.0.3.0/24")
    api(lab).annotate("h3", saved)
    wait_for(lambda: has_route(lab, h1, "10.0.3.0/24"), 20, what="h1 to route to h3 again")
    ok, out = lab.ping(h1, h3)
    assert ok, out


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_garbage_annotations_skip_that_node_only(lab: Lab) -> None:
    h1 = lab.hosts[0]
    api(lab).create_node("junk", "10.0.9.0/24")
    api(lab).annotate("junk", {A + "kube-subnet-manager": "true", A + "public-ip": "not-an-ip",
                               A + "backend-type": "vxlan", A + "backend-data": "{"})
    wait_for(lambda: "node junk" in log_text(lab, h1), 20, what="a warning naming node junk")
    assert log_text(lab, h1).count("node junk") == 1
    assert not has_route(lab, h1, "10.0.9.0/24")
    assert all_pairs_ping(lab) == []
    api(lab).delete_node("junk")


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_restart_with_a_new_device_keeps_the_vtep_mac(lab: Lab) -> None:
    h2 = lab.hosts[1]
    before = json.loads(api(lab).node("h2")["metadata"]["annotations"][A + "backend-data"])["VtepMAC"]
    lab.stop_flanneld(h2)
    subprocess.run(["ip", "-n", h2.ns, "link", "del", "flannel.1"], check=True)
    lab.start_flanneld(h2)
    wait_for(lambda: "flannel.1" in subprocess.run(["ip", "-n", h2.ns, "link"], capture_output=True,
                                                   text=True).stdout, 30, what="flannel.1 back on h2")
    mac = ip(h2.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0]
    assert mac == before
    wait_for(lambda: lab.ping(lab.hosts[0], h2)[0], 30, what="h1 -> h2 ping after the restart")


def run_once(lab: Lab, env: dict[str, str], *extra: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """flanneld in h1's namespace on its own subnet file and VNI 9 (so h1's flanneld is untouched),
    until it exits or ``timeout``; its output."""
    conf = os.path.join(lab.state_dir, "net-conf-vni9.json")
    with open(conf, "w") as f:
        f.write('{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 9}}')
    h = lab.hosts[0]
    cmd = in_ns(h.ns, "env", "-u", "NODE_NAME", *[f"{k}={v}" for k, v in env.items()],
                *lab.flanneld_binary(h), "-kube-subnet-mgr", f"-kubeconfig-file={extra[0] if extra else ''}",
                f"-net-config-path={conf}", f"--subnet-file={os.path.join(lab.state_dir, 'once.env')}")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(cmd, -1, out, (err.stderr or b"").decode()
                                           if isinstance(err.stderr, bytes) else (err.stderr or ""))


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_bad_inputs_one_clear_line(lab: Lab) -> None:
    kc = api(lab).kubeconfig()
    res = run_once(lab, {}, kc)
    assert res.returncode == 1 and "POD_NAME and POD_NAMESPACE must be set" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    api(lab).create_node("outside", "10.9.0.0/24")
    res = run_once(lab, {"NODE_NAME": "outside"}, kc)
    assert res.returncode == 1 and "outside the flannel Network 10.0.0.0/16" in res.stderr, res.stderr
    api(lab).create_node("nocidr", None)
    res = run_once(lab, {"NODE_NAME": "nocidr"}, kc, timeout=8)
    assert "pod cidr not assigned" in res.stderr and "--allocate-node-cidrs --cluster-cidr=10.0.0.0/16" in \
        res.stderr, res.stderr
    api(lab).server.write_kubeconfig("nobody")
    res = run_once(lab, {"NODE_NAME": "h1"}, api(lab).kubeconfig("nobody"), timeout=8)
    assert "forbids get on nodes/h1" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    for name in ("outside", "nocidr"):
        api(lab).delete_node(name)
