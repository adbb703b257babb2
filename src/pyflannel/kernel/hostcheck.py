"""The cheap host checks shared by ``flannelctl doctor`` and flanneld's start-up preflight:
``ip_forward``, ``br_netfilter`` where a bridge exists, and the iptables FORWARD chain. Each
reads the host and returns ``core.doctor``'s ``Check``; none changes anything."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

from ..core.doctor import OK, PROBLEM, WARNING, Check, forward_chain

BRIDGES = ("docker0", "cni0")


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def ip_forward() -> Check:
    if read("/proc/sys/net/ipv4/ip_forward") == "1":
        return Check("ip_forward", OK, "on")
    return Check("ip_forward", PROBLEM, "net.ipv4.ip_forward is 0: this host does not forward the containers' packets",
                 "sysctl -w net.ipv4.ip_forward=1 (and net.ipv4.ip_forward=1 in /etc/sysctl.d/)")


def br_netfilter(bridges: list[str]) -> Check | None:
    """Only where a bridge exists (None otherwise): is br_netfilter loaded?"""
    if not bridges:
        return None
    if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        return Check("br_netfilter", OK, "loaded")
    return Check("br_netfilter", WARNING, f"not loaded: traffic bridged on {bridges[0]} bypasses iptables "
                 "(kube-proxy services, network policies)",
                 "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/br_netfilter.conf")


def forward(network: ipaddress.IPv4Network, nftables: bool) -> Check:
    if nftables:
        return Check("forward", OK, "nftables: the FORWARD check reads iptables only (not checked)")
    if shutil.which("iptables") is None:
        return Check("forward", WARNING, "iptables is not installed: FORWARD not checked")
    try:
        run = subprocess.run(["iptables", "-w", "5", "-S", "FORWARD"], capture_output=True, text=True, check=False,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("forward", WARNING, f"cannot read FORWARD: {err}", "run as root")
    if run.returncode != 0:
        return Check("forward", WARNING, f"cannot read FORWARD: {run.stderr.strip()}", "run as root")
    return forward_chain(run.stdout, network)
