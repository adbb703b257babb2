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
    assert "After=flanneld.service" in dropin and "\nExecStart" not in dropin
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
    shutil.copy(ROOT / "dist/systemd/docker.service.d/flannel.conf", tmp_path / "docker.service.d/flannel.conf")
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


# ---- against the units of Debian's docker.io package (issue 15: restarting flanneld restarted docker)
DOCKER_IO_CACHE = ROOT / ".cache" / "docker.io"
TIES = ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "PropagatesStopTo", "StopPropagatedFrom",
        "RequiredBy", "UpheldBy")  # every kind that makes one unit's stop or restart reach another


def parse_unit(*texts: str) -> dict[tuple[str, str], list[str]]:
    """A unit and its drop-ins, merged as systemd does: values accumulate, an empty one resets."""
    out: dict[tuple[str, str], list[str]] = {}
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            values = out.setdefault((section, key.strip()), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return out


@pytest.fixture(scope="module")
def docker_io() -> pathlib.Path:
    """docker.service and docker.socket of Debian's docker.io, downloaded once into .cache."""
    unit = DOCKER_IO_CACHE / "lib/systemd/system/docker.service"
    if not unit.exists():
        work = DOCKER_IO_CACHE.parent / "docker.io.download"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            got = subprocess.run(["apt-get", "download", "docker.io"], cwd=work, capture_output=True, text=True,
                                 timeout=600)
            debs = list(work.glob("docker.io_*.deb"))
            if got.returncode != 0 or not debs:
                msg = f"cannot download Debian's docker.io package: {got.stderr.strip()[-300:]}"
                if os.environ.get("CI"):
                    pytest.fail(msg)
                pytest.skip(msg)
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True, timeout=300)
            DOCKER_IO_CACHE.mkdir(parents=True, exist_ok=True)
            for name in ("docker.service", "docker.socket"):
                (DOCKER_IO_CACHE / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
                shutil.copy(work / "x/lib/systemd/system" / name, DOCKER_IO_CACHE / "lib/systemd/system" / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return DOCKER_IO_CACHE / "lib/systemd/system"


def test_docker_is_ordered_after_flanneld_but_never_tied_to_it(docker_io: pathlib.Path, tmp_path) -> None:
    stock = (docker_io / "docker.service").read_text()
    dropin = (ROOT / "dist/systemd/docker.service.d/flannel.conf").read_text()
    ours = (ROOT / "dist/systemd/flanneld.service.in").read_text().replace("@BINDIR@", str(VENV_BIN))
    docker, flanneld = parse_unit(stock, dropin), parse_unit(ours)
    assert "flanneld.service" in docker[("Unit", "After")][-1] and "flanneld.service" in docker[("Unit", "Wants")]
    for (_section, key), values in docker.items():
        if key in TIES:
            assert not any("flanneld" in v for v in values), f"docker's {key}= ties it to flanneld: {values}"
    assert not any(key in TIES for _, key in flanneld), f"flanneld.service ties another unit: {flanneld}"
    # docker's own command line, --containerd included, is what Debian's package wrote
    assert docker[("Service", "ExecStart")] == parse_unit(stock)[("Service", "ExecStart")]
    assert "--containerd=" in docker[("Service", "ExecStart")][0]
    # and systemd itself accepts the three together
    shutil.copy(docker_io / "docker.socket", tmp_path / "docker.socket")
    # dockerd is not installed here: verify would stop at its missing binary
    (tmp_path / "docker.service").write_text(stock.replace("/usr/sbin/dockerd", "/bin/true"))
    (tmp_path / "docker.service.d").mkdir()
    (tmp_path / "docker.service.d/flannel.conf").write_text(dropin)
    (tmp_path / "flanneld.service").write_text(ours)
    assert verify(tmp_path / "flanneld.service", tmp_path / "docker.service", unit_path=tmp_path) == ""


def test_the_old_drop_in_would_have_failed(docker_io: pathlib.Path) -> None:
    """The check above can fail: the drop-in pyflannel shipped before tied docker to flanneld and
    replaced docker's command line."""
    old = ("[Unit]\nAfter=flanneld.service\nRequires=flanneld.service\n[Service]\n"
           "EnvironmentFile=-/run/flannel/docker\nExecStart=\n"
           "ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS $DOCKER_NETWORK_OPTIONS\n")
    docker = parse_unit((docker_io / "docker.service").read_text(), old)
    assert "flanneld.service" in docker[("Unit", "Requires")]
    assert "--containerd=" not in docker[("Service", "ExecStart")][0]
