"""`make install` (PREFIX/DESTDIR), the units as systemd-analyze sees them, and the sysconfig file."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent


def verify(*units: pathlib.Path, unit_path: pathlib.Path) -> str:
    res = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                         env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_path}:"), timeout=60)
    # verify exits 0 on warnings: any line at all is a finding
    return (res.stdout + res.stderr).strip() + ("" if res.returncode == 0 else f"\nexit {res.returncode}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing: run `make setup` (Debian's systemd)")
    dest = tmp_path_factory.mktemp("dest")
    subprocess.run(["make", "-C", str(ROOT), "install", f"DESTDIR={dest}", "PREFIX=/usr/local"], check=True,
                   capture_output=True, timeout=600)
    return dest


def test_install_lays_out_flannel(installed: pathlib.Path) -> None:
    unit = (installed / "usr/local/lib/systemd/system/flanneld.service").read_text()
    assert "Type=notify" in unit and "EnvironmentFile=-/etc/sysconfig/flanneld" in unit
    assert ("ExecStart=/usr/local/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} "
            "-etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS") in unit
    assert "ExecStartPost=/usr/local/bin/mk-docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker" in unit
    assert "Before=docker.service" in unit and "Restart=on-failure" in unit
    sysconfig = (installed / "etc/sysconfig/flanneld").read_text()
    for var in ("FLANNEL_ETCD_ENDPOINTS=", "FLANNEL_ETCD_PREFIX=\"/atomic.io/network\"", "FLANNEL_OPTIONS="):
        assert var in sysconfig
    dropin = (installed / "etc/systemd/system/docker.service.d/flannel.conf").read_text()
    assert "EnvironmentFile=-/run/flannel/docker" in dropin and "$DOCKER_NETWORK_OPTIONS" in dropin
    wrapper = (installed / "usr/local/bin/flanneld").read_text()
    assert "exec /usr/local/lib/pyflannel/bin/python -m pyflannel.cli.flanneld" in wrapper
    res = subprocess.run([str(installed / "usr/local/lib/pyflannel/bin/python"), "-m", "pyflannel.cli.flanneld",
                          "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip()


def test_reinstall_keeps_the_operators_sysconfig(installed: pathlib.Path) -> None:
    conf = installed / "etc/sysconfig/flanneld"
    conf.write_text('FLANNEL_ETCD_ENDPOINTS="http://10.9.9.9:2379"\n')
    subprocess.run(["make", "-C", str(ROOT), "install", f"DESTDIR={installed}", "PREFIX=/usr/local"], check=True,
                   capture_output=True, timeout=600)
    assert conf.read_text() == 'FLANNEL_ETCD_ENDPOINTS="http://10.9.9.9:2379"\n'


def test_systemd_analyze_accepts_the_units(tmp_path: pathlib.Path) -> None:
    unit = tmp_path / "flanneld.service"
    unit.write_text((ROOT / "dist/systemd/flanneld.service.in").read_text().replace("@BINDIR@", str(VENV_BIN)))
    (tmp_path / "docker.service").write_text("[Unit]\nDescription=Docker\n[Service]\nExecStart=/bin/true\n")
    (tmp_path / "docker.service.d").mkdir()
    dropin = (ROOT / "dist/systemd/docker.service.d/flannel.conf").read_text()
    (tmp_path / "docker.service.d/flannel.conf").write_text(dropin.replace("/usr/sbin/dockerd", "/bin/true"))
    assert verify(unit, tmp_path / "docker.service", unit_path=tmp_path) == ""


def test_systemd_analyze_would_catch_a_mistake(tmp_path: pathlib.Path) -> None:
    unit = tmp_path / "flanneld.service"
    text = (ROOT / "dist/systemd/flanneld.service.in").read_text().replace("@BINDIR@", str(VENV_BIN))
    unit.write_text(text.replace("Type=notify", "Type=notify\nRestartt=always"))
    assert "Restartt" in verify(unit, unit_path=tmp_path)


def test_empty_endpoint_in_sysconfig_is_named() -> None:
    # what systemd runs when FLANNEL_ETCD_ENDPOINTS is empty or unset
    res = subprocess.run([str(VENV_BIN / "flanneld"), "-etcd-endpoints=", "-etcd-prefix=/atomic.io/network"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "FLANNEL_ETCD_ENDPOINTS in /etc/sysconfig/flanneld" in res.stderr
