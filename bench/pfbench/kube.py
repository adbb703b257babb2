"""Kube mode (issue 16), beside the etcd figures: the same 1000 synthetic vxlan peers as the etcd
cold start, as Node objects (spec.podCIDR and flannel's annotations) in a real kube-apiserver
(lab ``pfb-kube``; built by ``make setup``).

(a) Cold start: a flanneld with -kube-subnet-mgr on a fresh host namespace (its own Node made
    first, as the node IPAM controller would) -> every peer's route, neighbour and FDB entry in
    its kernel (netlink events, cross-checked by a dump), as ``controlplane.coldstart`` measures.
(b) Convergence: a Node added (one POST, made with curl inside the API server's namespace, whose
    ~20-50 ms are included) -> the route to its podCIDR in the running host's kernel.
"""

from __future__ import annotations

import ipaddress
import time

from pyflannel.lab import kube_apiserver
from pyflannel.lab.bench_hosts import LightLab

from .common import log, percentile
from .controlplane import COLD_CONFIG, Expected, Results, _cold_run, _retire_kube, synthetic_peers
from .nlwatch import RTMGRP_IPV4_ROUTE, Watcher

A = "flannel.alpha.coreos.com/"


class _Prefixed:
    """Results that file every metric under ``kube_<metric>``."""

    def __init__(self, res: Results) -> None:
        self.res = res

    def add(self, metric: str, hosts: int, value: float, unit: str, capped: bool = False, impl: str = "") -> None:
        self.res.add(f"kube_{metric}", hosts, value, unit, capped, impl)


def node_object(name: str, peer: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {
        A + "kube-subnet-manager": "true", A + "backend-type": peer["type"], A + "public-ip": peer["public_ip"],
        A + "backend-data": f'{{"VNI":1,"VtepMAC":"{peer["data"]["VtepMAC"]}"}}'}},
        "spec": {"podCIDR": peer["subnet"], "podCIDRs": [peer["subnet"]]}}


def kube_bench(res: Results, peers_n: int, runs: int, cap_s: float, conv_rounds: int, notes: list[str]) -> None:
    if kube_apiserver.binary() is None:
        notes.append(f"kube mode not measured: {kube_apiserver.missing()}")
        return
    lab = LightLab(name="pfb-kube", kube=True)
    lab.up_base(COLD_CONFIG)
    assert lab.kube_api is not None
    peers = synthetic_peers(peers_n)
    t0 = time.monotonic()
    lab.kube_api.create_nodes([node_object(f"peer-{i}", p) for i, p in enumerate(peers)])
    log(f"kube cold start: created {peers_n} Node objects in {time.monotonic() - t0:.1f} s")
    expected = Expected.of(peers)
    host = None
    for r in range(runs):
        if host is not None:
            _retire_kube(lab, host)
        host = lab.add_host(r + 1, start=False)
        _cold_run(lab, host, expected, _Prefixed(res), peers_n, cap_s, notes, r, runs, "")  # type: ignore[arg-type]
    assert host is not None
    convergence(lab, host, res, peers_n, conv_rounds, cap_s, notes)


def convergence(lab: LightLab, host, res: Results, peers_n: int, rounds: int, cap_s: float,  # type: ignore[no-untyped-def]
                notes: list[str]) -> None:
    assert lab.kube_api is not None
    with Watcher([host.ns], RTMGRP_IPV4_ROUTE) as watch:
        lat: list[float] = []
        for r in range(rounds):
            subnet = f"10.14.{r}.0/24"
            peer = {"subnet": subnet, "public_ip": str(ipaddress.IPv4Address("198.19.200.1") + r), "type": "vxlan",
                    "data": {"VtepMAC": f"02:cc:00:00:00:{r:02x}"}}
            t0 = time.monotonic()
            lab.kube_api.call("POST", "/api/v1/nodes", node_object(f"late-{r}", peer))
            seen = None
            while seen is None and time.monotonic() < t0 + cap_s:
                events, _ = watch.poll(0.2)
                seen = next((ev.when for ev in events if ev.kind == "route" and ev.dst == subnet and ev.added), None)
            if seen is None:
                notes.append(f"kube convergence round {r + 1}: no route to {subnet} after the {cap_s:g}s cap")
                continue
            lat.append((seen - t0) * 1000)
            res.add("kube_convergence_ms", peers_n + 1, lat[-1], "ms")
            log(f"kube convergence round {r + 1}/{rounds}: Node POST -> route {lat[-1]:.0f} ms")
            lab.kube_api.delete_node(f"late-{r}")
            time.sleep(0.5)
        if lat:
            log(f"kube convergence: p50 {percentile(lat, 50):.0f} ms over {len(lat)} rounds")
