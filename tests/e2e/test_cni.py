"""The CNI plugin end to end: a 2-host udp lab, one new pod namespace per host, Debian's real bridge
and host-local plugins doing the work, pings across the overlay, then CHECK and DEL.

Each lab host becomes a Kubernetes-style node first: its docker0 and Docker container are removed,
since the bridge plugin's cni0 takes the same subnet (FLANNEL_SUBNET) and gateway address. The plugin
runs inside the host's namespace (``ip netns exec``), so cni0, the veths and the bridge plugin's
iptables rules all live in the lab; host-local's allocations and the plugin's scratch files are kept
in the lab's state directory, which ``lab.down()`` removes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pyflannel.core.subnetenv import parse_subnet_env
from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import in_ns, ns_add, ns_delete, sh

from .helpers import ip, wait_for

LAB = "pftn"
CNI_PATH = "/usr/lib/cni"
PLUGIN = os.path.join(os.path.dirname(sys.executable), "flannel-cni")


@dataclass
class Pod:
    host: Host
    ns: str
    container_id: str
    conf: dict[str, Any]
    result: dict[str, Any]

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.ns}"

    @property
    def ip(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]


def node_conf(lab: Lab, host: Host) -> dict[str, Any]:
    """The Kubernetes manifest's flannel entry, pointed at this lab host's files."""
    return {"cniVersion": "1.0.0", "name": LAB, "type": "flannel",
            "subnetFile": lab.subnet_file(host), "dataDir": os.path.join(lab.host_dir(host), "cni-flannel"),
            "ipam": {"dataDir": os.path.join(lab.host_dir(host), "cni-ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def run_cni(host: Host, command: str, conf: dict[str, Any], container_id: str, netns: str
            ) -> subprocess.CompletedProcess[bytes]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    return subprocess.run(in_ns(host.ns, PLUGIN), input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=60, check=False)


def flannel_env(lab: Lab, host: Host) -> dict[str, str]:
    with open(lab.subnet_file(host)) as f:
        return parse_subnet_env(f.read())


def nat_rules(host: Host) -> str:
    return sh(in_ns(host.ns, "iptables", "-t", "nat", "-S")).stdout


def as_node(lab: Lab, host: Host) -> None:
    """Drop the lab's Docker emulation from the host: CNI's cni0 takes over its subnet."""
    ns_delete(host.container_ns)
    sh(["ip", "-n", host.ns, "link", "del", "docker0"])


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    if not all(shutil.which(p, path=CNI_PATH) for p in ("bridge", "host-local")):
        pytest.fail(f"bridge and host-local are not in {CNI_PATH}: run `make setup` (containernetworking-plugins)")
    with make_lab(LAB, 2) as lab:
        for host in lab.hosts:
            as_node(lab, host)
        yield lab


@pytest.fixture(scope="module")
def pods(lab: Lab) -> list[Pod]:
    pods = []
    for host in lab.hosts:
        ns, conf = f"{LAB}-p{host.index}", node_conf(lab, host)
        ns_add(ns)
        res = run_cni(host, "ADD", conf, f"pod{host.index}", f"/var/run/netns/{ns}")
        assert res.returncode == 0, (res.stdout + res.stderr).decode()
        pods.append(Pod(host, ns, f"pod{host.index}", conf, json.loads(res.stdout)))
    return pods


def test_add_returns_an_address_from_the_hosts_lease(pods: list[Pod]) -> None:
    for pod in pods:
        subnet = ipaddress.IPv4Interface(pod.host.subnet)  # FLANNEL_SUBNET, e.g. 10.0.53.1/24
        assert pod.result["cniVersion"] == "1.0.0"
        (addr,) = pod.result["ips"]
        assert ipaddress.IPv4Interface(addr["address"]).network == subnet.network
        assert addr["gateway"] == str(subnet.ip)
        eth0 = pod.result["interfaces"][addr["interface"]]
        assert eth0["name"] == "eth0" and eth0["sandbox"] == pod.netns
        assert {"name": "cni0"}.items() <= pod.result["interfaces"][0].items()
        assert {"dst": "10.0.0.0/16"} in pod.result["routes"]
        assert f"inet {addr['address']}" in ip(pod.ns, "-4", "addr", "show", "eth0")
        assert "mtu 1472" in ip(pod.ns, "link", "show", "eth0")


def test_saved_delegate_is_flannels_rendering(lab: Lab, pods: list[Pod]) -> None:
    for pod in pods:
        env = flannel_env(lab, pod.host)
        subnet = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network
        ipmasq = "false" if env["FLANNEL_IPMASQ"] == "true" else "true"
        ipam_dir = pod.conf["ipam"]["dataDir"]
        expected = (
            '{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":' + ipmasq + ',"ipam":{"dataDir":"' + ipam_dir
            + '","ranges":[[{"subnet":"' + str(subnet) + '"}]],"routes":[{"dst":"10.0.0.0/16"}],"type":"host-local"},'
            '"isDefaultGateway":true,"isGateway":true,"mtu":1472,"name":"pftn","type":"bridge"}')
        path = os.path.join(pod.conf["dataDir"], pod.container_id)
        with open(path) as f:
            assert f.read() == expected
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(pod.conf["dataDir"]).st_mode) == 0o700


def test_pods_ping_each_other_across_the_overlay(pods: list[Pod]) -> None:
    for src, dst in ((pods[0], pods[1]), (pods[1], pods[0])):
        cmd = in_ns(src.ns, "ping", "-n", "-c", "1", "-W", "2", dst.ip)
        wait_for(lambda cmd=cmd: sh(cmd, check=False).returncode == 0, timeout=20, what=f"ping {src.ns} -> {dst.ip}")
        res = sh(in_ns(src.ns, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst.ip), check=False)
        assert res.returncode == 0 and " 0% packet loss" in res.stdout, res.stdout + res.stderr


def test_check_delegates_with_the_previous_result(pods: list[Pod]) -> None:
    for pod in pods:
        res = run_cni(pod.host, "CHECK", {**pod.conf, "prevResult": pod.result}, pod.container_id, pod.netns)
        assert res.returncode == 0, (res.stdout + res.stderr).decode()
        assert res.stdout == b""
    pod = pods[0]
    res = run_cni(pod.host, "CHECK", {**pod.conf, "prevResult": pod.result}, "never-added", pod.netns)
    assert res.returncode == 1 and json.loads(res.stdout)["code"] == 3


def test_del_removes_veth_address_and_scratch_file_and_is_idempotent(lab: Lab, pods: list[Pod]) -> None:
    for pod in pods:
        ipam_dir = os.path.join(pod.conf["ipam"]["dataDir"], LAB)
        assert pod.ip in os.listdir(ipam_dir)
        assert ip(pod.host.ns, "-o", "link", "show", "master", "cni0").strip()
        masq_rule = f'id: \\"{pod.container_id}\\"'  # the bridge plugin's comment on its NAT rule
        masquerades = flannel_env(lab, pod.host)["FLANNEL_IPMASQ"] != "true"
        assert (masq_rule in nat_rules(pod.host)) == masquerades
        for _ in range(2):  # a second DEL finds nothing to do and still succeeds
            res = run_cni(pod.host, "DEL", pod.conf, pod.container_id, pod.netns)
            assert res.returncode == 0, (res.stdout + res.stderr).decode()
            assert res.stdout == b""
        assert ip(pod.host.ns, "-o", "link", "show", "master", "cni0").strip() == ""
        assert sh(["ip", "-n", pod.ns, "link", "show", "eth0"], check=False).returncode != 0
        assert pod.ip not in os.listdir(ipam_dir)
        assert masq_rule not in nat_rules(pod.host)
        assert not os.path.exists(os.path.join(pod.conf["dataDir"], pod.container_id))
