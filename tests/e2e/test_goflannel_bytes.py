"""Byte for byte where Go flannel is the reference (issue 14, item 3), against Go flannel v0.28.9
itself (built by setup):

- for the same lease and config, the ``subnet.env`` Go writes equals ours, byte for byte (one
  host switched Go -> ours -> Go, for udp, vxlan and host-gw, with and without ``-ip-masq``);
- the iptables rules each installs are the same (``iptables-save`` and ``ip6tables-save`` with
  counters and comments dropped), and the nftables rules with ``"EnableNFTables": true``;
- the lease JSON each writes is the same bytes but for the host's own values, and each decodes
  the other's into the same attributes (Go's decoding read from its log, ours from /peers);
- mk-docker-opts: ours against flannel's ``dist/mk-docker-opts.sh`` under dash for every option
  combination, inside a namespace of its own (the script reads ``ip route``).

Each difference is named where it is tested and listed in docs/compatibility.md.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab import goflannel
from pyflannel.lab.cluster import PREFIX, Host, Lab
from pyflannel.lab.netns import in_ns, sh

from .helpers import ip, lease_key, log_text, subnet_of, wait_for

HEALTHZ = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")
FLAGS = ("-iface=eth0", *HEALTHZ)
NAMES = {"udp": "pfbu", "vxlan": "pfbv", "host-gw": "pfbg"}
NS = "pfbm"  # the mk-docker-opts namespace (the ``ns`` fixture)


@pytest.fixture(scope="module", params=list(NAMES))
def lab(request: pytest.FixtureRequest, make_lab, go_flanneld: str) -> Iterator[Lab]:
    """h1 starts on Go flanneld and is switched between the two; h2 runs ours throughout."""
    with make_lab(NAMES[request.param], 2, request.param, subnet_max="10.0.199.0", go_hosts=(1,),
                  host_extra={1: FLAGS, 2: FLAGS}) as lab:
        yield lab


def switch(lab: Lab, host: Host, *, go: bool, extra: tuple[str, ...] = (), flush: bool = True) -> None:
    """Restart ``host`` on Go flanneld or ours with the same flags; ``flush``: from a clean
    netfilter (so that what is compared is what this one installed)."""
    lab.stop_flanneld(host)
    if flush:
        sh(in_ns(host.ns, "nft", "flush", "ruleset"))
    host.go = go
    ready = log_text(lab, host).count("flannel is ready")
    lab.start_flanneld(host, extra)
    wait_for(lambda: log_text(lab, host).count("flannel is ready") > ready, timeout=30,
             what=f"{'Go' if go else 'our'} flanneld ready on {host.ns}")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def rules_iptables(host: Host) -> dict[str, list[str]]:
    """iptables-save and ip6tables-save without comments and counters."""
    out = {}
    for tool in ("iptables-save", "ip6tables-save"):
        text = sh(in_ns(host.ns, tool)).stdout
        out[tool] = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
                     if line and not line.startswith("#")]
    return out


def rules_nft(host: Host) -> list[str]:
    text = sh(in_ns(host.ns, "nft", "list", "ruleset")).stdout
    return [re.sub(r"counter packets \d+ bytes \d+", "counter", line) for line in text.splitlines()]


# ---- subnet.env and the iptables rules ------------------------------------------------------------

@pytest.mark.parametrize("masq", [False, True], ids=["plain", "ip-masq"])
def test_subnet_env_and_iptables_are_the_same(lab: Lab, masq: bool) -> None:
    h1 = lab.hosts[0]
    extra = ("-ip-masq",) if masq else ()
    seen = []
    for go in (True, False, True):  # Go, then ours on Go's lease, then Go again on ours
        switch(lab, h1, go=go, extra=extra)
        seen.append((read(lab.subnet_file(h1)), rules_iptables(h1), lease_key(h1)))
    (go_env, go_rules, key), (py_env, py_rules, py_key), (go2_env, go2_rules, go2_key) = seen
    assert key == py_key == go2_key, "the same lease throughout"
    assert py_env == go_env == go2_env
    mtu = {"udp": 1472, "vxlan": 1450, "host-gw": 1500}[lab.backend]
    assert go_env == (f"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET={h1.subnet}\nFLANNEL_MTU={mtu}\n"
                      f"FLANNEL_IPMASQ={'true' if masq else 'false'}\n").encode()
    assert py_rules == go_rules == go2_rules
    assert any("FLANNEL-FWD" in line for line in go_rules["iptables-save"])
    assert any("FLANNEL-POSTRTG" in line for line in go_rules["iptables-save"]) == masq


def test_nftables_rules_are_the_same(lab: Lab) -> None:
    """``"EnableNFTables": true``: Go's tables flannel-ipv4 (and flannel-ipv6) against ours."""
    if lab.backend != "vxlan":
        pytest.skip("the rules do not depend on the backend: once, on vxlan")
    h1 = lab.hosts[0]
    config = json.loads(lab.etcdctl("get", f"{PREFIX}/config", "--print-value-only"))
    lab.put_config(json.dumps(config | {"EnableNFTables": True}))
    try:
        seen = []
        for go in (True, False):
            switch(lab, h1, go=go, extra=("-ip-masq",))
            seen.append(rules_nft(h1))
        go_rules, py_rules = seen
        assert any("table ip flannel-ipv4" in line for line in go_rules), go_rules
        assert py_rules == go_rules
        assert sh(in_ns(h1.ns, "iptables-save")).stdout.count("FLANNEL") == 0
    finally:
        lab.put_config(json.dumps(config))
        switch(lab, h1, go=True)


# ---- lease JSON ---------------------------------------------------------------------------------

_PEERS = """
import json, urllib.request
print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:8081/peers", timeout=3))))
"""


def lease_value(lab: Lab, host: Host) -> bytes:
    out = lab.etcdctl("get", lease_key(host), "-w", "json")
    return base64.b64decode(json.loads(out)["kvs"][0]["value"])


def lease_ttl(lab: Lab, host: Host) -> int:
    kv = json.loads(lab.etcdctl("get", lease_key(host), "-w", "json"))["kvs"][0]
    out = lab.etcdctl("lease", "timetolive", format(kv["lease"], "x"))
    return int(re.search(r"granted with TTL\((\d+)s\)", out).group(1))


def go_decoded(lab: Lab, go: Host, peer: Host) -> dict[str, object]:
    """How Go flanneld on ``go`` decoded ``peer``'s lease: its log's "Batch elem" line (%+v of a
    lease.Event), the last one about that subnet."""
    net = ipaddress.IPv4Network(subnet_of(peer))
    want = f"Subnet:ip.IP4Net{{IP:{int(net.network_address):#x}, PrefixLen:{net.prefixlen:#x}}}"
    lines = [ln for ln in log_text(lab, go).splitlines() if "Batch elem" in ln and want in ln]
    assert lines, f"Go flanneld on {go.ns} logged no event for {net}"
    attrs = re.search(r'Attrs:lease\.LeaseAttrs\{PublicIP:(0x[0-9a-f]+), PublicIPv6:\(\*ip\.IP6\)\(nil\), '
                      r'BackendType:"([^"]*)", BackendData:json\.RawMessage(\(nil\)|\{[^}]*\})', lines[-1])
    assert attrs, lines[-1]
    raw = attrs.group(3)
    data = None if raw == "(nil)" else bytes(int(b, 16) for b in raw.strip("{}").split(", "))
    return {"PublicIP": str(ipaddress.IPv4Address(int(attrs.group(1), 16))), "BackendType": attrs.group(2),
            "BackendData": data}


def test_lease_json_is_the_same_and_decodes_the_same(lab: Lab) -> None:
    h1, h2 = lab.hosts
    if not h1.go:
        switch(lab, h1, go=True)
    values = {h.index: lease_value(lab, h) for h in (h1, h2)}

    def neutral(h: Host) -> bytes:
        text = values[h.index].decode()
        text = text.replace(h.ip, "PUBLICIP")
        return re.sub(r'"VtepMAC":"[0-9a-f:]{17}"', '"VtepMAC":"MAC"', text).encode()

    assert neutral(h1) == neutral(h2), values  # byte for byte but for the host's own values
    assert lease_ttl(lab, h1) == lease_ttl(lab, h2) == 24 * 3600

    # Go decodes ours into exactly what we wrote ...
    wait_for(lambda: any("Batch elem" in ln for ln in log_text(lab, h1).splitlines()), what="Go's lease events")
    ours = json.loads(values[h2.index])
    got = go_decoded(lab, h1, h2)
    assert got["PublicIP"] == ours["PublicIP"] == h2.ip
    assert got["BackendType"] == ours.get("BackendType", "")
    if "BackendData" in ours:
        assert got["BackendData"] == json.dumps(ours["BackendData"], separators=(",", ":")).encode()
    else:
        assert got["BackendData"] is None
    # ... and ours decodes Go's into what Go wrote (the data path's own table)
    out = subprocess.run(in_ns(h2.ns, sys.executable, "-c", _PEERS), capture_output=True, text=True, timeout=20)
    peers = {row["subnet"]: row["public_ip"] for row in json.loads(out.stdout)["peers"]}
    assert peers.get(subnet_of(h1)) == json.loads(values[h1.index])["PublicIP"] == h1.ip
    if lab.backend == "vxlan":
        mac = json.loads(values[h1.index])["BackendData"]["VtepMAC"]
        assert f"lladdr {mac} PERMANENT" in ip(h2.ns, "neigh", "show", subnet_of(h1).split("/")[0], "dev",
                                                   "flannel.1")


# ---- mk-docker-opts against dist/mk-docker-opts.sh ------------------------------------------------

SUBNET_ENVS = {
    "masq-false": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    "masq-true": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    "no-mtu": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=false\n",
    "no-subnet": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
    "no-masq": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n",
    "masq-bad": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n",
    "empty": "",
}
FLAG_SETS = [list(f) for n in range(4) for f in itertools.combinations(("-i", "-c", "-m"), n)]


@pytest.fixture
def script(ns: str, go_flanneld: str) -> str:
    path = goflannel.mk_docker_opts_script()
    assert path is not None, f"{goflannel.module_dir()}/dist/mk-docker-opts.sh is missing"
    return path


def run_both(ns: str, script: str, tmp_path, env_text: str | None, argv: list[str],
             environ: dict[str, str]) -> tuple[tuple[int, str, bytes], tuple[int, str, bytes]]:
    """(exit code, stderr, output file) of the script under dash and of ours, same input."""
    results = []
    for name, cmd in (("sh", ["sh", script]), ("py", [os.path.join(os.path.dirname(sys.executable),
                                                                  "mk-docker-opts")])):
        src, dst = tmp_path / f"{name}.subnet.env", tmp_path / f"{name}.docker.env"
        dst.unlink(missing_ok=True)
        src.unlink(missing_ok=True)
        if env_text is not None:
            src.write_text(env_text)
        res = subprocess.run(in_ns(ns, *cmd, "-f", str(src), "-d", str(dst), *argv), capture_output=True,
                             text=True, timeout=20, env={"PATH": os.environ["PATH"], **environ})
        out = dst.read_bytes() if dst.exists() else b"(none)"
        results.append((res.returncode, res.stderr.replace(str(src), "SRC").replace(script, "PROG")
                        .replace(cmd[0], "PROG"), out))
    return results[0], results[1]


@pytest.mark.parametrize("env_name", list(SUBNET_ENVS))
@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: "".join(f) or "none")
@pytest.mark.parametrize("key", [None, "DOCKER_NETWORK_OPTIONS"], ids=["default-key", "k"])
@pytest.mark.parametrize("preset", [False, True], ids=["", "preset"])
def test_mk_docker_opts_matches_the_script(ns: str, script: str, tmp_path, env_name: str, flags: list[str],
                                           key: str | None, preset: bool) -> None:
    argv = [*flags, *(["-k", key] if key else [])]
    environ = {key or "DOCKER_OPTS": "--log-level=warn"} if preset else {}
    sh_result, py_result = run_both(ns, script, tmp_path, SUBNET_ENVS[env_name], argv, environ)
    assert py_result == sh_result


def test_mk_docker_opts_route_check_matches_the_script(ns: str, script: str, tmp_path) -> None:
    sh(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
    sh(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "v0"])
    sh(["ip", "-n", ns, "link", "set", "v0", "up"])
    sh(["ip", "-n", ns, "route", "add", "10.1.74.0/24", "via", "192.0.2.2"])
    sh_result, py_result = run_both(ns, script, tmp_path, SUBNET_ENVS["masq-false"], [], {})
    assert sh_result[0] == 1 and "Your routing table already contains the subnet" in sh_result[1]
    assert py_result == sh_result


@pytest.mark.parametrize("argv", [["-h"], ["-?"], ["-x"], ["-i", "-y", "-c"], ["-k"], ["-c", "-f"]],
                         ids=["h", "question", "illegal", "illegal-middle", "no-arg-k", "no-arg-f"])
def test_mk_docker_opts_usage_matches_the_script(ns: str, script: str, tmp_path, argv: list[str]) -> None:
    """-h, -? and bad options: the usage on stderr, exit 1, nothing written; the same words as
    dash's getopts for a bad option ("Illegal option -x", "No arg for -f option")."""
    sh_result, py_result = run_both(ns, script, tmp_path, SUBNET_ENVS["masq-false"], argv, {})
    assert sh_result[0] == py_result[0] == 1
    assert py_result[1].replace("mk-docker-opts [", "PROG [", 1) == sh_result[1]
    assert sh_result[2] == py_result[2] == b"(none)"


def test_mk_docker_opts_missing_env_file_differs_by_a_warning(ns: str, script: str, tmp_path) -> None:
    """No subnet.env: both write the combined line alone and exit 0; ours also says so on stderr
    (kept on purpose: docs/compatibility.md#mk-docker-opts)."""
    sh_result, py_result = run_both(ns, script, tmp_path, None, [], {})
    assert sh_result == (0, "", b'DOCKER_OPTS=""\n')
    assert py_result[0::2] == sh_result[0::2]
    assert "SRC" in py_result[1] and py_result[1].count("\n") == 1


def test_mk_docker_opts_differs_on_purpose_where_the_script_sources(ns: str, script: str, tmp_path) -> None:
    """The script sources subnet.env and sweeps ``set | grep DOCKER_OPT_``: a ``DOCKER_OPT_*``
    variable in its environment becomes a Docker option, and a ``FLANNEL_*`` one fills in what the
    file lacks. Ours reads the file only (docs/compatibility.md#mk-docker-opts)."""
    env = SUBNET_ENVS["masq-false"]
    sh_result, py_result = run_both(ns, script, tmp_path, env, [], {"DOCKER_OPT_DNS": "--dns=192.0.2.53"})
    assert b'DOCKER_OPT_DNS="--dns=192.0.2.53"' in sh_result[2] and b"dns" not in py_result[2]
    assert py_result == run_both(ns, script, tmp_path, env, [], {})[0]  # ours: as without the variable

    no_subnet = SUBNET_ENVS["no-subnet"]
    sh_result, py_result = run_both(ns, script, tmp_path, no_subnet, [], {"FLANNEL_SUBNET": "10.9.9.1/24"})
    assert b"--bip=10.9.9.1/24" in sh_result[2] and b"--bip" not in py_result[2]

    # a -k that is no shell name: the script writes an unusable line, ours refuses with the usage
    sh_result, py_result = run_both(ns, script, tmp_path, env, ["-k", "bad-key"], {})
    assert sh_result[0] == 0 and b'\nbad-key="-key ' in sh_result[2]
    assert py_result[0] == 1 and "invalid combined key 'bad-key'" in py_result[1] and py_result[2] == b"(none)"
