"""``mk-docker-opts --daemon-json``: flannel's options merged into docker's daemon.json (issue 15)."""

from __future__ import annotations

import json

import pytest

from pyflannel.cli import mk_docker_opts
from pyflannel.cli.docker_json import DaemonJsonError, docker_settings, merge

ENV = "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.53.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


def test_settings_follow_mk_docker_opts():
    values = {"FLANNEL_SUBNET": "10.0.53.1/24", "FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "true"}
    assert docker_settings(values) == {"bip": "10.0.53.1/24", "ip-masq": False, "mtu": 1472}
    assert docker_settings(values | {"FLANNEL_IPMASQ": "false"})["ip-masq"] is True
    assert "ip-masq" not in docker_settings(values, ipmasq=False)  # -m
    with pytest.raises(DaemonJsonError, match="FLANNEL_IPMASQ"):
        docker_settings({"FLANNEL_IPMASQ": "yes"})


def test_merge_keeps_the_operators_keys_and_order():
    existing = '{"log-driver": "journald", "bip": "172.17.0.1/16", "registry-mirrors": ["https://m"]}'
    got = json.loads(merge(existing, {"bip": "10.0.53.1/24", "mtu": 1472}))
    assert list(got) == ["log-driver", "registry-mirrors", "bip", "mtu"]
    assert got["bip"] == "10.0.53.1/24" and got["registry-mirrors"] == ["https://m"]
    assert json.loads(merge(None, {"bip": "10.0.53.1/24"})) == {"bip": "10.0.53.1/24"}
    assert "ip-masq" not in json.loads(merge('{"ip-masq": true}', {}))  # ours, and no longer set


@pytest.mark.parametrize("bad", ['{"bip": ', "[1, 2]", '"text"'])
def test_a_broken_daemon_json_is_refused_not_rewritten(bad):
    with pytest.raises(DaemonJsonError, match="left untouched"):
        merge(bad, {"bip": "10.0.53.1/24"})


def test_the_command_writes_once_and_leaves_a_broken_file_alone(tmp_path, capsys):
    env, out = tmp_path / "subnet.env", tmp_path / "docker" / "daemon.json"
    env.write_text(ENV)
    args = ["-f", str(env), f"--daemon-json={out}"]
    assert mk_docker_opts.main(args, environ={}, route_table=lambda: "") == 0
    assert json.loads(out.read_text()) == {"bip": "10.0.53.1/24", "ip-masq": False, "mtu": 1472}
    assert "wrote" in capsys.readouterr().err
    mtime = out.stat().st_mtime_ns
    assert mk_docker_opts.main(args, environ={}, route_table=lambda: "") == 0
    assert out.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""  # unchanged: not rewritten
    out.write_text("{broken")
    assert mk_docker_opts.main(args, environ={}, route_table=lambda: "") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "left untouched" in err[0]
    assert out.read_text() == "{broken"
