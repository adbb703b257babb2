"""The soak's fault schedule is a pure function of its seed and arguments."""

from __future__ import annotations

import pytest

from pyflannel.lab.soak.schedule import DEFAULT_KINDS, KINDS, kinds_for, not_applicable, schedule, touches_data_path

HOSTS = (1, 2, 3, 4, 5)


def test_same_seed_same_sequence_other_seed_another() -> None:
    a = schedule(7, 600, HOSTS)
    assert a == schedule(7, 600, HOSTS)
    assert a != schedule(8, 600, HOSTS)
    assert len(a) > 40


def test_faults_fit_the_run_and_are_ordered() -> None:
    faults = schedule(1, 300, HOSTS, warmup=5, cooldown=15)
    assert [f.seq for f in faults] == list(range(1, len(faults) + 1))
    assert all(f.at >= 5 and f.end <= 285 for f in faults)
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_one_fault_per_target_and_one_etcd_member_down_at_a_time() -> None:
    faults = schedule(3, 3600, HOSTS, mean_gap=1.0)
    for i, f in enumerate(faults):
        for g in faults[i + 1:]:
            same = (KINDS[f.kind].target == "etcd") == (KINDS[g.kind].target == "etcd") and (
                KINDS[f.kind].target == "etcd" or f.target == g.target)
            if same:
                assert g.at >= f.end, (f, g)


def test_joins_and_leaves_keep_the_host_count_near_its_start_and_spare_the_tcp_hosts() -> None:
    faults = schedule(4, 7200, HOSTS, ("host-join", "host-leave", "route-delete"), mean_gap=2.0)
    live = set(HOSTS)
    gone: set[int] = set()
    joined: dict[int, float] = {}
    for f in faults:
        if f.kind == "host-join":
            assert f.target not in live | gone
            live.add(f.target)
            joined[f.target] = f.at
        elif f.kind == "host-leave":
            assert f.target in live and f.target not in (1, 2)
            live.remove(f.target)
            gone.add(f.target)
        else:
            assert f.target in live and f.peer in live
            assert all(f.at >= joined[h] + 15 for h in (f.target, f.peer) if h in joined)
        assert 4 <= len(live) <= 6
    assert len(gone) > 5 and len(joined) > 5


def test_every_kind_and_target_shows_up_in_a_long_run() -> None:
    faults = schedule(5, 3600, HOSTS)
    assert {f.kind for f in faults} == set(DEFAULT_KINDS)
    targets = {f.target for f in faults if KINDS[f.kind].target == "host"}
    assert targets >= {1, 2} and len(targets & set(HOSTS)) >= 4 and max(targets) > 5
    peers = [f for f in faults if KINDS[f.kind].target == "peer"]
    assert peers and all(f.peer and f.peer != f.target for f in peers)
    durable = [f for f in faults if KINDS[f.kind].duration[1]]
    assert all(KINDS[f.kind].duration[0] <= f.duration <= KINDS[f.kind].duration[1] for f in durable)


def test_kinds_for_a_backend_and_unknown_kinds() -> None:
    assert "fdb-delete" in kinds_for("vxlan")
    assert "fdb-delete" not in kinds_for("host-gw")
    assert "device-delete" in kinds_for("wireguard") and "route-delete" in kinds_for("udp")
    skipped = not_applicable("udp")
    assert set(skipped) == {"neigh-delete", "fdb-delete", "device-delete"}
    assert "TUN device" in skipped["device-delete"] and "only vxlan" in skipped["fdb-delete"]
    assert not_applicable("host-gw")["device-delete"] == "host-gw has no device of its own"
    assert not_applicable("vxlan") == {} and set(not_applicable("host-gw", ("fdb-delete", "host-cut"))) == {
        "fdb-delete"}
    assert set(not_applicable("udp")).isdisjoint(kinds_for("udp"))


def test_a_flanneld_restart_touches_udps_data_path_only() -> None:
    assert touches_data_path("flanneld-sigkill", "udp") and touches_data_path("flanneld-sigterm", "udp")
    assert not touches_data_path("flanneld-sigkill", "vxlan") and not touches_data_path("flanneld-sigkill", "wireguard")
    assert touches_data_path("route-delete", "host-gw") and not touches_data_path("lease-delete", "udp")
    with pytest.raises(ValueError, match="unknown fault kind nope"):
        kinds_for("vxlan", ("nope",))
    assert schedule(1, 100, HOSTS, ()) == []
