"""Issue 12 (8): an accepted config setting that does nothing (an unknown Backend key, EnableIPv6
on a backend that carries IPv4 only) is named at start-up, once: by ``check_config``, which the
daemon logs (etcd mode: ``Conductor.wait_for_config``; kube mode: ``kubemode.read_config``), and
never a second time by the backend's constructor."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

import pytest

from pyflannel import kubemode
from pyflannel.backend import get_backend
from pyflannel.core.config import parse_config
from pyflannel.core.host import ExternalInterface

A4 = ipaddress.IPv4Address
EXT = ExternalInterface("eth0", 2, 1500, A4("198.18.0.11"), A4("198.18.0.11"))
DUAL = {"Network": "10.0.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10::/56"}


def config(backend: dict[str, object], **top: object) -> object:
    return parse_config(json.dumps({"Network": "10.0.0.0/16", **top, "Backend": backend}))


@pytest.mark.parametrize("btype", ["udp", "vxlan", "host-gw", "wireguard"])
def test_a_backend_names_an_unknown_key_in_check_config_and_its_constructor_logs_nothing(
        btype: str, caplog: pytest.LogCaptureFixture) -> None:
    conf = config({"Type": btype, "Bogus": 1})
    ctor = get_backend(btype)
    assert [w for w in ctor.check_config(conf) if "'Bogus'" in w], "the unknown key is not named"
    with caplog.at_level(logging.WARNING):
        ctor(EXT, conf)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("btype,says", [("udp", True), ("wireguard", False), ("aws-vpc", True), ("gce", True),
                                        ("vxlan", False), ("host-gw", False)])
def test_enable_ipv6_on_a_backend_that_carries_ipv4_only_is_named(btype: str, says: bool) -> None:
    warnings = get_backend(btype).check_config(config({"Type": btype}, **{k: v for k, v in DUAL.items()
                                                                          if k != "Network"}))
    named = [w for w in warnings if "fd00:10::/56" in w]
    assert len(named) == (1 if says else 0), warnings


class _KubeRegistry:
    config_key = "/etc/kube-flannel/net-conf.json"

    async def get_config(self) -> bytes:
        return b'{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Bogus": 1}}'


def test_kube_mode_names_the_backend_warnings_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        asyncio.run(kubemode.read_config(_KubeRegistry()))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records if "'Bogus'" in r.getMessage()] == [
        "vxlan backend: ignoring unknown key 'Bogus' in Backend (known: DirectRouting, GBP, Learning, MTU, Port, VNI)"]
