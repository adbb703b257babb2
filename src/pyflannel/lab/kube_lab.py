"""The lab in kube mode (``Lab(kube=True)``): a real kube-apiserver (with its etcd) in NAME-etcd at
198.18.0.2:6443, one Node object per host with ``spec.podCIDR`` set as the node IPAM controller
would (10.0.I.0/24 for host I), and flanneld run with ``-kube-subnet-mgr`` as user ``flannel``,
a client certificate bound to flannel's ClusterRole (the smallest that works, as in
deploy/kube-flannel.yml), with NODE_NAME=hI and the network config in a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from .kube_apiserver import KubeApiServer

API_PORT = 6443
FLANNEL_USER = "flannel"
CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "flannel"},
    "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ],
}


def node_name(index: int) -> str:
    return f"h{index}"


def pod_cidr(index: int) -> str:
    return f"10.0.{index}.0/24"


class KubeApi:
    """The lab's API server and what the tests do through it (as the admin)."""

    def __init__(self, state_dir: str, host: str, netns: str) -> None:
        self.server = KubeApiServer(os.path.join(state_dir, "kube"), host=host, port=API_PORT, netns=netns)

    def start(self) -> None:
        self.server.start()
        self.apply(CLUSTER_ROLE, "/apis/rbac.authorization.k8s.io/v1/clusterroles")
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "flannel"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
                    "subjects": [{"kind": "User", "name": FLANNEL_USER, "apiGroup": "rbac.authorization.k8s.io"}]},
                   "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
        self.server.write_kubeconfig(FLANNEL_USER)

    def kubeconfig(self, user: str = FLANNEL_USER) -> str:
        return os.path.join(self.server.state_dir, f"{user}.kubeconfig")

    def call(self, method: str, path: str, body: object = None, *, ok: tuple[int, ...] = (200, 201),
             content_type: str = "application/json") -> dict[str, Any]:
        status, data = self.server.request(method, path, body, content_type=content_type)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data.get('message', data)}")
        return data

    def apply(self, obj: dict[str, Any], collection: str) -> None:
        self.call("POST", collection, obj, ok=(201, 409))

    def create_node(self, name: str, cidr: str | None) -> None:
        spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
        self.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                                             "spec": spec})

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


def flanneld_args(api: KubeApi, net_conf_path: str) -> tuple[str, ...]:
    return ("-kube-subnet-mgr", f"-kubeconfig-file={api.kubeconfig()}", f"-net-config-path={net_conf_path}")


def in_network(cidr: str, network: str = "10.0.0.0/16") -> bool:
    return ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network(network))
