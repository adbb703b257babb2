"""flannelctl against a real etcd: config, leases, and the errors an operator will meet."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from pyflannel.cli.flannelctl import main
from pyflannel.core.lease import LeaseAttrs
from pyflannel.lab.etcd_server import EtcdServer, free_port
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry

PREFIX = "/atomic.io/network"


def ctl(server: EtcdServer, *args: str) -> int:
    return main([f"-etcd-endpoints={server.endpoint}", f"--etcd-prefix={PREFIX}", *args])


def put_lease(server: EtcdServer, subnet: str, ip: str, ttl: int | None = 600) -> None:
    async def go() -> None:
        reg = EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix=PREFIX))
        try:
            await reg.create_lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ipaddress.IPv4Address(ip)), ttl)
        finally:
            await reg.close()

    asyncio.run(go())


@pytest.fixture
def cfg_file(tmp_path):
    def write(text: str) -> str:
        p = tmp_path / "net.json"
        p.write_text(text)
        return str(p)
    return write


def test_config_set_get_validate(etcd_server, cfg_file, capsys) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file('{ "Network": "10.0.0.0/16" }')) == 0
    assert "network 10.0.0.0/16, /24 per host, 255 subnets, backend udp" in capsys.readouterr().out
    assert ctl(etcd_server, "config", "get") == 0
    assert capsys.readouterr().out == '{ "Network": "10.0.0.0/16" }\n'
    assert ctl(etcd_server, "config", "validate", "--json") == 0
    eff = json.loads(capsys.readouterr().out)
    assert eff["SubnetMin"] == "10.0.1.0" and eff["BackendType"] == "udp"


@pytest.mark.parametrize(("text", "message"), [
    ('{"Network": "10.0.0.0/16"', "invalid JSON"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Type": "nope"}}', "unknown backend type"),
])
def test_config_set_refuses_bad_config(etcd_server, cfg_file, capsys, text, message) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file(text)) == 1
    assert message in capsys.readouterr().err
    assert ctl(etcd_server, "config", "get") == 1  # nothing was written
    assert f"no network config at {PREFIX}/config" in capsys.readouterr().err


def test_config_set_refuses_to_orphan_leases(etcd_server, cfg_file, capsys) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file('{"Network": "10.0.0.0/16"}')) == 0
    put_lease(etcd_server, "10.0.53.0/24", "198.18.0.11")
    assert ctl(etcd_server, "config", "set", cfg_file('{"Network": "10.1.0.0/16"}')) == 1
    err = capsys.readouterr().err
    assert "10.0.53.0/24 (198.18.0.11)" in err and "--force" in err
    assert ctl(etcd_server, "config", "set", "--force", cfg_file('{"Network": "10.1.0.0/16"}')) == 0


def test_leases_reserve_list_revoke(etcd_server, cfg_file, capsys) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file('{"Network": "10.0.0.0/16"}')) == 0
    put_lease(etcd_server, "10.0.53.0/24", "198.18.0.11")
    assert ctl(etcd_server, "leases", "reserve", "10.0.80.0/24", "198.18.0.12") == 0
    capsys.readouterr()
    assert ctl(etcd_server, "leases", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "IN", "RESERVATION"]
    assert table[1].split()[:3] == ["10.0.53.0/24", "198.18.0.11", "udp"] and table[1].endswith("no")
    assert table[2].split() == ["10.0.80.0/24", "198.18.0.12", "udp", "-", "never", "yes"]
    assert ctl(etcd_server, "leases", "list", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["subnet"], r["reservation"]) for r in doc["leases"]] == [("10.0.53.0/24", False), ("10.0.80.0/24", True)]
    assert 0 < doc["leases"][0]["expires_in_s"] <= 600
    assert ctl(etcd_server, "leases", "revoke", "10.0.80.0/24") == 0
    assert ctl(etcd_server, "leases", "revoke", "10.0.80.0/24") == 1
    assert "no lease for 10.0.80.0/24" in capsys.readouterr().err


def test_reserve_errors(etcd_server, cfg_file, capsys) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file('{"Network": "10.0.0.0/16"}')) == 0
    put_lease(etcd_server, "10.0.53.0/24", "198.18.0.11")
    capsys.readouterr()
    assert ctl(etcd_server, "leases", "reserve", "10.0.53.0/24", "198.18.0.12") == 1
    assert "10.0.53.0/24 is already leased to 198.18.0.11" in capsys.readouterr().err
    assert ctl(etcd_server, "leases", "reserve", "10.9.0.0/24", "198.18.0.12") == 1
    assert "10.9.0.0/24 is outside the network" in capsys.readouterr().err
    assert ctl(etcd_server, "leases", "reserve", "10.0.7.1/24", "198.18.0.12") == 1
    assert "bad subnet" in capsys.readouterr().err
    assert ctl(etcd_server, "leases", "reserve", "10.0.53.0/24", "198.18.0.11") == 0, "own lease -> reservation"


def test_garbage_keys_are_listed_as_bad(etcd_server, cfg_file, capsys) -> None:
    assert ctl(etcd_server, "config", "set", cfg_file('{"Network": "10.0.0.0/16"}')) == 0
    asyncio.run(_raw_put(etcd_server, f"{PREFIX}/subnets/10.0.9.0-24", b"{oops"))
    capsys.readouterr()
    assert ctl(etcd_server, "leases", "list") == 0
    assert f"BAD  {PREFIX}/subnets/10.0.9.0-24: lease value is not JSON" in capsys.readouterr().out


async def _raw_put(server: EtcdServer, key: str, value: bytes) -> None:
    reg = EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix=PREFIX))
    try:
        kv = (await reg.connect()).kv
        assert kv is not None
        await kv.put(key, value)
    finally:
        await reg.close()


def test_wrong_prefix_and_wrong_endpoint(etcd_server, capsys) -> None:
    assert main([f"-etcd-endpoints={etcd_server.endpoint}", "-etcd-prefix=/coreos.com/network", "leases", "list"]) == 1
    assert "is -etcd-prefix right" in capsys.readouterr().err
    port = free_port()
    assert main([f"-etcd-endpoints=http://127.0.0.1:{port}", "leases", "list"]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
