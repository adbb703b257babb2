"""The lab in kube mode (``Lab(kube=True)``): a real kube-apiserver (with its etcd) in NAME-etcd at
198.18.0.2:6443, one Node object per host with ``spec.podCIDRs`` set as the node IPAM controller
would (10.0.I.0/24 for host I; with ``ipv6`` also or only 2001:db8:42:I::/64), and flanneld run
with ``-kube-subnet-mgr`` as user ``flannel``, a client certificate bound to a copy of flannel's
ClusterRole (the smallest that works, read from dist/kubernetes/kube-flannel.yml; named flannel-lab
so that the manifest itself can be applied), with NODE_NAME=hI and the network config in a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .kube_apiserver import KubeApiServer
from .netns import in_ns

API_PORT = 6443
FLANNEL_USER = "flannel"
MANIFEST = Path(__file__).resolve().parents[3] / "dist" / "kubernetes" / "kube-flannel.yml"
_COLLECTIONS = {  # kind -> (API path prefix, plural)
    "Namespace": ("/api/v1", "namespaces"), "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "ConfigMap": ("/api/v1", "configmaps"), "Pod": ("/api/v1", "pods"),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles"),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
}


def manifest() -> list[dict[str, Any]]:
    """The objects of dist/kubernetes/kube-flannel.yml, in order."""
    import yaml  # PyYAML, a dependency of kubernetes_asyncio

    with open(MANIFEST) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def collection(obj: dict[str, Any]) -> str:
    """The API path that creates ``obj``."""
    prefix, plural = _COLLECTIONS[obj["kind"]]
    ns = obj.get("metadata", {}).get("namespace")
    return f"{prefix}/namespaces/{ns}/{plural}" if ns else f"{prefix}/{plural}"


def cluster_role() -> dict[str, Any]:
    return next(o for o in manifest() if o["kind"] == "ClusterRole")


def node_name(index: int) -> str:
    return f"h{index}"


def pod_cidr(index: int) -> str:
    return f"10.0.{index}.0/24"


def pod_cidr6(index: int) -> str:
    """Host ``index``'s IPv6 podCIDR, a /64 of the lab's IPv6Network (lab/ipv6.py NETWORK6)."""
    return f"2001:db8:42:{index:x}::/64"


def pod_cidrs(index: int, ipv6: str = "") -> list[str]:
    """As the node IPAM controller assigns them: IPv4 (``""``), IPv4 then IPv6 (``dual``: the
    primary family first), IPv6 (``only``)."""
    return {"": [pod_cidr(index)], "dual": [pod_cidr(index), pod_cidr6(index)], "only": [pod_cidr6(index)]}[ipv6]


class KubeApi:
    """The lab's API server and what the tests do through it (as the admin)."""

    def __init__(self, state_dir: str, host: str, netns: str) -> None:
        self.server = KubeApiServer(os.path.join(state_dir, "kube"), host=host, port=API_PORT, netns=netns)

    def start(self) -> None:
        self.server.start()
        # the manifest's role under another name, so that the manifest itself can still be applied
        role = dict(cluster_role(), metadata={"name": "flannel-lab"})
        self.apply(role, "/apis/rbac.authorization.k8s.io/v1/clusterroles")
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "flannel-lab-user"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel-lab"},
                    "subjects": [{"kind": "User", "name": FLANNEL_USER, "apiGroup": "rbac.authorization.k8s.io"}]},
                   "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
        self.server.write_kubeconfig(FLANNEL_USER)

    def kubeconfig(self, user: str = FLANNEL_USER) -> str:
        return os.path.join(self.server.state_dir, f"{user}.kubeconfig")

    def call(self, method: str, path: str, body: object = None, *, ok: tuple[int, ...] = (200, 201),
             content_type: str = "application/json", token: str = "") -> dict[str, Any]:
        status, data = self.server.request(method, path, body, content_type=content_type, token=token)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data.get('message', data)}")
        return data

    def apply(self, obj: dict[str, Any], collection: str) -> None:
        self.call("POST", collection, obj, ok=(201, 409))

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token of ServiceAccount ``namespace/name`` (the TokenRequest API, as the kubelet asks)."""
        data = self.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": seconds}})
        return str(data["status"]["token"])

    def create_pod(self, namespace: str, name: str, node: str, service_account: str) -> None:
        """A Pod object bound to ``node`` (no kubelet runs it: flanneld only reads its spec.nodeName)."""
        self.call("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                     "containers": [{"name": "kube-flannel", "image": "localhost/pyflannel:0.1.0"}]}})

    def create_node(self, name: str, cidr: str | list[str] | None) -> None:
        cidrs = [cidr] if isinstance(cidr, str) else list(cidr or [])
        spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
        # with the annotation a kubelet puts on every Node it registers: Go flanneld panics on a node
        # without any annotation (it assigns into the nil map, pkg/subnet/kube/kube.go AcquireLease)
        meta = {"name": name, "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}}
        self.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec})

    def create_nodes(self, nodes: list[dict[str, Any]], timeout: float = 600.0) -> None:
        """Many Node objects at once, over one connection (a Python inside the server's namespace)."""
        crt, key = self.server.pki.file("admin.crt"), self.server.pki.file("admin.key")
        script = (
            "import http.client, json, ssl, sys\n"
            f"ctx = ssl.create_default_context(cafile={self.server.pki.file('ca.crt')!r})\n"
            f"ctx.load_cert_chain({crt!r}, {key!r})\n"
            f"c = http.client.HTTPSConnection({self.server.host!r}, {self.server.port}, context=ctx)\n"
            "for node in json.load(sys.stdin):\n"
            "    c.request('POST', '/api/v1/nodes', json.dumps(node), {'Content-Type': 'application/json'})\n"
            "    r = c.getresponse(); body = r.read()\n"
            "    if r.status not in (201, 409): sys.exit(f'POST node: HTTP {r.status}: {body[:300]!r}')\n")
        res = subprocess.run(in_ns(self.server.netns, sys.executable, "-c", script) if self.server.netns
                             else [sys.executable, "-c", script], input=json.dumps(nodes), text=True,
                             capture_output=True, timeout=timeout, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"creating {len(nodes)} nodes failed: {res.stderr.strip()[-500:]}")

    def set_pod_cidr(self, name: str, cidr: str) -> None:
        self.call("PATCH", f"/api/v1/nodes/{name}", {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}},
                  content_type="application/merge-patch+json")

    def node(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/nodes/{name}")

    def delete_node(self, name: str) -> None:
        self.call("DELETE", f"/api/v1/nodes/{name}", ok=(200, 202, 404))

    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        self.call("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"annotations": annotations}},
                  content_type="application/merge-patch+json")


def net_conf(backend: str, network: str = "10.0.0.0/16") -> str:
    config: dict[str, object] = {"Network": network}
    if backend != "udp":
        config["Backend"] = {"Type": backend}
    return json.dumps(config)


def kubeconfig_path(state_dir: str, user: str = FLANNEL_USER) -> str:
    """Where ``KubeApi(state_dir, ...)`` writes the kubeconfig of ``user``."""
    return os.path.join(state_dir, "kube", f"{user}.kubeconfig")


def flanneld_args(state_dir: str, net_conf_path: str) -> tuple[str, ...]:
    return ("-kube-subnet-mgr", f"-kubeconfig-file={kubeconfig_path(state_dir)}", f"-net-config-path={net_conf_path}")


def in_network(cidr: str, network: str = "10.0.0.0/16") -> bool:
    return ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network(network))
