"""A subnet lease's life in the lab's real etcd, flanneld as a black box (its flags, the keys in
etcd, its log, subnet.env, its exit code): renewals refresh the TTL and the key never goes, a
deleted key is taken again on the same subnet, a key taken over by another host ends flanneld."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pyflannel.daemon import LEASE_DELETE_GRACE_S
from pyflannel.lab.cluster import Host, Lab

from .helpers import ip, lease_key, log_text, subnet_of, wait_for

TTL = 5  # the smallest -subnet-lease-ttl flanneld accepts: it renews every few seconds
SHORT_LEASES = (f"-subnet-lease-ttl={TTL}", "-subnet-lease-renew-margin=1")
OTHER_IP = "198.18.0.97"  # a host that is not in the lab


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pftl", 3, "host-gw", extra=SHORT_LEASES) as lab:
        yield lab


@dataclass(frozen=True)
class Key:
    value: str
    lease_id: int  # 0: no TTL
    create_revision: int  # changes only when the key is deleted and created again
    mod_revision: int


def key_of(lab: Lab, host: Host) -> Key | None:
    """``host``'s lease key as etcd holds it now; None when there is none."""
    kvs = json.loads(lab.etcdctl("get", lease_key(host), "-w", "json")).get("kvs") or []
    if not kvs:
        return None
    kv = kvs[0]
    return Key(base64.b64decode(kv["value"]).decode(), int(kv.get("lease", 0)), int(kv["create_revision"]),
               int(kv["mod_revision"]))


def ttl_left(lab: Lab, lease_id: int) -> tuple[int, int] | None:
    """(seconds left, granted TTL) of an etcd lease; None once it is gone (expired or revoked)."""
    out = json.loads(lab.etcdctl("lease", "timetolive", format(lease_id, "x"), "-w", "json"))
    return None if out["ttl"] < 0 else (out["ttl"], out["granted-ttl"])


def subnet_env(lab: Lab, host: Host) -> str:
    with open(lab.subnet_file(host)) as f:
        return f.read()


class TtlWatch:
    """Samples ``host``'s key and its lease's remaining TTL, checking on every sample that the key
    is there, unchanged, never re-created, and that subnet.env is as it was; counts refreshes (the
    remaining TTL going up)."""

    def __init__(self, lab: Lab, host: Host) -> None:
        self.lab, self.host = lab, host
        first = key_of(lab, host)
        assert first is not None, f"no lease key for {host.ns}"
        assert first.lease_id != 0, f"{host.ns}'s key has no TTL: {first}"
        self.first, self.env = first, subnet_env(lab, host)
        self.last_left: int | None = None
        self.refreshes = 0

    def sample(self) -> int:
        key = key_of(self.lab, self.host)
        assert key is not None, f"{self.host.ns}'s lease key disappeared from etcd ({self.refreshes} refreshes seen)"
        assert key.create_revision == self.first.create_revision, (
            f"{self.host.ns}'s key was deleted and created again (expired: no renewal in time?) after "
            f"{self.refreshes} refreshes, {self.last_left}s left at the last sample")
        assert key.value == self.first.value, f"the lease changed: {key.value} (was {self.first.value})"
        assert key.lease_id != 0, "the key lost its TTL"
        assert subnet_env(self.lab, self.host) == self.env, "subnet.env changed"
        left = ttl_left(self.lab, key.lease_id)
        if left is None:  # read between a renewal's put and the old lease's revocation: sample again
            return self.refreshes
        assert left[1] == TTL, f"granted TTL {left[1]}, asked for {TTL}"
        if self.last_left is not None and left[0] > self.last_left:
            self.refreshes += 1
        self.last_left = left[0]
        return self.refreshes


def error_lines(text: str) -> list[str]:
    """The ERROR lines of a flanneld log (``2024-05-01 10:00:00,123 E 4242 pyflannel.daemon] ...``)."""
    return [line for line in text.splitlines() if re.match(r"\S+ \S+ E ", line)]


def test_renewals_refresh_the_ttl_and_the_key_never_goes(lab: Lab) -> None:
    h = lab.hosts[0]
    watch = TtlWatch(lab, h)
    # a 5 s TTL runs out twice over before this deadline unless it is renewed
    wait_for(lambda: watch.sample() >= 2, timeout=4 * TTL, interval=0.2, what="two TTL refreshes of h1's lease")
    assert lab.flanneld_pid(h) is not None


def test_a_deleted_lease_is_taken_again_and_renewed(lab: Lab) -> None:
    """...and its peers keep their route to it meanwhile (the chaos soak counted 9 pings lost on
    every deleted lease while they removed it and added it back): a deletion takes effect only
    LEASE_DELETE_GRACE_S later, and the owner's retake cancels it."""
    h, peer = lab.hosts[1], lab.hosts[0]
    before, env = key_of(lab, h), subnet_env(lab, h)
    assert before is not None
    monitor = subprocess.Popen(["ip", "-n", peer.ns, "monitor", "route"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the monitor listens before the delete
        lab.etcdctl("del", lease_key(h))
        again = wait_for(lambda: (k := key_of(lab, h)) is not None and k.create_revision > before.create_revision
                         and k, timeout=10, what="h2's lease key created again")
        time.sleep(LEASE_DELETE_GRACE_S + 0.5)  # past the grace: a removal that was not cancelled has happened
    finally:
        monitor.terminate()
    route_events = monitor.communicate(timeout=5)[0]
    net = subnet_of(h)
    assert f"Deleted {net}" not in route_events, f"h1 removed its route to h2 meanwhile:\n{route_events}"
    assert net in ip(peer.ns, "route", "show", net)
    assert again.value == before.value, "the same subnet, for the same host"
    assert again.lease_id != 0, "with a TTL again"
    assert lab.flanneld_pid(h) is not None, "flanneld kept running"
    assert subnet_env(lab, h) == env
    # the lease it took again is the one it renews from now on
    watch = TtlWatch(lab, h)
    wait_for(lambda: watch.sample() >= 1, timeout=3 * TTL, interval=0.2, what="a refresh of the re-taken lease")


def test_a_lease_overwritten_with_garbage_is_written_back(lab: Lab) -> None:
    """Garbage has no TTL: left alone it would stay for good, and a restart would lease another
    subnet (found by the chaos soak). The owner writes its lease back over it at once."""
    h = lab.hosts[0]
    before, env = key_of(lab, h), subnet_env(lab, h)
    assert before is not None
    lab.etcdctl("put", lease_key(h), "{not a lease")
    back = wait_for(lambda: (k := key_of(lab, h)) is not None and k.value == before.value and k,
                    timeout=10, what="h1's lease written back over the garbage")
    assert back.lease_id != 0, "with a TTL again"
    assert back.create_revision == before.create_revision, "written over the garbage, not deleted and created"
    assert lab.flanneld_pid(h) is not None, "flanneld kept running"
    assert subnet_env(lab, h) == env
    assert "overwritten with something that is not a lease" in log_text(lab, h)
    watch = TtlWatch(lab, h)
    wait_for(lambda: watch.sample() >= 1, timeout=3 * TTL, interval=0.2, what="a refresh of the written-back lease")


def test_a_key_taken_by_another_host_ends_flanneld_with_one_error(lab: Lab) -> None:
    h = lab.hosts[2]
    lab.stop_flanneld(h)
    start = os.path.getsize(lab.log_file(h))
    proc = lab.start_flanneld(h, SHORT_LEASES)  # our own child: its exit code is ours to read
    try:
        wait_for(lambda: "flannel is ready" in log_text(lab, h)[start:], timeout=30, what="flanneld ready again")
        mine = key_of(lab, h)
        assert mine is not None and json.loads(mine.value)["PublicIP"] == h.ip
        # another host (another PublicIP) writes our subnet's key, under its own etcd lease
        theirs = json.dumps(dict(json.loads(mine.value), PublicIP=OTHER_IP), separators=(",", ":"))
        grant = lab.etcdctl("lease", "grant", "60")  # "lease 694d8b5a3c2f0a0c granted with TTL(60s)"
        lab.etcdctl("put", f"--lease={grant.split()[1]}", lease_key(h), theirs)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flanneld still runs 15 s after losing its subnet:\n{lab.log_tail(h)}") from None
        assert code == 1, f"exit code {code}\n{lab.log_tail(h)}"
        errors = error_lines(log_text(lab, h)[start:])
        assert len(errors) == 1, errors
        assert subnet_of(h) in errors[0] and OTHER_IP in errors[0], errors[0]
        after = key_of(lab, h)
        assert after is not None and after.value == theirs, "the other host's key is left alone"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lab.etcdctl("del", lease_key(h), check=False)


STALL_TTL = 20  # renewed every ~10 s; a 7.5 s etcd stall at a renewal must not cost the lease


def test_a_short_etcd_stall_at_renewal_costs_no_lease(make_lab) -> None:
    """Issue 13 (8): etcd frozen for 7.5 s across a renewal of a 20 s lease. The renewal call
    times out (5 s); it must be retried while the lease lives, not after a fixed 10 s (by then
    etcd had deleted the key, and the subnet was taken again: a new create revision)."""
    import signal
    import time

    with make_lab("pfts", 2, "host-gw", extra=(f"-subnet-lease-ttl={STALL_TTL}", "-subnet-lease-renew-margin=1"),
                  wait=20) as lab:
        host = lab.hosts[0]
        before = key_of(lab, host)
        assert before is not None and ttl_left(lab, before.lease_id) is not None
        renewed = re.compile(r"lease renewed subnet=\S+ expires_in=")
        wait_for(lambda: renewed.search(log_text(lab, host)), timeout=STALL_TTL, what="a first renewal")
        seen = len(renewed.findall(log_text(lab, host)))
        renewed_at = time.monotonic()
        # The next renewal comes ~STALL_TTL/2 after this one: freeze etcd from 1.5 s before it until
        # after its call has timed out (5 s), 7.5 s in all, well inside the lease's 20 s.
        time.sleep(max(0.0, STALL_TTL / 2 - 1.5 - (time.monotonic() - renewed_at)))
        server = lab.etcd_server
        assert server is not None and server.proc is not None
        os.killpg(server.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(7.5)
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        wait_for(lambda: len(renewed.findall(log_text(lab, host))) > seen, timeout=STALL_TTL,
                 what="the renewal that met the stall, retried")
        text = log_text(lab, host)
        assert "cannot renew lease" in text, "the stall did not meet a renewal: the test proved nothing"
        after = key_of(lab, host)
        assert after is not None and after.create_revision == before.create_revision, (
            f"the lease expired during a 7.5 s stall of a {STALL_TTL} s lease:\n{text[-2000:]}")
        assert "was deleted from etcd" not in text
