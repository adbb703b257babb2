"""The article's overlay end to end: 3 hosts in namespaces, real etcd, flanneld, udp backend."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.demo import capture_one
from pyflannel.lab.netns import ns_list

from .helpers import lease_key, log_text, wait_for


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfte", 3, subnet_max="10.0.199.0") as lab:
        yield lab


def test_all_six_container_pairs_ping(lab: Lab) -> None:
    failed = [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping(a, b)[0]]
    assert failed == []
    subnets = {h.subnet for h in lab.hosts}
    assert len(subnets) == 3


def test_route_tables_are_the_articles(lab: Lab) -> None:
    for h in lab.hosts:
        table = lab.route_table(h)
        assert re.search(r"^10\.0\.0\.0\s+0\.0\.0\.0\s+255\.255\.0\.0\s+U\s.*flannel0$", table, re.M), table
        net = h.subnet.rsplit(".", 1)[0] + ".0"
        assert re.search(rf"^{re.escape(net)}\s+0\.0\.0\.0\s+255\.255\.255\.0\s+U\s.*docker0$", table, re.M), table


def test_docker_gets_bip_and_mtu_from_flannel(lab: Lab) -> None:
    for h in lab.hosts:
        assert h.docker_opts == f"--bip={h.subnet} --ip-masq=true --mtu=1472"


def test_lease_json_is_flannels(lab: Lab) -> None:
    h = lab.hosts[0]
    value = lab.etcdctl("get", lease_key(h), "--print-value-only").strip()
    assert value == f'{{"PublicIP":"{h.ip}","PublicIPv6":null}}'


def test_tcpdump_sees_udp_8285_carrying_icmp(lab: Lab) -> None:
    lines = capture_one(lab, lab.hosts[0], lab.hosts[1])
    text = "\n".join(lines)
    assert f"Outer IPv4 {lab.hosts[0].ip} -> {lab.hosts[1].ip}  proto UDP" in text
    assert "port 8285 -> 8285" in text
    assert f"Inner IPv4 {lab.hosts[0].container_ip} -> {lab.hosts[1].container_ip}  proto ICMP" in text
    assert "echo request" in text


def test_restart_keeps_subnet_and_lease(lab: Lab) -> None:
    h = lab.hosts[0]
    before = h.subnet
    lab.stop_flanneld(h)
    assert "exiting cleanly" in log_text(lab, h)
    assert lab.etcdctl("get", lease_key(h), "--print-value-only").strip(), "lease must stay in etcd"
    os.unlink(lab.subnet_file(h))  # reuse must come from etcd (PublicIP), not only from subnet.env
    lab.start_flanneld(h)
    assert lab.wait_subnet(h, 20) == before
    assert "how=reused" in log_text(lab, h)
    wait_for(lambda: lab.ping(lab.hosts[1], h, count=1)[0], what="ping after restart")


def test_ready_is_notified_after_subnet_env(lab: Lab, tmp_path) -> None:
    h = lab.hosts[0]
    lab.stop_flanneld(h)
    os.unlink(lab.subnet_file(h))
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        lab.start_flanneld(h, env={"NOTIFY_SOCKET": path})
        assert sock.recv(64) == b"READY=1"
        assert os.path.exists(lab.subnet_file(h)), "READY=1 only once subnet.env is written"
    assert lab.wait_subnet(h, 5) == h.subnet
    wait_for(lambda: lab.ping(h, lab.hosts[2], count=1)[0], what="ping after restart")


def test_deleted_lease_disappears_from_peers(lab: Lab) -> None:
    h1, h3 = lab.hosts[0], lab.hosts[2]
    assert lab.ping(h1, h3, count=1)[0]
    lab.stop_flanneld(h3)  # else h3 takes its deleted lease straight back
    net = lease_key(h3).rsplit("/", 1)[1].replace("-", "/")
    lab.etcdctl("del", lease_key(h3))
    wait_for(lambda: f"peer removed subnet={net}" in log_text(lab, h1), what="h1 to drop h3")
    ok, out = lab.ping(h1, h3, count=1, timeout=1)
    assert not ok
    assert "Destination Net Unreachable" in out, out  # flannel0's ICMP: no peer owns that subnet
    lab.start_flanneld(h3)  # comes back on the same subnet, from its subnet.env
    wait_for(lambda: lab.wait_subnet(h3, 20), what="h3 back")
    assert lease_key(h3).endswith(net.replace("/", "-"))
    wait_for(lambda: lab.ping(h1, h3, count=1)[0], what="ping to h3 again")


def test_own_lease_deleted_is_taken_again(lab: Lab) -> None:
    h2 = lab.hosts[1]
    lab.etcdctl("del", lease_key(h2))
    wait_for(lambda: "was deleted from etcd; taking it again" in log_text(lab, h2), what="re-take")
    wait_for(lambda: lab.etcdctl("get", lease_key(h2), "--print-value-only").strip(), what="lease back")
    assert lab.flanneld_pid(h2) is not None
    wait_for(lambda: lab.ping(lab.hosts[0], h2, count=1)[0], what="ping h2")


def test_garbage_under_subnets_keeps_every_route(lab: Lab) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    junk = {
        f"{PREFIX}/subnets/not-a-subnet": "hello",
        f"{PREFIX}/subnets/10.0.250.0-24": "{not json",
        f"{PREFIX}/subnets/10.0.251.0-24": '{"PublicIP":"banana"}',
        f"{PREFIX}/subnets/10.0.252.0-24": '{"PublicIP":"198.18.0.77","PublicIPv6":null,"' + "x" * 100_000 + '":1}',
    }
    outside = f"{PREFIX}/subnets/10.9.0.0-24"  # valid JSON, outside 10.0.0.0/16
    claims_h2 = f"{PREFIX}/subnets/10.0.253.0-24"  # valid, but claims h2's public IP
    for key, value in junk.items():
        lab.etcdctl("put", key, value)
    lab.etcdctl("put", outside, '{"PublicIP":"198.18.0.78","PublicIPv6":null}')
    lab.etcdctl("put", claims_h2, f'{{"PublicIP":"{h2.ip}","PublicIPv6":null}}')
    try:
        wait_for(lambda: log_text(lab, h1).count("skipping bad lease") >= len(junk), what="bad-lease warnings")
        wait_for(lambda: f"skipping bad lease key={outside}: 10.9.0.0/24 is outside the network" in log_text(lab, h1),
                 what="the outside-network warning, by key")
        wait_for(lambda: f"all claim public IP {h2.ip}" in log_text(lab, h1), what="the shared-IP warning")
        failed = [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not lab.ping(a, b, 1)[0]]
        assert failed == [], "every host keeps every healthy peer"
        text = log_text(lab, h1)
        for key in junk:
            assert text.count(f"key={key}:") == 1, f"one warning for {key}"
        listing = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-m", "pyflannel.cli.flannelctl",
                                  f"-etcd-endpoints={lab.etcd_endpoint}", f"-etcd-prefix={PREFIX}", "leases", "list"],
                                 capture_output=True, text=True, timeout=30).stdout
        for key in junk:
            assert f"BAD  {key}:" in listing
        assert "10.9.0.0/24 (outside the network)" in listing
    finally:
        for key in [*junk, outside, claims_h2]:
            lab.etcdctl("del", key)


@pytest.fixture
def bare_lab() -> Iterator[Lab]:
    """One host whose flanneld starts before any network config exists."""
    lab = Lab(name="pftc", hosts_n=1)
    try:
        lab.up(write_config=False)
        yield lab
    finally:
        lab.down()


def test_missing_config_is_named_in_the_log(bare_lab: Lab) -> None:
    lab, h = bare_lab, bare_lab.hosts[0]
    wait_for(lambda: "network config not found at /atomic.io/network/config" in log_text(lab, h),
             what="the missing-config error")
    assert "etcdctl put /atomic.io/network/config" in log_text(lab, h)
    time.sleep(2.5)
    assert log_text(lab, h).count("network config not found") == 1, "logged once, not once per retry"
    lab.put_config('{"Network": "10.0.0.0/16"}')
    lab.finish(20)
    assert h.subnet.startswith("10.0.")


def test_v2_only_config_is_named_and_migrated(bare_lab: Lab) -> None:
    """The article's `etcdctl mk` writes the v2 store: flanneld names that and the fix, which works."""
    lab, h = bare_lab, bare_lab.hosts[0]
    lab.etcd_server.etcdctl_v2("mk", "/atomic.io/network/config", '{"Network": "10.0.0.0/16"}')
    wait_for(lambda: "is not in etcd's v3 store but is in its v2 store" in log_text(lab, h),
             what="the v2-only config named in flanneld's log")
    assert "config migrate-v2" in log_text(lab, h)
    out = subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-m", "pyflannel.cli.flannelctl",
                          f"-etcd-endpoints={lab.etcd_endpoint}",
                          f"-etcd-prefix={PREFIX}", "config", "migrate-v2"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "network 10.0.0.0/16" in out
    lab.finish(20)
    assert h.subnet.startswith("10.0.")


BAD_CONFIGS = [
    ('{"Network": "10.0.0.0/16"', "invalid JSON"),
    ('{"SubnetLen": 24}', "please define a correct Network parameter"),
    ('{"Network": "banana"}', "Network"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}', "SubnetMin is not in the range of the Network"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Type": "carrier-pigeon"}}', "unknown backend type"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_is_named_then_fixed(bare_lab: Lab, config: str, message: str) -> None:
    lab, h = bare_lab, bare_lab.hosts[0]
    lab.put_config(config)
    wait_for(lambda: f"invalid network config at {PREFIX}/config" in log_text(lab, h) and message in log_text(lab, h),
             what=f"error {message!r}")
    assert lab.flanneld_pid(h) is not None, "flanneld keeps waiting for a fixed config"
    lab.put_config('{"Network": "10.0.0.0/16"}')
    lab.finish(20)


def test_unknown_interface_exits_with_a_clear_error(bare_lab: Lab) -> None:
    lab, h = bare_lab, bare_lab.hosts[0]
    lab.stop_flanneld(h)
    lab.put_config('{"Network": "10.0.0.0/16"}')
    res = subprocess.run(lab.flanneld_command(h, ("-iface=eth9",)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "Failed to find interface to use" in res.stderr and "eth0" in res.stderr


def test_malformed_flag_value_exits_2(bare_lab: Lab) -> None:
    h = bare_lab.hosts[0]
    res = subprocess.run(bare_lab.flanneld_command(h, ("-subnet-lease-renew-margin=soon",)), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2
    assert "invalid value 'soon' for -subnet-lease-renew-margin" in res.stderr


def test_unreachable_etcd_names_the_endpoint(bare_lab: Lab) -> None:
    lab, h = bare_lab, bare_lab.hosts[0]
    lab.stop_flanneld(h)
    cmd = lab.flanneld_command(h)
    cmd = [c.replace("198.18.0.2:2379", "198.18.0.99:2379") for c in cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(8)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert "198.18.0.99:2379" in out and "cannot read the network config" in out, out
    assert out.count("cannot read the network config") <= 2, "an outage is logged once, not per retry"
    assert proc.returncode == 0


def test_make_demo_command_runs_and_cleans_up() -> None:
    res = subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", "lab", "demo", "--name", "pftd"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "summary: 6/6 container pairs" in res.stdout
    assert "flannel0" in res.stdout and "port 8285 -> 8285" in res.stdout
    assert not [ns for ns in ns_list() if ns.startswith("pftd-")]


def test_flannelctl_status_on_a_host(lab: Lab) -> None:
    h = lab.hosts[0]
    cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "pyflannel.cli.flannelctl",
           f"-etcd-endpoints={lab.etcd_endpoint}", f"-etcd-prefix={PREFIX}", f"-subnet-file={lab.subnet_file(h)}",
           "status"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    net = lease_key(h).rsplit("/", 1)[1].replace("-", "/")
    assert f"lease       {net} public IP {h.ip}, expires in 23h" in out.stdout
    assert "peers       2" in out.stdout
    assert "devices     flannel0 up mtu 1472" in out.stdout
