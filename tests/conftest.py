"""Shared fixtures: a real etcd server on loopback, and root/namespace guards for e2e tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings

from pyflannel.lab.etcd_server import EtcdServer

# Property tests check behaviour, never time: Hypothesis's default 200 ms deadline per example
# failed a correct test on a machine busy with the e2e suite.
settings.register_profile("pyflannel", deadline=None)
settings.load_profile("pyflannel")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def etcd_server(tmp_path) -> Iterator[EtcdServer]:
    """A fresh single-node etcd on 127.0.0.1 with its own data dir; stopped afterwards."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make setup`")
    server = EtcdServer(str(tmp_path / "etcd" / "data"), log_path=str(tmp_path / "etcd.log"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, TUN devices)")
