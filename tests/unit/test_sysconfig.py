"""flannelctl's defaults from the article's /etc/sysconfig/flanneld (issue 15.7)."""

from __future__ import annotations

from pyflannel.cli.ctl_leases import subnet_hint
from pyflannel.cli.ctl_status import health_address
from pyflannel.cli.sysconfig import with_sysconfig

SYSCONFIG = '''# Flanneld configuration options
FLANNEL_ETCD_ENDPOINTS="http://198.18.0.2:2379"
FLANNEL_ETCD_PREFIX="/atomic.io/network"
FLANNEL_OPTIONS="-iface=eth0 --healthz-port 8081 -healthz-ip=198.18.0.11 -subnet-file=/run/f/subnet.env -ip-masq"
broken line without equals
QUOTED='unclosed
'''


def test_sysconfig_gives_flannelctl_its_defaults(tmp_path):
    conf = tmp_path / "flanneld"
    conf.write_text(SYSCONFIG)
    env = with_sysconfig({"FLANNEL_SYSCONFIG": str(conf)})
    assert env["FLANNELD_ETCD_ENDPOINTS"] == "http://198.18.0.2:2379"
    assert env["FLANNELD_ETCD_PREFIX"] == "/atomic.io/network"
    assert env["FLANNELD_HEALTHZ_PORT"] == "8081" and env["FLANNELD_HEALTHZ_IP"] == "198.18.0.11"
    assert env["FLANNELD_SUBNET_FILE"] == "/run/f/subnet.env"
    assert "FLANNELD_IFACE" not in env  # flanneld's own flags are not flannelctl's


def test_the_environment_wins_over_the_file(tmp_path):
    conf = tmp_path / "flanneld"
    conf.write_text(SYSCONFIG)
    env = with_sysconfig({"FLANNEL_SYSCONFIG": str(conf), "FLANNEL_ETCD_PREFIX": "/env/prefix",
                          "FLANNELD_ETCD_ENDPOINTS": "http://198.18.0.3:2379"})
    assert env["FLANNELD_ETCD_PREFIX"] == "/env/prefix"
    assert env["FLANNELD_ETCD_ENDPOINTS"] == "http://198.18.0.3:2379"


def test_no_file_no_defaults(tmp_path):
    assert with_sysconfig({"FLANNEL_SYSCONFIG": str(tmp_path / "absent")}) == {
        "FLANNEL_SYSCONFIG": str(tmp_path / "absent")}


def test_fix_hints_name_the_subnet_meant():
    assert subnet_hint("10.0.202.5/24") == "write it as 10.0.202.0/24"
    assert subnet_hint("10.0.202.5") == "write it as 10.0.202.0/24"
    assert "e.g. 10.0.53.0/24" in subnet_hint("garbage")


def test_health_is_asked_where_flanneld_serves_it():
    assert health_address("0.0.0.0") == "127.0.0.1" and health_address("") == "127.0.0.1"
    assert health_address("::") == "::1" and health_address("198.18.0.11") == "198.18.0.11"


def test_flannelctl_has_a_version(capsys):
    from pyflannel import __version__
    from pyflannel.cli.flannelctl import main

    assert main(["--version"], environ={}) == 0
    assert capsys.readouterr().out == f"flannelctl {__version__} (pyflannel)\n"
