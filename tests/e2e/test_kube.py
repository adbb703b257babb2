"""Kube mode end to end (issue 16): three hosts with -kube-subnet-mgr against a real kube-apiserver
(built by setup, backed by Debian's etcd, client certificates and RBAC on): subnets from the Node
objects' podCIDRs, peers from their annotations, node changes followed through the watch. With IPv6
(issue 18): the host-gw lab is dual-stack (podCIDRs IPv4 and IPv6), and an IPv6-only vxlan lab
(podCIDRs IPv6 only) pings over IPv6 and writes the annotations Go flannel writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab import kube_lab
from pyflannel.lab.cluster import Lab
from pyflannel.lab.ipv6 import NETWORK6, host_ip6
from pyflannel.lab.netns import in_ns

from .helpers import all_pairs_ping, ip, log_text, wait_for

A = "flannel.alpha.coreos.com/"
HEALTHZ = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")
READYZ = """
import urllib.request, urllib.error
try:
    print(urllib.request.urlopen("http://127.0.0.1:8081/readyz", timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def readyz(host) -> int:
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", READYZ), capture_output=True, text=True, timeout=20)
    return int(out.stdout.strip() or 0)


def readyz_text(host) -> str:
    script = READYZ.replace("print(e.code)", "print(e.read().decode())")
    return subprocess.run(in_ns(host.ns, sys.executable, "-c", script), capture_output=True, text=True,
                          timeout=20).stdout


# param -> (lab name, backend, IPv6 mode): host-gw runs dual stack, "vxlan-only" an IPv6-only network
LABS = {"vxlan": ("pfkv", "vxlan", ""), "host-gw": ("pfkg", "host-gw", "dual"), "udp": ("pfku", "udp", ""),
        "vxlan-only": ("pfk6", "vxlan", "only")}


@pytest.fixture(scope="module", params=list(LABS))
def lab(request: pytest.FixtureRequest, kube_apiserver: str, make_lab) -> Iterator[Lab]:
    name, backend, ipv6 = LABS[request.param]
    with make_lab(name, 3, backend, kube=True, wait=60.0, ipv6=ipv6,
                  host_extra={i: HEALTHZ for i in (1, 2, 3)}) as lab:
        yield lab


def api(lab: Lab) -> kube_lab.KubeApi:
    assert lab.kube_api is not None
    return lab.kube_api


def has_route(lab: Lab, host, cidr: str) -> bool:
    return cidr in ip(host.ns, "route", "show", cidr)


def all_pairs_ping6(lab: Lab) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping6(a, b, 1)[0]]


def test_subnets_are_the_podcidrs_and_all_pairs_ping(lab: Lab) -> None:
    if lab.ipv6 == "only":
        assert [h.subnet for h in lab.hosts] == [f"2001:db8:42:{i}::1/64" for i in (1, 2, 3)]
        assert all(not h.container_ip for h in lab.hosts)
    else:
        assert [h.subnet for h in lab.hosts] == ["10.0.1.1/24", "10.0.2.1/24", "10.0.3.1/24"]
        assert all_pairs_ping(lab) == []
    if lab.ipv6:
        assert all(h.container_ip6 for h in lab.hosts), "every host's subnet.env names its IPv6 podCIDR"
        with open(lab.subnet_file(lab.hosts[1])) as f:
            env = f.read()
        assert f"FLANNEL_IPV6_NETWORK={NETWORK6}\n" in env and "FLANNEL_IPV6_SUBNET=2001:db8:42:2::1/64\n" in env
        # the first packets may wait on neighbour discovery and DAD of the new addresses
        wait_for(lambda: all_pairs_ping6(lab) == [], 20, what="all six pairs to ping over IPv6")


def vtep_mac(host, dev: str) -> str:
    return ip(host.ns, "link", "show", dev).split("link/ether ")[1].split()[0]


def test_annotations_and_network_condition_as_go_flannel(lab: Lab) -> None:
    h = lab.hosts[0]
    node = api(lab).node("h1")
    ann = node["metadata"]["annotations"]
    assert ann[A + "kube-subnet-manager"] == "true"
    assert ann[A + "backend-type"] == ("" if lab.backend == "udp" else lab.backend)  # Go's udp lease has no type
    if lab.ipv6 == "only":  # Go's AcquireLease: vxlan without BackendData writes no IPv4 pair at all
        assert A + "public-ip" not in ann and A + "backend-data" not in ann, ann
    else:
        assert ann[A + "public-ip"] == h.ip
        assert ann[A + "backend-data"] == (f'{{"VNI":1,"VtepMAC":"{vtep_mac(h, "flannel.1")}"}}'
                                           if lab.backend == "vxlan" else "null")
    if lab.ipv6:
        assert ann[A + "public-ipv6"] == host_ip6(1)
        assert ann[A + "backend-v6-data"] == ("null" if lab.backend == "host-gw"
                                               else f'{{"VNI":1,"VtepMAC":"{vtep_mac(h, "flannel-v6.1")}"}}')
    else:
        assert A + "public-ipv6" not in ann and A + "backend-v6-data" not in ann, ann
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


VNI9 = '{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 9}}'


def run_once(lab: Lab, env: dict[str, str], *extra: str, timeout: float = 20.0,
             config: str = VNI9) -> subprocess.CompletedProcess:
    """flanneld in h1's namespace on its own subnet file and VNI 9 (so h1's flanneld is untouched),
    until it exits or ``timeout``; its output."""
    conf = os.path.join(lab.state_dir, "net-conf-vni9.json")
    with open(conf, "w") as f:
        f.write(config)
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


# ---- IPv6: a malformed IPv6 half, a node without the IPv6 podCIDR the network needs ----------------
@pytest.mark.parametrize("lab", ["host-gw"], indirect=True)
def test_dual_stack_node_with_a_malformed_ipv6_annotation_keeps_its_ipv4_part(lab: Lab) -> None:
    h1 = lab.hosts[0]
    api(lab).create_node("junk6", ["10.0.9.0/24", "2001:db8:42:9::/64"])
    api(lab).annotate("junk6", {A + "kube-subnet-manager": "true", A + "public-ip": "198.18.0.97",
                                A + "backend-type": "host-gw", A + "backend-data": "null",
                                A + "public-ipv6": "2001:db8::zz", A + "backend-v6-data": "null"})
    try:
        wait_for(lambda: "10.0.9.0/24 via 198.18.0.97 dev eth0" in ip(h1.ns, "route", "show", "10.0.9.0/24"), 20,
                 what="h1 to route to junk6's IPv4 podCIDR")
        api(lab).annotate("junk6", {"example.com/touched": "1"})  # a second event for the same node
        assert "2001:db8:42:9::/64" not in ip(h1.ns, "-6", "route")
    finally:
        api(lab).delete_node("junk6")
    wait_for(lambda: not has_route(lab, h1, "10.0.9.0/24"), 20, what="h1 to drop junk6's route")
    lines = [ln for ln in log_text(lab, h1).splitlines() if "node junk6" in ln and "public-ipv6" in ln]
    assert len(lines) == 1 and "'2001:db8::zz' is not an IPv6 address" in lines[0] and \
        "using only its IPv4 part 10.0.9.0/24" in lines[0], lines
    assert all_pairs_ping6(lab) == []


ONLY9 = json.dumps({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": NETWORK6,
                    "Backend": {"Type": "vxlan", "VNI": 9}})


@pytest.mark.parametrize("lab", ["vxlan-only"], indirect=True)
def test_ipv6_only_bad_nodes_one_clear_line(lab: Lab) -> None:
    h1 = lab.hosts[0]
    # a peer whose only (IPv6) half is malformed: skipped with one warning, the others kept
    api(lab).create_node("junk", ["2001:db8:42:9::/64"])
    api(lab).annotate("junk", {A + "kube-subnet-manager": "true", A + "backend-type": "vxlan",
                               A + "public-ipv6": "not-an-ip", A + "backend-v6-data": "{}"})
    wait_for(lambda: "node junk" in log_text(lab, h1), 20, what="a warning naming node junk")
    assert "2001:db8:42:9::/64" not in ip(h1.ns, "-6", "route")
    api(lab).delete_node("junk")
    # our own node without the IPv6 podCIDR this IPv6-only network needs: one line naming it and the fix
    api(lab).create_node("v4only", "10.0.9.0/24")
    try:
        res = run_once(lab, {"NODE_NAME": "v4only"}, api(lab).kubeconfig(), config=ONLY9)
    finally:
        api(lab).delete_node("v4only")
    assert res.returncode == 1, res.stderr
    assert "node 'v4only' has no IPv6 podCIDR (spec.podCIDRs ['10.0.9.0/24'])" in res.stderr, res.stderr
    assert "--allocate-node-cidrs --cluster-cidr=2001:db8:42::/56" in res.stderr and "Traceback" not in res.stderr
    assert all_pairs_ping6(lab) == []


# ---- dist/kubernetes/kube-flannel.yml on the real API server ----------------------------------------
NS = "kube-flannel"


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_the_manifest_passes_a_server_side_dry_run(lab: Lab) -> None:
    objs = kube_lab.manifest()
    assert [o["kind"] for o in objs] == ["Namespace", "ClusterRole", "ClusterRoleBinding", "ServiceAccount",
                                         "ConfigMap", "DaemonSet"]
    status, data = api(lab).server.request("POST", kube_lab.collection(objs[0]) + "?dryRun=All", objs[0])
    assert status == 201, data
    # the namespaced objects need their namespace: create it for real, then dry-run everything else
    api(lab).apply(objs[0], kube_lab.collection(objs[0]))
    for obj in objs[1:]:
        status, data = api(lab).server.request("POST", kube_lab.collection(obj) + "?dryRun=All", obj)
        assert status == 201, (obj["kind"], data)
    # a dry run stores nothing (and a wrong object is refused: the check can fail)
    status, _ = api(lab).server.request("GET", f"/apis/apps/v1/namespaces/{NS}/daemonsets/kube-flannel-ds")
    assert status == 404
    broken = dict(objs[-1], spec={"selector": {}})
    status, data = api(lab).server.request("POST", kube_lab.collection(broken) + "?dryRun=All", broken)
    assert status == 422, data


def node_condition(lab: Lab, name: str) -> tuple[str, str] | None:
    conds = [c for c in api(lab).node(name).get("status", {}).get("conditions", [])
             if c["type"] == "NetworkUnavailable"]
    return (conds[0]["status"], conds[0]["reason"]) if conds else None


# In a private mount namespace: a fresh /run holding the service-account files where every
# Kubernetes client looks for them (/var/run/secrets/kubernetes.io/serviceaccount), then flanneld.
_IN_POD = ('mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && '
           'ln -s "$0" /run/secrets/kubernetes.io/serviceaccount && exec "$@"')


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_flanneld_runs_with_the_service_account_token_under_the_smallest_role(lab: Lab, tmp_path) -> None:
    """In-cluster config (KUBERNETES_SERVICE_HOST/PORT, the token and CA files), the node found
    through POD_NAME/POD_NAMESPACE, every call made with the ServiceAccount's own token under the
    manifest's ClusterRole; a call outside that role is refused."""
    for obj in kube_lab.manifest():
        api(lab).apply(obj, kube_lab.collection(obj))
    token = api(lab).service_account_token(NS, "flannel")
    api(lab).create_pod(NS, "kube-flannel-ds-h2", "h2", "flannel")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "namespace").write_text(NS)
    (sa / "ca.crt").write_bytes(Path(api(lab).server.pki.file("ca.crt")).read_bytes())
    conf = tmp_path / "net-conf.json"
    conf.write_text(Path(lab.net_conf_path).read_text())
    h1, h2 = lab.hosts[0], lab.hosts[1]
    lab.stop_flanneld(h2)
    # what the new flanneld must write back itself: its annotation and the node condition
    api(lab).annotate("h2", {A + "backend-data": None})
    api(lab).call("PATCH", "/api/v1/nodes/h2/status", {"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "True", "reason": "Test", "message": "set by the test"}]}},
        content_type="application/strategic-merge-patch+json")
    env = ["KUBERNETES_SERVICE_HOST=198.18.0.2", "KUBERNETES_SERVICE_PORT=6443", f"POD_NAMESPACE={NS}",
           "POD_NAME=kube-flannel-ds-h2"]
    cmd = in_ns(h2.ns, "env", "-u", "NODE_NAME", *env, "unshare", "-m", "--propagation", "private", "sh", "-c",
                _IN_POD, str(sa), *lab.flanneld_binary(h2), "-kube-subnet-mgr", f"-net-config-path={conf}",
                f"--subnet-file={tmp_path / 'subnet.env'}")
    log_path = tmp_path / "flanneld.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: node_condition(lab, "h2") == ("False", "FlannelIsUp") or proc.poll() is not None, 40,
                 what="flanneld with the service-account token to set NetworkUnavailable=False")
        text = log_path.read_text()
        assert proc.poll() is None and "Traceback" not in text, text
        assert (tmp_path / "subnet.env").read_text().count("FLANNEL_SUBNET=10.0.2.1/24") == 1
        assert api(lab).node("h2")["metadata"]["annotations"].get(A + "backend-data", "").startswith('{"VNI":1')
        wait_for(lambda: lab.ping(h1, h2)[0] and lab.ping(h2, h1)[0], 30, what="h1 <-> h2 with the token's flanneld")
        # outside the role: the same token may not list secrets nor change a node's spec
        status, data = api(lab).server.request("GET", f"/api/v1/namespaces/{NS}/secrets", token=token)
        assert status == 403, data
        status, data = api(lab).server.request("PATCH", "/api/v1/nodes/h1", {"metadata": {"labels": {"x": "y"}}},
                                               token=token, content_type="application/merge-patch+json")
        assert status == 403 and "system:serviceaccount:kube-flannel:flannel" in str(data), data
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
        lab.start_flanneld(h2)
    wait_for(lambda: lab.ping(h1, h2)[0], 30, what="h1 -> h2 once the lab's flanneld is back")


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_api_server_outage_keeps_every_route_reports_not_ready_and_resumes(lab: Lab) -> None:
    h1 = lab.hosts[0]
    wait_for(lambda: all(readyz(h) == 200 for h in lab.hosts), 30, what="every host ready before the outage")
    routes = ip(h1.ns, "route")
    api(lab).server.stop_apiserver()
    try:
        wait_for(lambda: readyz(h1) == 503, 30, what="/readyz to report the API server outage")
        assert all_pairs_ping(lab) == [], "every pair still pings with the API server down"
        assert ip(h1.ns, "route") == routes
    finally:
        api(lab).server.start_apiserver()
    wait_for(lambda: readyz(h1) == 200, 40, what="ready again once the API server is back")
    for h in lab.hosts:
        text = log_text(lab, h)
        assert text.count("the Kubernetes API server is unreachable") == 1, text
        assert "the Kubernetes API server answers again" in text, text
        assert "etcd is unreachable" not in text and "etcd answers" not in text, text
    # the watch follows again: a node that appears now is programmed
    api(lab).create_node("late", "10.0.77.0/24")
    api(lab).annotate("late", {A + "kube-subnet-manager": "true", A + "public-ip": "198.18.0.97",
                               A + "backend-type": "vxlan",
                               A + "backend-data": '{"VNI":1,"VtepMAC":"02:42:00:00:00:77"}'})
    try:
        wait_for(lambda: has_route(lab, h1, "10.0.77.0/24"), 30, what="h1 to program the node added after the outage")
    finally:
        api(lab).delete_node("late")
    wait_for(lambda: not has_route(lab, h1, "10.0.77.0/24"), 30, what="h1 to drop it again")


# ---- credentials revoked while flanneld runs; a watch too old (410 Gone) -------------------------
# (after the outage test: these restart flanneld and the API server, which its log counts must not see)
def _write_atomically(path: Path, text: str) -> None:
    """As the kubelet renews a projected token: the new file appears whole, by a rename."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _node_with_lease(lab: Lab, name: str, cidr: str, public_ip: str, mac: str) -> None:
    api(lab).create_node(name, cidr)
    api(lab).annotate(name, {A + "kube-subnet-manager": "true", A + "public-ip": public_ip, A + "backend-type": "vxlan",
                             A + "backend-data": f'{{"VNI":1,"VtepMAC":"{mac}"}}'})


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_revoked_token_keeps_every_route_reports_not_ready_and_resumes_with_a_new_one(lab: Lab, tmp_path) -> None:
    """flanneld in-cluster on h2 with its ServiceAccount's token; the ServiceAccount is deleted
    (which revokes its tokens: 401); then created again and a fresh token written to the file, as
    the kubelet renews it: flanneld re-reads it on the 401 and is ready at once."""
    for obj in kube_lab.manifest():
        api(lab).apply(obj, kube_lab.collection(obj))
    sa = tmp_path / "sa"
    sa.mkdir()
    _write_atomically(sa / "token", api(lab).service_account_token(NS, "flannel"))
    (sa / "namespace").write_text(NS)
    (sa / "ca.crt").write_bytes(Path(api(lab).server.pki.file("ca.crt")).read_bytes())
    conf = tmp_path / "net-conf.json"
    conf.write_text(Path(lab.net_conf_path).read_text())
    h2 = lab.hosts[1]
    lab.stop_flanneld(h2)
    env = ["KUBERNETES_SERVICE_HOST=198.18.0.2", "KUBERNETES_SERVICE_PORT=6443", "NODE_NAME=h2"]
    cmd = in_ns(h2.ns, "env", *env, "unshare", "-m", "--propagation", "private", "sh", "-c", _IN_POD, str(sa),
                *lab.flanneld_binary(h2), "-kube-subnet-mgr", f"-net-config-path={conf}", *HEALTHZ,
                f"--subnet-file={tmp_path / 'subnet.env'}")
    log_path = tmp_path / "flanneld.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or readyz(h2) == 200, 40, what="flanneld with the token ready")
        assert proc.poll() is None, log_path.read_text()
        routes = ip(h2.ns, "route")
        api(lab).call("DELETE", f"/api/v1/namespaces/{NS}/serviceaccounts/flannel")
        wait_for(lambda: readyz(h2) == 503, 20, what="/readyz to report the refused credentials")
        assert all_pairs_ping(lab) == [], "every pair still pings while the token is refused"
        assert ip(h2.ns, "route") == routes
        lines = [ln for ln in log_path.read_text().splitlines() if "refuses flanneld's credentials" in ln]
        assert len(lines) == 1, log_path.read_text()
        assert "401 Unauthorized" in lines[0] and "re-reads the service-account token file" in lines[0], lines[0]
        assert "the Kubernetes API server refuses flanneld's credentials" in readyz_text(h2)
        # valid credentials again: the ServiceAccount back (its binding is by name) and a fresh token
        api(lab).apply(next(o for o in kube_lab.manifest() if o["kind"] == "ServiceAccount"),
                       f"/api/v1/namespaces/{NS}/serviceaccounts")
        _write_atomically(sa / "token", api(lab).service_account_token(NS, "flannel"))
        wait_for(lambda: readyz(h2) == 200, 15, what="ready again soon after the token file is renewed")
        text = log_path.read_text()
        assert "the Kubernetes API server answers again" in text and "Traceback" not in text, text
        _node_with_lease(lab, "late2", "10.0.79.0/24", "198.18.0.98", "02:42:00:00:00:79")
        try:
            wait_for(lambda: has_route(lab, h2, "10.0.79.0/24"), 20, what="h2 to program a node added afterwards")
        finally:
            api(lab).delete_node("late2")
        wait_for(lambda: not has_route(lab, h2, "10.0.79.0/24"), 20, what="h2 to drop it again")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
        lab.start_flanneld(h2)
    wait_for(lambda: lab.ping(lab.hosts[0], h2)[0], 30, what="h1 -> h2 once the lab's flanneld is back")


@pytest.mark.parametrize("lab", ["vxlan"], indirect=True)
def test_watch_resumed_from_a_compacted_version_gets_410_and_relists(lab: Lab) -> None:
    """Node watches served straight from etcd (the API server's watch cache off for nodes: no
    bookmarks move the version on), flanneld's watch calls 3 s long; a node event, then etcd
    compacted past it: the next resume gets a real 410 Gone, flanneld re-lists and follows nodes."""
    from pyflannel.store.kube import WATCH_TIMEOUT_ENV

    h1, server = lab.hosts[0], api(lab).server
    lab.stop_flanneld(h1)
    server.stop_apiserver()
    try:
        server.start_apiserver(extra=("--watch-cache-sizes=nodes#0",))
        lab.start_flanneld(h1, env={WATCH_TIMEOUT_ENV: "3"})
        wait_for(lambda: readyz(h1) == 200, 40, what="h1 ready on the API server without a node watch cache")
        mark = len(log_text(lab, h1))
        _node_with_lease(lab, "old", "10.0.78.0/24", "198.18.0.99", "02:42:00:00:00:78")
        wait_for(lambda: has_route(lab, h1, "10.0.78.0/24"), 20, what="h1 to program node old")
        for method, path in (("POST", "/api/v1/namespaces/default/configmaps"),
                             ("DELETE", "/api/v1/namespaces/default/configmaps/churn")):
            api(lab).call(method, path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "churn"}}
                          if method == "POST" else None)
        server.compact_etcd()
        wait_for(lambda: [ln for ln in log_text(lab, h1)[mark:].splitlines()
                          if "lease watch lost, re-listing" in ln and "410" in ln], 20,
                 what="h1 to re-list on 410 Gone")
        api(lab).delete_node("old")
        _node_with_lease(lab, "new", "10.0.80.0/24", "198.18.0.100", "02:42:00:00:00:80")
        try:
            wait_for(lambda: not has_route(lab, h1, "10.0.78.0/24") and has_route(lab, h1, "10.0.80.0/24"), 20,
                     what="h1 to follow a node delete and add after the re-list")
        finally:
            api(lab).delete_node("new")
        assert "Traceback" not in log_text(lab, h1)[mark:]
    finally:
        lab.stop_flanneld(h1)
        server.stop_apiserver()
        server.start_apiserver()
        lab.start_flanneld(h1)
    wait_for(lambda: readyz(h1) == 200 and lab.ping(h1, lab.hosts[1])[0], 40, what="h1 back to normal")
