"""What an operator sees of a running flanneld (issue 15): its name, version and flags at start,
and a debug log (-v=2) that holds pyflannel's own decisions and no library internals."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from pyflannel import __version__
from pyflannel.lab.cluster import PREFIX, Lab

from .helpers import log_text, wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ ([DIWEC]) \d+ (\S+)\] ")


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfop", 2, "vxlan", extra=("-v=2",)) as lab:
        yield lab


def test_debug_log_holds_our_decisions_and_no_library_lines(lab: Lab) -> None:
    host = lab.hosts[0]
    key = f"{PREFIX}/subnets/10.0.230.0-24"
    lab.etcdctl("put", key, '{"PublicIP":"198.18.0.230","PublicIPv6":null,"BackendType":"vxlan",'
                            '"BackendData":{"VNI":1,"VtepMAC":"02:42:0a:00:e6:00"}}')
    wait_for(lambda: "peer added subnet=10.0.230.0/24" in log_text(lab, host), what="the peer added")
    lab.etcdctl("del", key)
    wait_for(lambda: "peer removed subnet=10.0.230.0/24" in log_text(lab, host), what="the peer removed")
    wait_for(lambda: log_text(lab, host).count("converge run") >= 3, what="debug lines of the converger")
    text = log_text(lab, host)
    names = {m.group(2) for m in map(LINE.match, text.splitlines()) if m}
    foreign = sorted(n for n in names if not n.startswith(("flanneld", "pyflannel")))
    assert not foreign, f"library loggers at -v=2: {foreign}"
    unparsed = [ln for ln in text.splitlines() if ln.strip() and not LINE.match(ln)]
    assert not unparsed, f"lines that are no log record of ours (a library printing?): {unparsed[:5]}"
    assert re.search(r" D \d+ flanneld\] store changes at revision \d+: 1 added", text)
    assert len(text) < 200_000, f"{len(text)} bytes of log for two events"


def test_start_line_names_version_and_every_flag(lab: Lab) -> None:
    text = log_text(lab, lab.hosts[0])
    m = re.search(rf"flanneld {re.escape(__version__)} \(pyflannel, Python [\d.]+\) starting; effective flags: (.*)",
                  text)
    assert m, text[:2000]
    flags = m.group(1)
    assert f"-etcd-endpoints={lab.etcd_endpoint}" in flags and f"-etcd-prefix={PREFIX}" in flags
    assert "-v=2" in flags and "-ip-masq=false" in flags and "-etcd-password=" in flags


def test_the_process_is_called_flanneld(lab: Lab) -> None:
    pid = lab.flanneld_pid(lab.hosts[0])
    assert pid is not None
    assert str(pid) in subprocess.run(["pidof", "flanneld"], capture_output=True, text=True).stdout.split()
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "flanneld"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    assert argv[0] == "flanneld" and f"-etcd-prefix={PREFIX}" in argv


def _ctl(lab: Lab, host, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    cmd = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "pyflannel.cli.flannelctl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})))


def test_status_reads_the_sysconfig_asks_healthz_ip_and_fails_on_a_dead_host(lab: Lab, tmp_path) -> None:
    """Issue 15 (2, 7): on a host installed as the article does, `flannelctl status` needs no flags
    (the sysconfig file has the etcd endpoints, prefix and FLANNEL_OPTIONS), asks health where
    flanneld serves it (-healthz-ip), and exits 1 when flanneld is dead."""
    host = lab.hosts[1]
    serve = (f"-healthz-ip={host.ip}", "-healthz-port=8082")
    lab.stop_flanneld(host)
    starts = log_text(lab, host).count("flannel is ready")
    lab.start_flanneld(host, ("-v=2", *serve))
    wait_for(lambda: log_text(lab, host).count("flannel is ready") > starts, timeout=20,
             what="flanneld back with its health port on the host's own address")
    sysconfig = tmp_path / "flanneld"
    sysconfig.write_text(f'FLANNEL_ETCD_ENDPOINTS="{lab.etcd_endpoint}"\nFLANNEL_ETCD_PREFIX="{PREFIX}"\n'
                         f'FLANNEL_OPTIONS="{" ".join(serve)} -subnet-file={lab.subnet_file(host)}"\n')
    env = {"FLANNEL_SYSCONFIG": str(sysconfig)}
    live = _ctl(lab, host, "status", env=env)
    assert live.returncode == 0, live.stdout + live.stderr
    assert f"running, pid {lab.flanneld_pid(host)}" in live.stdout
    assert "health      200 flanneld is ready" in live.stdout
    lab.stop_flanneld(host, sig=9)
    try:
        dead = _ctl(lab, host, "status", env=env)
        assert dead.returncode == 1, dead.stdout + dead.stderr
        last = dead.stdout.strip().splitlines()[-1]
        assert last.startswith("status: 2 problem(s)") and "flanneld is not running" in last, dead.stdout
        assert f"not answering on {host.ip}:8082" in dead.stdout
    finally:
        starts = log_text(lab, host).count("flannel is ready")
        lab.start_flanneld(host, ("-v=2",))
        wait_for(lambda: log_text(lab, host).count("flannel is ready") > starts, timeout=20, what="flanneld back")


def test_lab_commands_say_where_things_are_and_never_wipe_a_running_lab() -> None:
    """Issue 15 (10)."""
    import sys

    from pyflannel.lab.cluster import stop_everything
    from pyflannel.lab.netns import ns_list

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", "lab", *args, "--name", "pflu"],
                              capture_output=True, text=True, timeout=120)

    stop_everything("pflu")
    try:
        bad = ctl("up", "--backend", "aws-vpc")
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cannot run backend 'aws-vpc'" in bad.stderr
        assert not [ns for ns in ns_list() if ns.startswith("pflu-")]
        up = ctl("up", "--hosts", "1")
        assert up.returncode == 0, up.stderr
        for text in ("etcd http://198.18.0.2:2379", "enter the host: ip netns exec pflu-h1 bash", "log: "):
            assert text in up.stdout, up.stdout
        again = ctl("up", "--hosts", "1")
        assert again.returncode == 1 and "a lab named pflu is running" in again.stderr and "--force" in again.stderr
        status = ctl("status")
        assert status.returncode == 0 and "enter the host" in status.stdout, status.stderr
        forced = ctl("up", "--hosts", "1", "--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        down = ctl("down")
    assert down.returncode == 0 and not [ns for ns in ns_list() if ns.startswith("pflu-")]
