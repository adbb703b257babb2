"""The differential config test (issue 14, item 4): a corpus of network configs given to Go flannel
v0.28.9 and to pyflannel, one after the other on the same lab host, each under its own etcd prefix.

Every config ends one of three ways for each daemon: ``ok`` (subnet.env written: the config was
accepted and a lease taken), ``invalid`` (the config is refused and the daemon keeps waiting for a
good one: Go logs "Couldn't fetch network config", ours "invalid network config at") or ``exit``
(the daemon stops with that code). Both must end the same way, and an accepted config must give
the same subnet.env byte for byte (ours runs second and takes Go's lease: the same subnet).

Where pyflannel differs on purpose, the entry names the difference and both outcomes, and
docs/compatibility.md#network-config lists it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import sh

from .helpers import ip

FLAGS = ("-iface=eth0",)
GO_INVALID, OURS_INVALID = "Couldn't fetch network config:", "invalid network config at"


@dataclass(frozen=True)
class Case:
    config: str
    differs: str = ""  # why pyflannel ends otherwise, on purpose
    go: str = ""  # the two outcomes when it differs
    ours: str = ""


def c(**kw: object) -> str:
    return json.dumps(kw, separators=(",", ":"))


NET = "10.0.0.0/16"


def be(**backend: object) -> str:
    return c(Network=NET, Backend=backend)


LATER = ("pyflannel checks the backend type and options when it reads the config, and waits for a "
         "fixed config as for any invalid one; Go flannel finds them only when it sets the backend up, "
         "and exits 1")
NOT_IMPLEMENTED = "a Go flannel backend pyflannel does not implement: an invalid config for it"
CORPUS: dict[str, Case] = {
    # the network and its subnets (every rule of CheckNetworkConfig, edges either side)
    "article": Case('{ "Network": "10.0.0.0/16" }'),
    "lower-case key": Case('{"network": "10.3.0.0/16"}'),
    "upper-case keys": Case('{"NETWORK": "10.3.0.0/16", "subnetlen": 25}'),
    "duplicate key, last wins": Case('{"Network": "10.0.0.0/16", "network": "10.1.0.0/16"}'),
    "unknown key": Case(c(Network=NET, Foo=1)),
    "empty object": Case("{}"),
    "Network empty": Case(c(Network="")),
    "Network null": Case('{"Network": null}'),
    "Network without prefix": Case(c(Network="10.0.0.0")),
    "Network with host bits": Case(c(Network="10.0.1.5/16")),
    "Network IPv6": Case(c(Network="fc00::/64")),
    "Network a number": Case('{"Network": 10}'),
    "Network /8": Case(c(Network="10.0.0.0/8")),
    "Network /22: SubnetLen 24": Case(c(Network="10.0.0.0/22")),
    "Network /23: SubnetLen 25": Case(c(Network="10.0.0.0/23")),
    "Network /28: SubnetLen 30": Case(c(Network="10.0.0.0/28")),
    "Network /29: too small": Case(c(Network="10.0.0.0/29")),
    "SubnetLen 0: the default": Case(c(Network=NET, SubnetLen=0)),
    "SubnetLen null": Case('{"Network": "10.0.0.0/16", "SubnetLen": null}'),
    "SubnetLen 30": Case(c(Network="10.0.0.0/24", SubnetLen=30)),
    "SubnetLen 31": Case(c(Network=NET, SubnetLen=31)),
    "SubnetLen prefix+1": Case(c(Network=NET, SubnetLen=17)),
    "SubnetLen prefix+2": Case(c(Network=NET, SubnetLen=18)),
    "SubnetLen a string": Case(c(Network=NET, SubnetLen="24")),
    "SubnetLen negative": Case(c(Network=NET, SubnetLen=-1)),
    "SubnetLen 24.5": Case('{"Network": "10.0.0.0/16", "SubnetLen": 24.5}'),
    "SubnetLen 24.0": Case('{"Network": "10.0.0.0/16", "SubnetLen": 24.0}'),
    "SubnetLen 2.4e1": Case('{"Network": "10.0.0.0/16", "SubnetLen": 2.4e1}'),
    "SubnetMin outside": Case(c(Network=NET, SubnetMin="10.1.0.0")),
    "SubnetMax outside": Case(c(Network=NET, SubnetMax="10.1.0.0")),
    "SubnetMin unaligned": Case(c(Network=NET, SubnetMin="10.0.5.7")),
    "SubnetMax unaligned": Case(c(Network=NET, SubnetMax="10.0.5.7")),
    "SubnetMin > SubnetMax": Case(c(Network=NET, SubnetMin="10.0.9.0", SubnetMax="10.0.8.0")),
    "SubnetMin = SubnetMax": Case(c(Network=NET, SubnetMin="10.0.9.0", SubnetMax="10.0.9.0")),
    "SubnetMin the network address": Case(c(Network=NET, SubnetMin="10.0.0.0", SubnetMax="10.0.0.0")),
    "SubnetMin a number": Case(c(Network=NET, SubnetMin=167772160)),
    "EnableIPv4 a string": Case(c(Network=NET, EnableIPv4="true")),
    "EnableIPv4 false, no IPv6": Case(c(Network=NET, EnableIPv4=False), LATER, "exit", "invalid"),
    "EnableIPv6 without IPv6Network": Case(c(Network=NET, EnableIPv6=True)),
    "IPv6SubnetLen 127": Case(c(Network=NET, EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetLen=127)),
    "IPv6SubnetLen prefix+1": Case(c(Network=NET, EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetLen=49)),
    "IPv6Network /125: too small": Case(c(Network=NET, EnableIPv6=True, IPv6Network="fc00::/125")),
    "IPv6SubnetMin outside": Case(c(Network=NET, EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMin="fd00::")),
    "EnableNFTables": Case(c(Network=NET, EnableNFTables=True)),
    # not a JSON object
    "invalid JSON": Case('{"Network": "10.0.0.0/16"'),
    "trailing garbage": Case('{"Network": "10.0.0.0/16"} x'),
    "a JSON array": Case("[]"),
    "a JSON string": Case('"10.0.0.0/16"'),
    "JSON null": Case("null"),
    # the Backend object
    "Backend a string": Case(c(Network=NET, Backend="vxlan")),
    "Backend an array": Case(c(Network=NET, Backend=["vxlan"])),
    "Backend null": Case('{"Network": "10.0.0.0/16", "Backend": null}', LATER, "exit", "invalid"),
    "Backend without Type": Case(be(), LATER, "exit", "invalid"),
    "Backend.Type a number": Case(be(Type=1)),
    "Backend.Type unknown": Case(be(Type="nosuch"), LATER, "exit", "invalid"),
    "Backend.Type VXLAN": Case(be(Type="VXLAN")),
    "Backend.Type Host-GW": Case(be(Type="Host-GW")),
    "ipip": Case(be(Type="ipip"), NOT_IMPLEMENTED, "not invalid", "invalid"),
    "alloc": Case(be(Type="alloc"), NOT_IMPLEMENTED, "ok", "invalid"),
    # udp
    "udp Port": Case(be(Type="udp", Port=8286)),
    "udp lower-case keys": Case('{"Network": "10.0.0.0/16", "Backend": {"type": "udp", "port": 8287}}'),
    "udp unknown option": Case(be(Type="udp", VNI=3)),
    "udp Port a string": Case(be(Type="udp", Port="8286"), LATER, "exit", "invalid"),
    "udp Port 70000": Case(be(Type="udp", Port=70000), LATER, "exit", "invalid"),
    "udp Port -1": Case(be(Type="udp", Port=-1), LATER, "exit", "invalid"),
    "udp Port 0": Case(be(Type="udp", Port=0), "Go flannel binds an ephemeral port and sends to port 0: its udp "
                       "data path cannot work; pyflannel refuses the config", "ok", "invalid"),
    # vxlan
    "vxlan": Case(be(Type="vxlan")),
    "vxlan VNI 2": Case(be(Type="vxlan", VNI=2)),
    "vxlan VNI 0": Case(be(Type="vxlan", VNI=0)),
    "vxlan VNI 16777215 (flannel.16777215 is too long a name)": Case(be(Type="vxlan", VNI=16777215)),
    "vxlan VNI 16777216": Case(be(Type="vxlan", VNI=16777216), LATER, "exit", "invalid"),
    "vxlan VNI -1": Case(be(Type="vxlan", VNI=-1), LATER, "exit", "invalid"),
    "vxlan VNI a string": Case(be(Type="vxlan", VNI="1"), LATER, "exit", "invalid"),
    "vxlan Port 4789": Case(be(Type="vxlan", Port=4789)),
    "vxlan Port 70000": Case(be(Type="vxlan", Port=70000), "Go flannel cuts the port to 16 bits (70000 -> 4464); "
                             "pyflannel refuses the config", "ok", "invalid"),
    "vxlan MTU 1400": Case(be(Type="vxlan", MTU=1400)),
    "vxlan MTU 100": Case(be(Type="vxlan", MTU=100), LATER, "exit", "invalid"),
    "vxlan MTU 9000 over a 1500 underlay": Case(
        be(Type="vxlan", MTU=9000), "the kernel creates flannel.1 with the underlay's MTU - 50 instead; Go flannel "
        "writes FLANNEL_MTU=8950 anyway (Docker would send what flannel.1 drops); pyflannel exits 1 with the "
        "kernel's refusal", "ok", "exit"),
    "vxlan GBP (not in this kernel)": Case(be(Type="vxlan", GBP=True)),
    "vxlan GBP a string": Case(be(Type="vxlan", GBP="true"), LATER, "exit", "invalid"),
    "vxlan Learning": Case(be(Type="vxlan", Learning=True)),
    "vxlan DirectRouting": Case(be(Type="vxlan", DirectRouting=True)),
    "vxlan unknown option": Case(be(Type="vxlan", Foo=1)),
    "vxlan MacPrefix (Windows only)": Case(be(Type="vxlan", MacPrefix="0E:6A")),
    "vxlan lower-case keys": Case('{"Network": "10.0.0.0/16", "Backend": {"type": "vxlan", "vni": 4, '
                                  '"directrouting": true}}'),
    "vxlan, a /28 network": Case(c(Network="10.0.0.0/28", SubnetLen=30, Backend={"Type": "vxlan"})),
    "vxlan, nftables": Case(c(Network=NET, EnableNFTables=True, Backend={"Type": "vxlan"})),
    # host-gw
    "host-gw": Case(be(Type="host-gw")),
    "host-gw unknown option": Case(be(Type="host-gw", Port=1)),
}


@pytest.fixture(scope="module")
def lab(make_lab, go_flanneld: str) -> Iterator[Lab]:
    with make_lab("pfgc", 1, "udp", go_hosts=(1,)) as lab:
        lab.stop_flanneld(lab.hosts[0])
        yield lab


def run(lab: Lab, host: Host, name: str, n: int, go: bool) -> tuple[str, str]:
    """(outcome, subnet.env text or exit code) of one daemon on config ``n``."""
    host.go = go
    who = "go" if go else "ours"
    env = os.path.join(lab.host_dir(host), f"{n}-{who}.env")
    log_path = os.path.join(lab.host_dir(host), f"{n}-{who}.log")
    cmd = lab.flanneld_command(host, FLAGS, prefix=f"/diff/{n}", subnet_file=env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    invalid = GO_INVALID if go else OURS_INVALID
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if os.path.exists(env):
                with open(env) as f:
                    return "ok", f.read()
            if proc.poll() is not None:
                return "exit", str(proc.returncode)
            with open(log_path, errors="replace") as f:
                if invalid in f.read():
                    return "invalid", ""
            time.sleep(0.05)
        return "timeout", ""
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("name", list(CORPUS))
def test_both_end_the_same_way(lab: Lab, name: str) -> None:
    case = CORPUS[name]
    n = list(CORPUS).index(name)
    host = lab.hosts[0]
    lab.etcdctl("put", f"/diff/{n}/config", case.config)
    for dev in json.loads(ip(host.ns, "-j", "link", "show")):  # each config from a host without flannel devices
        if dev["ifname"].startswith("flannel"):
            sh(["ip", "-n", host.ns, "link", "del", dev["ifname"]])
    go = run(lab, host, name, n, go=True)
    if name == "vxlan MTU 9000 over a 1500 underlay":  # what Go flannel left
        assert "FLANNEL_MTU=8950" in go[1] and "mtu 1450 " in ip(host.ns, "link", "show", "flannel.1")
    ours = run(lab, host, name, n, go=False)
    if case.differs:
        go_ok = go[0] != "invalid" if case.go == "not invalid" else go[0] == case.go  # kernel-dependent
        assert go_ok and ours[0] == case.ours, (go, ours, case.differs)
    else:
        assert ours == go
        assert go[0] != "timeout"
