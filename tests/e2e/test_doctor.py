"""`flannelctl doctor` on a lab host: all ok when healthy; each fault made for real, then undone,
and doctor names it (with its fix) and exits 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.netns import sh

from .helpers import log_text, wait_for


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfdr", 2, "udp") as lab:
        yield lab


def doctor(lab: Lab) -> tuple[int, dict[str, list[dict[str, str]]]]:
    h = lab.hosts[0]
    out = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-m", "pyflannel.cli.flannelctl",
                          f"-etcd-endpoints={lab.etcd_endpoint}", f"-etcd-prefix={PREFIX}",
                          f"-subnet-file={lab.subnet_file(h)}", "doctor", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.stderr == "", out.stderr
    by_name: dict[str, list[dict[str, str]]] = {}
    for c in json.loads(out.stdout)["Checks"]:
        by_name.setdefault(c["Name"], []).append({k.lower(): v for k, v in c.items()})
    return out.returncode, by_name


def problem(checks: dict[str, list[dict[str, str]]], name: str) -> dict[str, str]:
    found = [c for c in checks.get(name, []) if c["level"] == "problem"]
    assert found, f"doctor did not name a {name} problem: {checks}"
    assert found[0]["fix"], found[0]
    return found[0]


@contextlib.contextmanager
def flanneld_paused(lab: Lab) -> Iterator[None]:
    """flanneld repairs what a test breaks within a second: SIGSTOP it (it still holds its lock)."""
    pid = lab.flanneld_pid(lab.hosts[0])
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_healthy_host_is_all_ok(lab: Lab) -> None:
    rc, checks = doctor(lab)
    levels = {(c["name"], c["level"]) for cs in checks.values() for c in cs}
    assert rc == 0 and {lvl for _, lvl in levels} == {"ok"}, checks
    for name in ("etcd", "clock", "config", "subnet.env", "flanneld", "lease", "device", "ip_forward",
                 "br_netfilter", "mtu", "forward", "routes", "peers"):
        assert name in checks, f"no {name} check"
    assert "1 peer subnet(s) routed via flannel0" in checks["routes"][0]["text"]
    assert checks["peers"][0]["text"] == "all 1 peer(s) answer through the overlay (udp/8285)"


def test_encapsulation_port_blocked_on_the_peer(lab: Lab) -> None:
    peer = lab.hosts[1]
    rule = ["INPUT", "-p", "udp", "--dport", "8285", "-j", "DROP"]
    sh(["ip", "netns", "exec", peer.ns, "iptables", "-w", "5", "-I", *rule])
    try:
        rc, checks = doctor(lab)
    finally:
        sh(["ip", "netns", "exec", peer.ns, "iptables", "-w", "5", "-D", *rule])
    found = problem(checks, "peers")
    assert rc == 1 and "1 of 1 peer(s) answer on the underlay but not through udp/8285" in found["text"], found
    assert f"({peer.ip})" in found["text"] and "--dport 8285 -j ACCEPT" in found["fix"]


def test_ip_forward_off(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
    try:
        rc, checks = doctor(lab)
    finally:
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    assert rc == 1 and "ip_forward is 0" in problem(checks, "ip_forward")["text"]


def test_forward_drop_ahead_of_our_rules(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    sh(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-I", "FORWARD", "1", "-j", "DROP"])
    try:
        rc, checks = doctor(lab)
    finally:
        sh(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-D", "FORWARD", "-j", "DROP"])
    assert rc == 1 and "FORWARD rule 1 (-A FORWARD -j DROP) drops 10.0.0.0/16" in problem(checks, "forward")["text"]


def test_docker0_mtu_too_big(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    sh(["ip", "-n", ns, "link", "set", "docker0", "mtu", "1500"])
    try:
        rc, checks = doctor(lab)
    finally:
        sh(["ip", "-n", ns, "link", "set", "docker0", "mtu", "1472"])
    assert rc == 1 and "docker0 mtu 1500 > FLANNEL_MTU=1472" in problem(checks, "mtu")["text"]


def test_route_deleted_by_hand(lab: Lab) -> None:
    ns = lab.hosts[0].ns
    with flanneld_paused(lab):
        sh(["ip", "-n", ns, "route", "del", "10.0.0.0/16", "dev", "flannel0"])
        rc, checks = doctor(lab)
    wait_for(lambda: "10.0.0.0/16 dev flannel0" in sh(["ip", "-n", ns, "route"]).stdout, what="flanneld's repair")
    assert rc == 1
    assert "1 of 1 peer subnet(s) not routed via flannel0" in problem(checks, "routes")["text"]


def test_stale_subnet_env(lab: Lab) -> None:
    path = lab.subnet_file(lab.hosts[0])
    with open(path) as f:
        good = f.read()
    with flanneld_paused(lab):
        with open(path, "w") as f:
            f.write(good.replace(f"FLANNEL_SUBNET={lab.hosts[0].subnet}", "FLANNEL_SUBNET=10.0.250.1/24"))
        try:
            rc, checks = doctor(lab)
        finally:
            with open(path, "w") as f:
                f.write(good)
    text = problem(checks, "lease")["text"]
    assert rc == 1 and "names 10.0.250.0/24, not in etcd; this host's lease is 10.0." in text


def test_etcd_down_is_said_and_the_rest_checked(lab: Lab) -> None:
    lab.stop_etcd()
    try:
        rc, checks = doctor(lab)
    finally:
        lab.start_etcd()
    assert rc == 1 and "does not answer" in problem(checks, "etcd")["text"]
    assert checks["config"][0]["text"] == "not checked: etcd is down"
    assert checks["ip_forward"][0]["level"] == "ok" and checks["flanneld"][0]["level"] == "ok"


def restart_flanneld(lab: Lab) -> int:
    """Restart host 1's flanneld; the offset of its log where the new run starts."""
    h = lab.hosts[0]
    lab.stop_flanneld(h)
    start = len(log_text(lab, h))
    lab.start_flanneld(h)
    return start


def test_preflight_warns_with_the_fix_and_flanneld_runs_on(lab: Lab) -> None:
    h = lab.hosts[0]
    ns = h.ns
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
    sh(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-I", "FORWARD", "1", "-j", "DROP"])
    try:
        start = restart_flanneld(lab)
        wait_for(lambda: "preflight: forward:" in log_text(lab, h)[start:], timeout=30, what="the preflight's warnings")
        wait_for(lambda: "flannel is ready" in log_text(lab, h)[start:], timeout=30, what="flanneld ready")
    finally:
        sh(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-D", "FORWARD", "-j", "DROP"])
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    log = log_text(lab, h)[start:]
    assert "preflight: ip_forward: net.ipv4.ip_forward is 0" in log and "fix: sysctl -w net.ipv4.ip_forward=1" in log
    assert "preflight: forward: FORWARD rule 1 (-A FORWARD -j DROP) drops 10.0.0.0/16" in log, log
    assert lab.flanneld_pid(h) is not None, "a preflight problem never stops flanneld"
