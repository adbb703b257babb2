"""dist/kubernetes/kube-flannel.yml: the shape issue 16 asks for (its server-side dry run and the
role's sufficiency are e2e tests in tests/e2e/test_kube.py)."""

from __future__ import annotations

import json

from pyflannel.core.config import parse_config
from pyflannel.lab import kube_lab


def by_kind() -> dict[str, dict]:
    return {o["kind"]: o for o in kube_lab.manifest()}


def test_the_cluster_role_is_the_smallest_that_works_go_flannels():
    rules = by_kind()["ClusterRole"]["rules"]
    assert sorted((r["resources"][0], tuple(r["verbs"])) for r in rules) == [
        ("nodes", ("get", "list", "watch")), ("nodes/status", ("patch",)), ("pods", ("get",))]
    assert all(r["apiGroups"] == [""] and len(r["resources"]) == 1 for r in rules)
    binding = by_kind()["ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]


def test_the_daemonset_runs_flanneld_on_the_host_network_with_its_mounts():
    spec = by_kind()["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == "flannel"
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    main = spec["containers"][0]
    assert "--kube-subnet-mgr" in main["args"]
    assert set(main["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert {m["mountPath"] for m in main["volumeMounts"]} == {"/run/flannel", "/etc/kube-flannel/", "/run/xtables.lock"}
    assert {e["name"] for e in main["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin", "install-cni"]


def test_the_configmap_holds_a_valid_net_conf_and_cni_conf():
    data = by_kind()["ConfigMap"]["data"]
    assert str(parse_config(data["net-conf.json"].encode()).network) == "10.244.0.0/16"
    assert json.loads(data["cni-conf.json"])["plugins"][0]["type"] == "flannel"


def test_the_lab_command_in_kube_mode_names_the_node_and_the_api_server():
    from pyflannel.lab.cluster import Host, Lab

    host = Host(2, "x-h2", "x-c2", "198.18.0.12")
    cmd = Lab(name="x", backend="vxlan", kube=True).flanneld_command(host)
    assert cmd[:4] == ["ip", "netns", "exec", "x-h2"] and "NODE_NAME=h2" in cmd
    assert "-kube-subnet-mgr" in cmd and "-kubeconfig-file=/run/pyflannel-lab/x/kube/flannel.kubeconfig" in cmd
    assert "-net-config-path=/run/pyflannel-lab/x/net-conf.json" in cmd
    assert not [a for a in cmd if a.startswith("-etcd-")]
    wg = Lab(name="x", backend="wireguard", kube=True).flanneld_command(host)
    assert "unshare" in wg and wg.index("unshare") < wg.index("NODE_NAME=h2")
