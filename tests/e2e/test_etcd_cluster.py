"""A 3-member etcd cluster in lab namespaces, with TLS client certificates or with
username/password: kill the leader, let a new host join, kill a follower, restart both — no ping
lost, leases keep renewing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.etcd_server import EtcdServer
from pyflannel.lab.netns import in_ns, ns_add, sh

from .helpers import all_pairs_ping, log_text, ping_counts, wait_for

IPS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
CONFIG = '{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}'


def make_pki(d: str) -> dict[str, str]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=pyflannel-test-ca")
    for name, cn, san in (("server", "etcd", ",".join(f"IP:{ip}" for ip in IPS)), ("client", "flannel", "DNS:x")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")
    return {k: os.path.join(d, k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


@dataclass
class Cluster:
    lab: Lab
    members: list[EtcdServer]
    client_flags: tuple[str, ...]
    ctl_flags: tuple[str, ...]

    def etcdctl(self, *args: str, member: int | None = None) -> str:
        live = [i for i, m in enumerate(self.members) if m.proc is not None]
        i = live[0] if member is None else member
        m = self.members[i]
        cmd = in_ns(f"{self.lab.name}-e{i + 1}", *m.etcdctl_args()[:1], "--endpoints",
                    ",".join(x.endpoint for x in self.members if x.proc is not None), *m.etcdctl_args()[3:],
                    *self.ctl_flags, *args)
        return sh(cmd, env={"ETCDCTL_API": "3"}).stdout

    def leader(self) -> int:
        status = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        lead = status[0]["Status"]["leader"]
        ids = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in status}
        return next(i for i, m in enumerate(self.members) if ids.get(m.endpoint) == lead)


def build(lab: Lab, mode: str, pki: dict[str, str]) -> Cluster:
    lab._underlay()
    tls = (pki["server.crt"], pki["server.key"], pki["ca.crt"]) if mode == "tls" else None
    cluster = ",".join(f"m{i + 1}=http://{ip}:2380" for i, ip in enumerate(IPS))
    members = []
    for i, ip in enumerate(IPS):
        ns = f"{lab.name}-e{i + 1}"
        ns_add(ns)
        lab._attach(ns, ip, f"e{i + 1}")
        members.append(EtcdServer(os.path.join(lab.state_dir, f"e{i + 1}"), host=ip, netns=ns, name=f"m{i + 1}",
                                  cluster=cluster, tls=tls, log_path=os.path.join(lab.state_dir, f"e{i + 1}.log")))
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_ready(30)
    endpoints = ",".join(m.endpoint for m in members)
    if mode == "tls":
        client = (f"-etcd-endpoints={endpoints}", f"-etcd-cafile={pki['ca.crt']}",
                  f"-etcd-certfile={pki['client.crt']}", f"-etcd-keyfile={pki['client.key']}")
        c = Cluster(lab, members, client, ())
    else:
        c = Cluster(lab, members, (f"-etcd-endpoints={endpoints}", "-etcd-username=flannel",
                                   "-etcd-password=flannel-pw"), ())
        for args in (("user", "add", "root:root-pw"), ("role", "add", "flannel"),
                     ("role", "grant-permission", "flannel", "--prefix=true", "readwrite", f"{PREFIX}/"),
                     ("user", "add", "flannel:flannel-pw"), ("user", "grant-role", "flannel", "flannel"),
                     ("auth", "enable")):  # before `auth enable` no credentials are needed
            sh(in_ns(f"{lab.name}-e1", "etcdctl", "--endpoints", endpoints, *args), env={"ETCDCTL_API": "3"})
        for m in members:
            m.user = "root:root-pw"
    c.etcdctl("put", f"{PREFIX}/config", CONFIG)
    return c


@pytest.fixture(params=["tls", "auth"])
def cluster(request: pytest.FixtureRequest, tmp_path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    lab = Lab(name={"tls": "pfct", "auth": "pfca"}[request.param], hosts_n=3, backend="host-gw")
    lab.down()
    os.makedirs(lab.state_dir, exist_ok=True)
    try:
        c = build(lab, request.param, make_pki(str(tmp_path)))
        lab.hosts = [lab._host(i) for i in range(1, 4)]
        yield c
    finally:
        lab.down()


def test_cluster_member_failures_lose_nothing(cluster: Cluster) -> None:
    lab = cluster.lab
    h1, h2, h3 = lab.hosts
    flags = (*cluster.client_flags, "-subnet-lease-ttl=12")
    for h in (h1, h2):
        lab.start_flanneld(h, flags)
    for h in (h1, h2):
        lab.wait_subnet(h, 30)
        lab.docker(h)
    lab.hosts = [h1, h2]
    assert all_pairs_ping(lab) == []
    ping = subprocess.Popen(in_ns(h1.container_ns, "ping", "-n", "-q", "-i", "0.01", "-c", "3500", "-W", "1",
                                  h2.container_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        leader = cluster.leader()
        cluster.members[leader].stop(9)
        # a new host joins while two members are up
        lab.start_flanneld(h3, flags)
        lab.wait_subnet(h3, 30)
        lab.docker(h3)
        follower = next(i for i, m in enumerate(cluster.members) if m.proc is not None and i != cluster.leader())
        cluster.members[follower].stop(9)
        time.sleep(5)  # one member left: no quorum, the data path carries on
        restart = time.time()
        for i in (leader, follower):
            cluster.members[i].start(wait=False)
        for m in cluster.members:
            m.wait_ready(30)

        def renewed_after_restart() -> bool:
            for line in log_text(lab, h1).splitlines():
                if "lease renewed" in line:
                    stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                    if stamp >= int(restart) - 1:
                        return True
            return False

        try:
            wait_for(renewed_after_restart, timeout=20, what="a lease renewal after the members came back")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log_text(lab, h1)[-5000:]}") from None
        out = ping.communicate(timeout=120)[0]
    finally:
        if ping.poll() is None:
            ping.kill()
    sent, received = ping_counts(out)
    assert sent == received, out + log_text(lab, h1)[-4000:]
    lab.hosts = [h1, h2, h3]
    assert all_pairs_ping(lab) == []
