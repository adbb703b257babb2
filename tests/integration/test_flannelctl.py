"""flannelctl against a real etcd: config, leases, and the errors an operator will meet."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys

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
    assert [(r["Subnet"], r["Reservation"]) for r in doc["Leases"]] == [("10.0.53.0/24", False), ("10.0.80.0/24", True)]
    assert 0 < doc["Leases"][0]["ExpiresInSeconds"] <= 600
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
    # issue 13 (2): a PublicIP no host can have is never written
    for bad in ("0.0.0.0", "224.0.0.1", "127.0.0.1", "169.254.9.9", "255.255.255.255"):
        assert ctl(etcd_server, "leases", "reserve", "10.0.54.0/24", bad) == 1, bad
        err = capsys.readouterr().err
        assert bad in err and "\n" not in err.rstrip("\n") and "Traceback" not in err, err
    assert ctl(etcd_server, "leases", "list") == 0 and "10.0.54.0" not in capsys.readouterr().out


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


# ---- issue 13.9: bad input ends every command with one line and exit 1, never a traceback ------------

def ctl_proc(server_endpoint: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """flannelctl as the operator runs it: its own process, so a traceback or any stray output
    (a library's log at exit) shows on stderr."""
    res = subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", f"-etcd-endpoints={server_endpoint}",
                          f"-etcd-prefix={PREFIX}", *args], input=stdin, capture_output=True, timeout=60)
    return res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")


def one_line_error(result: tuple[int, str, str], *wanted: str) -> str:
    rc, _, err = result
    assert rc == 1, result
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("flannelctl: "), err
    for text in wanted:
        assert text in err, err
    return err


@pytest.fixture
def net(etcd_server) -> EtcdServer:
    asyncio.run(_raw_put(etcd_server, f"{PREFIX}/config", b'{"Network": "10.0.0.0/16"}'))
    return etcd_server


def test_status_on_a_binary_subnet_env(net, tmp_path) -> None:
    bad = tmp_path / "subnet.env"
    bad.write_bytes(b"FLANNEL_NETWORK=10.0.0.0/16\n\xff\xfe\x00\x81garbage\n")
    one_line_error(ctl_proc(net.endpoint, "status", f"-subnet-file={bad}"), f"{bad} is not a subnet.env: byte 28")
    bad.write_text("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.5\n")  # cut short
    one_line_error(ctl_proc(net.endpoint, "status", f"-subnet-file={bad}"), "no valid FLANNEL_SUBNET (found '10.0.5')")
    one_line_error(ctl_proc(net.endpoint, "status", f"-subnet-file={tmp_path}"), "Is a directory")


def test_garbage_leases(net, tmp_path) -> None:
    """Garbage values and keys under subnets/: listed as bad, named where they are in the way."""
    asyncio.run(_raw_put(net, f"{PREFIX}/subnets/10.0.9.0-24", b"\xff\x00garbage"))
    asyncio.run(_raw_put(net, f"{PREFIX}/subnets/not-a-subnet", b"{}"))
    rc, out, err = ctl_proc(net.endpoint, "leases", "list")
    assert (rc, err) == (0, ""), err
    assert f"BAD  {PREFIX}/subnets/10.0.9.0-24: lease value is not JSON" in out
    assert f"BAD  {PREFIX}/subnets/not-a-subnet: not a subnet key" in out
    one_line_error(ctl_proc(net.endpoint, "leases", "reserve", "10.0.9.0/24", "198.18.0.9"),
                   f"{PREFIX}/subnets/10.0.9.0-24 is in the way and holds garbage",
                   f"flannelctl leases revoke {PREFIX}/subnets/10.0.9.0-24")
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.9.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    rc, out, err = ctl_proc(net.endpoint, "status", f"-subnet-file={env}")
    assert rc == 1 and "Traceback" not in err, err  # no flanneld here, and a garbage lease: problems
    assert f"lease       10.0.9.0/24: its key {PREFIX}/subnets/10.0.9.0-24 holds garbage" in out
    assert "our lease key holds garbage" in out.splitlines()[-1]
    # a garbage network config: every command that needs it says so in one line
    asyncio.run(_raw_put(net, f"{PREFIX}/config", b"\xff\xfe{"))
    for args in (("config", "get"), ("config", "validate"), ("leases", "list"),
                 ("leases", "reserve", "10.0.11.0/24", "198.18.0.11"), ("status", f"-subnet-file={env}")):
        one_line_error(ctl_proc(net.endpoint, *args), "network config", "invalid JSON")


def test_revoke_a_bad_key(net) -> None:
    asyncio.run(_raw_put(net, f"{PREFIX}/subnets/10.0.5.128-25", b'{"PublicIP":"198.18.0.5"}'))
    asyncio.run(_raw_put(net, f"{PREFIX}/subnets/10.0.9.0-24", b"\xff\x00garbage"))
    asyncio.run(_raw_put(net, f"{PREFIX}/subnets/garbage", b"x"))
    for key in ("10.0.5.128-25", f"{PREFIX}/subnets/10.0.9.0-24", "garbage"):
        rc, out, err = ctl_proc(net.endpoint, "leases", "revoke", key)
        assert (rc, err) == (0, ""), err
        assert out.startswith(f"revoked {PREFIX}/subnets/"), out
    rc, out, _ = ctl_proc(net.endpoint, "leases", "list", "--json")
    assert rc == 0 and json.loads(out)["Bad"] == [] and json.loads(out)["Leases"] == []
    one_line_error(ctl_proc(net.endpoint, "leases", "revoke", "garbage"), "no lease for garbage")
    one_line_error(ctl_proc(net.endpoint, "leases", "revoke", "/etc/passwd"), f"not under {PREFIX}/subnets/")
    one_line_error(ctl_proc(net.endpoint, "leases", "revoke", "10.0.7.1/24"), "bad subnet")


def test_unreachable_etcd_and_bad_files(tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.9.1/24\n")
    cfg = tmp_path / "net.json"
    cfg.write_text('{"Network": "10.0.0.0/16"}')
    for args in (("config", "get"), ("config", "set", str(cfg)), ("config", "validate"), ("leases", "list"),
                 ("leases", "reserve", "10.0.9.0/24", "198.18.0.9"), ("leases", "revoke", "10.0.9.0/24"),
                 ("status", f"-subnet-file={env}")):
        one_line_error(ctl_proc(dead, *args), f"etcd at {dead} failed", "check -etcd-endpoints")
    cfg.write_bytes(b"\xff\xfe{\x00")
    one_line_error(ctl_proc(dead, "config", "validate", str(cfg)), f"invalid network config in {cfg}")
    one_line_error(ctl_proc(dead, "config", "set", "-", stdin=b"\x00\x01"), "invalid network config in -")
    one_line_error(ctl_proc(dead, "config", "validate", str(tmp_path / "nope.json")), "No such file or directory")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    one_line_error(ctl_proc(dead, f"-etcd-cafile={garbage}", f"-etcd-certfile={garbage}", f"-etcd-keyfile={garbage}",
                            "leases", "list"), f"--etcd-cafile {garbage} holds no PEM CA certificate")
    one_line_error(ctl_proc("ftp://etcd", "leases", "list"), "bad etcd endpoint 'ftp://etcd'")
    # usage errors: one line too, exit 2
    for args in (("bogus",), ("leases",), ("leases", "reserve", "10.0.9.0/24"), ("lab", "up", "--hosts", "x"),
                 ("-healthz-port=x", "status")):
        rc, _, err = ctl_proc(dead, *args)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_write_commands_that_would_hurt_are_refused_or_warned(net, cfg_file, tmp_path) -> None:
    """Issue 15 (8): a second subnet for a public IP that holds one is refused (--force overrides);
    a backend switch is written with the warning that running daemons keep the old one; an empty
    -etcd-prefix is a usage error; a subnet with host bits gets the subnet it means as the fix."""
    put_lease(net, "10.0.7.0/24", "198.18.0.7")
    one_line_error(ctl_proc(net.endpoint, "leases", "reserve", "10.0.8.0/24", "198.18.0.7"),
                   "198.18.0.7 already holds 10.0.7.0/24", "flannelctl leases reserve 10.0.7.0/24 198.18.0.7")
    rc, out, err = ctl_proc(net.endpoint, "leases", "reserve", "10.0.8.0/24", "198.18.0.7", "--force")
    assert rc == 0 and "reserved 10.0.8.0/24" in out, err
    one_line_error(ctl_proc(net.endpoint, "leases", "reserve", "10.0.202.5/24", "198.18.0.9"),
                   "write it as 10.0.202.0/24")
    rc, out, err = ctl_proc(net.endpoint, "config", "set", cfg_file('{"Network": "10.0.0.0/16", '
                                                                    '"Backend": {"Type": "vxlan"}}'))
    assert rc == 0, err
    assert err.count("\n") == 1 and 'BackendType "udp" -> "vxlan"' in err and "restart flanneld on every host" in err
    res = subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", f"-etcd-endpoints={net.endpoint}",
                          "-etcd-prefix=", "leases", "list"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "-etcd-prefix is empty" in res.stderr and res.stderr.count("\n") == 1


def test_validate_json_output_is_a_config_that_set_accepts(net, tmp_path) -> None:
    """Issue 15 (7): `config validate --json` prints the effective config as a config again."""
    rc, out, err = ctl_proc(net.endpoint, "config", "validate", "-", "--json",
                            stdin=b'{"Network": "10.5.0.0/16", "SubnetLen": 26, "Backend": {"Type": "host-gw"}}')
    assert rc == 0, err
    rc, _, err = ctl_proc(net.endpoint, "config", "set", "-", stdin=out.encode())
    assert rc == 0, err
    rc, got, err = ctl_proc(net.endpoint, "config", "validate", "--json")
    assert rc == 0 and json.loads(got) == json.loads(out), err


def test_flannelctl_takes_the_etcd_flags_from_the_sysconfig_file(net, tmp_path) -> None:
    """Issue 15 (7): the article's /etc/sysconfig/flanneld is enough; FLANNELD_* and flags win."""
    conf = tmp_path / "flanneld"
    conf.write_text(f'# as the article writes it\nFLANNEL_ETCD_ENDPOINTS="{net.endpoint}"\n'
                    f'FLANNEL_ETCD_PREFIX="{PREFIX}"\nFLANNEL_OPTIONS=""\n')
    env = {"PATH": "/usr/bin:/bin", "FLANNEL_SYSCONFIG": str(conf)}
    res = subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", "config", "get"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0 and "10.0.0.0/16" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "pyflannel.cli.flannelctl", "config", "get"], capture_output=True,
                         text=True, timeout=60, env=env | {"FLANNELD_ETCD_PREFIX": "/nothing/here"})
    assert res.returncode == 1 and "/nothing/here/config" in res.stderr
