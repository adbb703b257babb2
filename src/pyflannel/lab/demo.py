"""`make demo`: the article's scenario, end to end, printed step by step; always torn down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from . import kube_lab
from .cluster import ARTICLE_CONFIG, PREFIX, Host, Lab
from .netns import in_ns
from .pcap import DecodeError, describe_flannel_udp, first_packet

Out = Callable[[str], None]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def capture_one(lab: Lab, src: Host, dst: Host, port: int = 8285) -> list[str]:
    """tcpdump on the underlay switch while one ping crosses; decode the datagram."""
    path = os.path.join(lab.state_dir, "capture.pcap")
    cmd = in_ns(lab.underlay_ns, "tcpdump", "-i", "br0", "-U", "-c", "1", "-w", path,
                f"udp dst port {port} and src host {src.ip}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in proc.stderr.readline() and time.monotonic() < deadline:
            pass
        lab.ping(src, dst, count=1)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(path, "rb") as f:
        linktype, frame = first_packet(f.read())
    return describe_flannel_udp(frame, linktype)


def kube_nodes(lab: Lab, out: Out) -> None:
    """Each Node's podCIDR and the flannel annotations its flanneld wrote."""
    assert lab.kube_api is not None
    for h in lab.hosts:
        node = lab.kube_api.node(kube_lab.node_name(h.index))
        out(f"   node {node['metadata']['name']}  spec.podCIDR={node.get('spec', {}).get('podCIDR')}")
        for key, value in sorted((node["metadata"].get("annotations") or {}).items()):
            if key.startswith("flannel.alpha.coreos.com/"):
                out(f"      {key}: {value}")


def run_demo(name: str = "pfl", hosts: int = 3, backend: str = "udp", keep: bool = False,
             out: Out = print, *, kube: bool = False) -> int:
    lab = Lab(name=name, hosts_n=hosts, backend=backend, kube=kube)
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        out(f"== pyflannel lab '{name}': {hosts} hosts, backend {backend}, underlay 198.18.0.0/24")
        if kube:
            out(f"   kube-apiserver at https://198.18.0.2:6443 (etcd behind it); one Node per host with "
                f"spec.podCIDR 10.0.I.0/24; flanneld -kube-subnet-mgr -net-config-path={lab.net_conf_path}")
        else:
            out(f"   etcdctl put {PREFIX}/config '{ARTICLE_CONFIG if backend == 'udp' else '...'}'")
        lab.up()
        if kube:
            out("\n== flanneld took each node's podCIDR and annotated its Node:")
            kube_nodes(lab, out)
            out("\n== subnet.env per host; docker0 got its bridge from mk-docker-opts:")
        else:
            out("\n== flanneld leased one /24 per host; docker0 got its bridge from mk-docker-opts:")
        for h in lab.hosts:
            out(f"   {h.ns}  {h.ip:<12} FLANNEL_SUBNET={h.subnet:<15} dockerd {h.docker_opts}")
        out("\n== container to container, across hosts:")
        ok = 0
        pairs = [(a, b) for a in lab.hosts for b in lab.hosts if a is not b]
        for a, b in pairs:
            good, text = lab.ping(a, b)
            ok += good
            rtt = next((ln.split("=")[-1].strip() for ln in text.splitlines() if "min/avg" in ln), "")
            out(f"   {a.container_ns} ({a.container_ip}) -> {b.container_ns} ({b.container_ip}): "
                f"{'ok' if good else 'FAILED'}  {rtt}")
        for h in lab.hosts:
            out(f"\n== [root@{h.ns} ~]# route -n")
            out("\n".join("   " + ln for ln in lab.route_table(h).rstrip().splitlines()))
        if backend == "wireguard":
            for h in lab.hosts:
                out(f"\n== [root@{h.ns} ~]# wg show flannel-wg   (its own /run/wireguard)")
                out("\n".join("   " + ln for ln in lab.wg(h, "show", "flannel-wg", check=False).rstrip().splitlines()))
        port = {"udp": 8285, "vxlan": 8472}.get(backend)
        if port and len(lab.hosts) >= 2:
            out(f"\n== one packet captured on the underlay ({lab.hosts[0].ip} -> {lab.hosts[1].ip}):")
            try:
                for ln in capture_one(lab, lab.hosts[0], lab.hosts[1], port):
                    out("   " + ln)
            except (DecodeError, OSError, subprocess.TimeoutExpired) as err:
                out(f"   capture failed: {err}")
        out(f"\n== summary: {ok}/{len(pairs)} container pairs reached each other over the {backend} backend")
        if keep:
            out(f"   the lab is still running (--keep): `flannelctl lab status --name {name}`, "
                f"`flannelctl lab down --name {name}`")
        return 0 if ok == len(pairs) else 1
    finally:
        if not keep:
            lab.down()
        for s, handler in old.items():
            signal.signal(s, handler)
