"""A 3-member etcd cluster in lab namespaces, with TLS client certificates or with
username/password: kill the leader, let a new host join, kill a follower, restart both — no ping
lost, leases keep renewing."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Lab
from pyflannel.lab.etcd_cluster import EtcdCluster, build_cluster, make_pki
from pyflannel.lab.netns import in_ns

from .helpers import all_pairs_ping, log_text, ping_counts, wait_for

CONFIG = '{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}'


@pytest.fixture(params=["tls", "auth"])
def cluster(request: pytest.FixtureRequest, tmp_path) -> Iterator[EtcdCluster]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    lab = Lab(name={"tls": "pfct", "auth": "pfca"}[request.param], hosts_n=3, backend="host-gw")
    lab.down()
    os.makedirs(lab.state_dir, exist_ok=True)
    try:
        c = build_cluster(lab, request.param, make_pki(str(tmp_path)), CONFIG)
        lab.hosts = [lab._host(i) for i in range(1, 4)]
        yield c
    finally:
        lab.down()


def test_cluster_member_failures_lose_nothing(cluster: EtcdCluster) -> None:
    lab = cluster.lab
    h1, h2, h3 = lab.hosts
    flags = (*cluster.client_flags, "-subnet-lease-ttl=12")
    for h in (h1, h2):
        lab.start_flanneld(h, flags)
    for h in (h1, h2):
        lab.wait_subnet(h, 30)
        lab.docker(h)
    lab.hosts = [h1, h2]
    assert all_pairs_ping(lab) == []
    ping = subprocess.Popen(in_ns(h1.container_ns, "ping", "-n", "-q", "-i", "0.01", "-c", "3500", "-W", "1",
                                  h2.container_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        leader = cluster.leader()
        cluster.members[leader].stop(9)
        # a new host joins while two members are up
        lab.start_flanneld(h3, flags)
        lab.wait_subnet(h3, 30)
        lab.docker(h3)
        follower = next(i for i, m in enumerate(cluster.members) if m.proc is not None and i != cluster.leader())
        cluster.members[follower].stop(9)
        time.sleep(5)  # one member left: no quorum, the data path carries on
        restart = time.time()
        for i in (leader, follower):
            cluster.members[i].start(wait=False)
        for m in cluster.members:
            m.wait_ready(30)

        def renewed_after_restart() -> bool:
            for line in log_text(lab, h1).splitlines():
                if "lease renewed" in line:
                    stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                    if stamp >= int(restart) - 1:
                        return True
            return False

        try:
            wait_for(renewed_after_restart, timeout=20, what="a lease renewal after the members came back")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log_text(lab, h1)[-5000:]}") from None
        out = ping.communicate(timeout=120)[0]
    finally:
        if ping.poll() is None:
            ping.kill()
    sent, received = ping_counts(out)
    assert sent == received, out + log_text(lab, h1)[-4000:]
    lab.hosts = [h1, h2, h3]
    assert all_pairs_ping(lab) == []
