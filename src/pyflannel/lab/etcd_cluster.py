"""A three-member etcd cluster in lab namespaces (``NAME-e1..3`` at 198.18.0.2..4), with TLS client
certificates or username/password: what ``tests/e2e/test_etcd_cluster.py`` and the chaos soak
(``lab/soak``) run flanneld against. The members join the lab's underlay switch, so a lab built
with ``Lab._underlay`` and ``Lab._host`` reaches them; ``Lab.down`` removes them with the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from .cluster import PREFIX, Lab
from .etcd_server import EtcdServer
from .netns import in_ns, ns_add, sh

IPS = ("198.18.0.2", "198.18.0.3", "198.18.0.4")


def make_pki(d: str) -> dict[str, str]:
    """A throw-away CA, a server certificate for the members' addresses and a client certificate,
    in directory ``d``."""
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
class EtcdCluster:
    lab: Lab
    members: list[EtcdServer]
    client_flags: tuple[str, ...]  # flanneld's flags to reach the cluster
    ctl_flags: tuple[str, ...] = ()

    def member_ns(self, i: int) -> str:
        return f"{self.lab.name}-e{i + 1}"

    def etcdctl(self, *args: str, member: int | None = None, timeout: float | None = None) -> str:
        """``etcdctl ARGS`` against the live members (from ``member``'s namespace, default the first
        live one); ``timeout``: etcdctl's own ``--command-timeout`` and a hard limit on the call."""
        live = [i for i, m in enumerate(self.members) if m.proc is not None] or [0]
        i = live[0] if member is None else member
        m = self.members[i]
        endpoints = ",".join(x.endpoint for x in self.members if x.proc is not None) or m.endpoint
        extra = [f"--command-timeout={timeout:g}s", f"--dial-timeout={timeout:g}s"] if timeout else []
        cmd = in_ns(self.member_ns(i), *m.etcdctl_args()[:1], "--endpoints", endpoints, *m.etcdctl_args()[3:],
                    *self.ctl_flags, *extra, *args)
        return sh(cmd, env={"ETCDCTL_API": "3"}, timeout=(timeout or 25) + 5).stdout

    def leader(self) -> int:
        status = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        lead = status[0]["Status"]["leader"]
        ids = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in status}
        return next(i for i, m in enumerate(self.members) if ids.get(m.endpoint) == lead)


def build_cluster(lab: Lab, mode: str, pki: dict[str, str], config: str) -> EtcdCluster:
    """The lab's underlay and three members (``mode`` "tls" or "auth"), ``config`` written."""
    lab._underlay()
    tls = (pki["server.crt"], pki["server.key"], pki["ca.crt"]) if mode == "tls" else None
    initial = ",".join(f"m{i + 1}=http://{ip}:2380" for i, ip in enumerate(IPS))
    members = []
    for i, ip in enumerate(IPS):
        ns = f"{lab.name}-e{i + 1}"
        ns_add(ns)
        lab._attach(ns, ip, f"e{i + 1}")
        members.append(EtcdServer(os.path.join(lab.state_dir, f"e{i + 1}"), host=ip, netns=ns, name=f"m{i + 1}",
                                  cluster=initial, tls=tls, log_path=os.path.join(lab.state_dir, f"e{i + 1}.log")))
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_ready(30)
    endpoints = ",".join(m.endpoint for m in members)
    if mode == "tls":
        client = (f"-etcd-endpoints={endpoints}", f"-etcd-cafile={pki['ca.crt']}",
                  f"-etcd-certfile={pki['client.crt']}", f"-etcd-keyfile={pki['client.key']}")
        c = EtcdCluster(lab, members, client)
    else:
        c = EtcdCluster(lab, members, (f"-etcd-endpoints={endpoints}", "-etcd-username=flannel",
                                       "-etcd-password=flannel-pw"))
        for args in (("user", "add", "root:root-pw"), ("role", "add", "flannel"),
                     ("role", "grant-permission", "flannel", "--prefix=true", "readwrite", f"{PREFIX}/"),
                     ("user", "add", "flannel:flannel-pw"), ("user", "grant-role", "flannel", "flannel"),
                     ("auth", "enable")):  # before `auth enable` no credentials are needed
            sh(in_ns(f"{lab.name}-e1", "etcdctl", "--endpoints", endpoints, *args), env={"ETCDCTL_API": "3"})
        for m in members:
            m.user = "root:root-pw"
    c.etcdctl("put", f"{PREFIX}/config", config)
    return c


__all__ = ["IPS", "EtcdCluster", "build_cluster", "make_pki"]
