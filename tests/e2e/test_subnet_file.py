"""A damaged or unwritable subnet.env on a running udp lab (issue 13, parts 5 and 6).

Damaged: flanneld reads what it can, keeps the previous subnet wherever anything still names it and
says plainly when nothing does. Unwritable (a directory in its place, a read-only mount, a full
tmpfs): flanneld keeps forwarding with its lease, reports not ready with the cause (/readyz, the
flannel_ready metric, systemd's STATUS=) and writes the file, with the same subnet, as soon as the
cause is gone; then READY=1 and /readyz 200.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from pyflannel.core.subnetenv import parse_subnet_env
from pyflannel.lab.cluster import Host, Lab

from .helpers import lease_key, log_text, subnet_of, wait_for
from .test_health import get

EXTRA = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfsv", 2, extra=EXTRA) as lab:
        yield lab


@pytest.fixture
def h2(lab: Lab) -> Iterator[Host]:
    """The host the test breaks; afterwards its flanneld runs again as the lab started it, on the
    subnet it had, with its subnet.env rewritten."""
    host = lab.hosts[1]
    subnet = host.subnet
    yield host
    lab.stop_flanneld(host)
    lab.start_flanneld(host, EXTRA)
    wait_for(lambda: read_subnet(lab.subnet_file(host)) == subnet and get(host, "/readyz")[0] == 200,
             timeout=20, what="h2 back to normal")


def read_subnet(path: str) -> str | None:
    """FLANNEL_SUBNET of the file at ``path``; None if it is not a readable file yet."""
    try:
        with open(path) as f:
            return parse_subnet_env(f.read()).get("FLANNEL_SUBNET")
    except (OSError, ValueError):
        return None


def own_lease(lab: Lab, host: Host) -> dict[str, object] | None:
    out = lab.etcdctl("get", lease_key(host), "--print-value-only").strip()
    return json.loads(out) if out else None


def metric(host: Host, name: str) -> float | None:
    text = get(host, "/metrics")[1]
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), None)


class Notify:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET (a path: the host's network
    namespace does not hide a socket in the file system)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def pings_both_ways(lab: Lab) -> bool:
    h1, h2 = lab.hosts
    return lab.ping(h1, h2, 1)[0] and lab.ping(h2, h1, 1)[0]


def check_unwritable(lab: Lab, host: Host, path: str, cause: str, remove_cause: Callable[[], None]) -> None:
    """Restart ``host``'s flanneld with subnet file ``path`` that cannot be written for ``cause``
    (the errno's text); check it forwards, keeps its lease and says why it is not ready; then
    ``remove_cause()`` and check the file is written with the same subnet and it turns ready."""
    subnet, notify = host.subnet, Notify(os.path.join(lab.host_dir(host), "notify.sock"))
    try:
        lab.stop_flanneld(host)
        mark = len(log_text(lab, host))
        lab.start_flanneld(host, EXTRA, env={"NOTIFY_SOCKET": notify.path}, subnet_file=path)
        problem = f"cannot write {path}: {cause}"
        wait_for(lambda: problem in log_text(lab, host)[mark:] or lab.flanneld_pid(host) is None, timeout=20,
                 what=f"flanneld to report {problem!r}")
        wait_for(lambda: pings_both_ways(lab) or lab.flanneld_pid(host) is None, timeout=20,
                 what="containers pinging across the hosts")
        assert lab.flanneld_pid(host) is not None, "flanneld exited:\n" + log_text(lab, host)[mark:]
        log = log_text(lab, host)[mark:]
        assert problem in log and "Traceback" not in log, log
        assert log.count(problem) == 1, "the cause is logged once, not once per retry"
        assert lab.ping(host, lab.hosts[0], 3)[0], "forwarding continues while subnet.env cannot be written"
        assert get(host, "/readyz") == (503, f"flanneld is not ready: {problem} (forwarding continues)")
        assert metric(host, "flannel_ready") == 0.0
        lease = own_lease(lab, host)
        assert lease is not None and lease["PublicIP"] == host.ip, "the lease's subnet is kept"
        wait_for(lambda: any(m.startswith(f"STATUS=not ready: {problem}") for m in notify.received()),
                 what="STATUS= with the cause")
        assert "EXTEND_TIMEOUT_USEC=30000000" in notify.received()[0]
        assert not any("READY=1" in m for m in notify.received()), "READY=1 before subnet.env is written"

        remove_cause()
        wait_for(lambda: read_subnet(path) == subnet, timeout=15, what=f"{path} written with {subnet}")
        wait_for(lambda: get(host, "/readyz")[0] == 200, what="/readyz 200")
        wait_for(lambda: any(m.startswith("READY=1") for m in notify.received()), what="READY=1")
        assert metric(host, "flannel_ready") == 1.0
        assert f"{path} can be written again" in log_text(lab, host)[mark:]
        assert own_lease(lab, host) == lease
        assert pings_both_ways(lab)
    finally:
        notify.close()


def test_a_directory_in_place_of_subnet_env(lab: Lab, h2: Host) -> None:
    path = lab.subnet_file(h2)
    lab.stop_flanneld(h2)
    os.unlink(path)
    os.mkdir(path)
    try:
        check_unwritable(lab, h2, path, os.strerror(errno.EISDIR), lambda: os.rmdir(path))
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(path)


@contextlib.contextmanager
def tmpfs(directory: str, size: str) -> Iterator[str]:
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", directory], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", directory], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def test_a_read_only_mount(lab: Lab, h2: Host) -> None:
    with tmpfs(os.path.join(lab.host_dir(h2), "ro"), "64k") as d:
        subprocess.run(["mount", "-o", "remount,ro", d], check=True)

        def remount_rw() -> None:
            # in flanneld's own mount namespace (`ip netns exec` made it a copy of ours at its start)
            pid = lab.flanneld_pid(h2)
            assert pid is not None
            subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", "-o", "remount,rw", d], check=True)

        check_unwritable(lab, h2, os.path.join(d, "subnet.env"), os.strerror(errno.EROFS), remount_rw)


def test_a_full_tmpfs(lab: Lab, h2: Host) -> None:
    with tmpfs(os.path.join(lab.host_dir(h2), "full"), "16k") as d:
        filler = os.path.join(d, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left"):
                for _ in range(64):
                    os.write(fd, bytes(4096))
        finally:
            os.close(fd)
        check_unwritable(lab, h2, os.path.join(d, "subnet.env"), os.strerror(errno.ENOSPC),
                         lambda: os.unlink(filler))


def restart_with(lab: Lab, host: Host, content: bytes, *, drop_lease: bool) -> str:
    """Restart ``host``'s flanneld on a subnet.env holding ``content`` (its lease deleted first if
    ``drop_lease``: then only the file can tell the old subnet); the new run's log once ready."""
    lab.stop_flanneld(host)
    if drop_lease:
        lab.etcdctl("del", lease_key(host))
    with open(lab.subnet_file(host), "wb") as f:
        f.write(content)
    mark = len(log_text(lab, host))
    lab.start_flanneld(host, EXTRA)
    wait_for(lambda: "flannel is ready" in log_text(lab, host)[mark:] or lab.flanneld_pid(host) is None,
             timeout=20, what="flanneld ready")
    log = log_text(lab, host)[mark:]
    assert lab.flanneld_pid(host) is not None and "Traceback" not in log, log
    return log


def test_a_damaged_subnet_env_keeps_the_subnet_across_a_restart(lab: Lab, h2: Host) -> None:
    subnet, first = h2.subnet, subnet_of(h2).split("/")[0].rsplit(".", 1)[0] + ".1"
    network = lab_network(lab, h2)
    damaged = (f"FLANNEL_NETWORK={network}\n".encode() + b"FLANNEL_MTU=\xff\xfe\x00garbage\n"
               + f"FLANNEL_SUBNET={first}/2".encode())  # not UTF-8, NULs, then a FLANNEL_SUBNET cut off
    # the lease is gone too: only the damaged file can tell the old subnet
    log = restart_with(lab, h2, damaged, drop_lease=True)
    assert "ignoring 1 damaged line and reading the rest: line 2 (" in log
    assert f"its address {first} is the first of {subnet_of(h2)}" in log
    assert "how=previous" in log and read_subnet(lab.subnet_file(h2)) == subnet
    lease = own_lease(lab, h2)
    assert lease is not None and lease["PublicIP"] == h2.ip
    wait_for(lambda: pings_both_ways(lab), what="pings on the same subnet")

    # the lease still in etcd: the file's damage does not matter, and flanneld says so
    log = restart_with(lab, h2, b"\x00" * 4096, drop_lease=False)
    assert f"names no usable subnet: it has no FLANNEL_SUBNET line (1 damaged line ignored); our lease in etcd " \
           f"still names {subnet_of(h2)}: keeping it" in log
    assert "how=reused" in log and read_subnet(lab.subnet_file(h2)) == subnet


def test_nothing_names_the_old_subnet_is_said_plainly(lab: Lab, h2: Host) -> None:
    old = subnet_of(h2)
    log = restart_with(lab, h2, b"FLANNEL_SUBNET=10.0.5", drop_lease=True)
    assert (f"subnet.env {lab.subnet_file(h2)} names no usable subnet: FLANNEL_SUBNET='10.0.5' is cut off (no "
            "newline ends the file), and no whole address survives in it; nothing else names our old subnet (no "
            f"lease in etcd for our public IP {h2.ip}): a new subnet will be leased; restart docker afterwards") in log
    new = read_subnet(lab.subnet_file(h2))
    assert new is not None and "how=allocated" in log
    # put it back as it was, for the other tests: the old subnet from a good subnet.env
    lab.stop_flanneld(h2)
    lab.etcdctl("del", lease_key(Host(h2.index, h2.ns, h2.container_ns, h2.ip, subnet=new)))
    network = lab_network(lab, h2)
    with open(lab.subnet_file(h2), "w") as f:
        f.write(f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={h2.subnet}\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    assert subnet_of(h2) == old


def lab_network(lab: Lab, host: Host) -> str:
    """FLANNEL_NETWORK as the lab wrote it at the start (every host has the same one)."""
    with open(lab.subnet_file(lab.hosts[0])) as f:
        return parse_subnet_env(f.read())["FLANNEL_NETWORK"]
