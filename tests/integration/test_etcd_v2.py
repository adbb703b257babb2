"""A config written with the v2 API (`ETCDCTL_API=2 etcdctl mk`, the article's command) is found,
named, and copied to v3 by `flannelctl config migrate-v2`, leases with their remaining TTL."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator

import pytest

from pyflannel.cli.flannelctl import main
from pyflannel.lab.etcd_server import EtcdServer
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry

PREFIX = "/atomic.io/network"
LEASE = json.dumps({"PublicIP": "198.18.0.11", "BackendType": "udp"})


@pytest.fixture
def etcd_v2(tmp_path) -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make setup`")
    # its own directory: a test may also ask for the v3-only `etcd_server`, which uses tmp_path/etcd
    server = EtcdServer(str(tmp_path / "etcd-v2" / "data"), log_path=str(tmp_path / "etcd-v2.log"), enable_v2=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ctl(server: EtcdServer, *args: str) -> int:
    return main([f"-etcd-endpoints={server.endpoint}", f"-etcd-prefix={PREFIX}", *args])


def v3_leases(server: EtcdServer) -> list[tuple[str, int | None]]:
    async def go() -> list[tuple[str, int | None]]:
        reg = EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix=PREFIX))
        try:
            snap = await reg.list_leases()
            return [(str(le.subnet), None if le.is_reservation else await reg.time_to_live(le.lease_id))
                    for le in snap.leases]
        finally:
            await reg.close()
    return asyncio.run(go())


def test_v2_only_config_is_named_then_migrated(etcd_v2, capsys) -> None:
    etcd_v2.etcdctl_v2("mk", f"{PREFIX}/config", '{"Network": "10.0.0.0/16"}')
    etcd_v2.etcdctl_v2("mk", "--ttl", "600", f"{PREFIX}/subnets/10.0.53.0-24", LEASE)
    etcd_v2.etcdctl_v2("mk", f"{PREFIX}/subnets/10.0.54.0-24", LEASE.replace("11", "12"))
    for cmd in (("config", "get"), ("leases", "list")):
        assert ctl(etcd_v2, *cmd) == 1
        err = capsys.readouterr().err
        assert "not in etcd's v3 store but is in its v2 store" in err, err
        assert f"-etcd-prefix={PREFIX} config migrate-v2" in err
    assert ctl(etcd_v2, "doctor") == 1
    out = capsys.readouterr().out
    assert f"problem  config       the network config {PREFIX}/config is not in etcd's v3 store" in out, out
    assert "config migrate-v2" in out
    assert ctl(etcd_v2, "config", "migrate-v2") == 0
    out = capsys.readouterr().out
    assert "network 10.0.0.0/16" in out and "2 copied" in out
    assert ctl(etcd_v2, "config", "get") == 0
    assert capsys.readouterr().out == '{"Network": "10.0.0.0/16"}\n'
    leases = dict(v3_leases(etcd_v2))
    assert leases["10.0.54.0/24"] is None, "a v2 key without TTL stays a reservation"
    ttl = leases["10.0.53.0/24"]
    assert ttl is not None and 0 < ttl <= 600, "the remaining TTL is kept"
    assert ctl(etcd_v2, "config", "migrate-v2") == 0  # again: nothing is overwritten
    assert "2 already in v3 kept" in capsys.readouterr().out


def test_migrate_v2_refuses_bad_or_different_config(etcd_v2, capsys) -> None:
    assert ctl(etcd_v2, "config", "migrate-v2") == 1
    assert "nothing to migrate" in capsys.readouterr().err
    etcd_v2.etcdctl_v2("mk", f"{PREFIX}/config", '{"Network": "10.0.0.0/16", "SubnetLen": 31}')
    assert ctl(etcd_v2, "config", "migrate-v2") == 1
    assert "the v2 config at /atomic.io/network/config is invalid" in capsys.readouterr().err
    etcd_v2.etcdctl_v2("set", f"{PREFIX}/config", '{"Network": "10.0.0.0/16"}')
    asyncio.run(_put_v3(etcd_v2, b'{"Network": "10.1.0.0/16"}'))
    assert ctl(etcd_v2, "config", "migrate-v2") == 1
    assert "already holds a different config" in capsys.readouterr().err
    assert ctl(etcd_v2, "config", "migrate-v2", "--force") == 0


def test_no_config_anywhere_keeps_the_v3_message(etcd_v2, etcd_server, capsys) -> None:
    for server in (etcd_v2, etcd_server):  # v2 on but empty; v2 off (etcd 3.4's default)
        assert ctl(server, "config", "get") == 1
        err = capsys.readouterr().err
        assert f"no network config at {PREFIX}/config" in err and "v2" not in err


async def _put_v3(server: EtcdServer, data: bytes) -> None:
    reg = EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix=PREFIX))
    try:
        await reg.put_config(data)
    finally:
        await reg.close()
