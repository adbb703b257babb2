"""The one lab fixture of the end-to-end tests.

``make_lab(name, hosts, backend, ...)`` gives a context manager around a running lab:

    @pytest.fixture(scope="module")
    def lab(make_lab):
        with make_lab("pfxx", 2, "vxlan", extra=("-ip-masq",)) as lab:
            yield lab

On entry it removes whatever a crashed run left under the same name (``stop_everything``), then
builds the lab (etcd, hosts, flanneld, docker0 and a container per host). On leaving it tears the
lab down, also when building it or a test failed, and then checks that no namespace of the lab is
left. Teardown belongs to the ``with``, so a parametrised module fixture has one lab at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType

import pytest

from pyflannel.lab import goflannel
from pyflannel.lab import kube_apiserver as kube_apiserver_lab
from pyflannel.lab.cluster import Lab, stop_everything
from pyflannel.lab.netns import ns_add, ns_delete, ns_list

from .helpers import TrafficDriver


@contextlib.contextmanager
def running_lab(name: str, hosts: int = 3, backend: str = "udp", *, config: str | None = None,
                write_config: bool = True, extra: tuple[str, ...] = (), subnet_max: str = "",
                env: Mapping[str, str] | None = None, wait: float = 30.0, go_hosts: tuple[int, ...] = (),
                host_extra: Mapping[int, tuple[str, ...]] | None = None,
                host_command: Mapping[int, tuple[str, ...]] | None = None, ipv6: str = "",
                kube: bool = False) -> Iterator[Lab]:
    """A lab named ``name`` with ``hosts`` hosts on ``backend``.

    config        the network config written to etcd before flanneld starts (default: the lab's,
                  from ``backend`` and ``subnet_max``)
    write_config  False: flanneld starts and waits for a config the test writes (``put_config``,
                  then ``finish``); no subnet.env, docker0 or container until then
    extra         more flanneld flags, on every host (a test restarting flanneld passes them again)
    env           environment for the lab's whole life, inherited by every flanneld it starts
    wait          seconds each host has to write its subnet.env
    go_hosts      indexes (from 1) of the hosts that run Go flannel's flanneld instead of ours (ask
                  for the ``go_flanneld`` fixture first, so that the test skips without it)
    host_extra    more flanneld flags for one host only: {index: flags}, kept across restarts
    host_command  the command that runs flanneld on one host instead of ours: {index: argv}; the
                  flags follow it (test_deb.py: the packaged flanneld in a Debian root)
    ipv6          "dual": an IPv6 underlay and a dual-stack network (lab/ipv6.py)
    kube          kube mode: a real kube-apiserver instead of etcd, one Node per host (ask for the
                  ``kube_apiserver`` fixture first, so that the test skips without it)
    """
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, TUN devices)")
    stop_everything(name)
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    lab = Lab(name=name, hosts_n=hosts, backend=backend, subnet_max=subnet_max, go_hosts=tuple(go_hosts),
              host_extra=dict(host_extra or {}), host_command=dict(host_command or {}), ipv6=ipv6, kube=kube)
    try:
        lab.up(write_config=write_config, config=config, wait=wait, extra=tuple(extra))
        yield lab
    finally:
        try:
            lab.down()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    left = [ns for ns in ns_list() if ns.startswith(f"{name}-")]
    assert not left, f"namespaces of lab {name} left after its teardown: {left}"


@pytest.fixture(scope="session")
def make_lab() -> Callable[..., contextlib.AbstractContextManager[Lab]]:
    """``make_lab(name, hosts=3, backend="udp", *, config=None, write_config=True, extra=(),
    subnet_max="", env=None, wait=30.0, go_hosts=(), host_extra=None, host_command=None, ipv6="")``: see
    ``running_lab``."""
    return running_lab


def built_peer(peer: ModuleType) -> str:
    """The binary setup built for ``peer`` (lab/goflannel.py, lab/kube_apiserver.py: ``binary``,
    ``missing``, ``required``, ``REQUIRE_ENV``). Without it the test skips with setup's one-line
    reason, or fails when the peer's PYFLANNEL_REQUIRE_...=1 (CI: these tests must run)."""
    path = peer.binary()
    if path is None:
        if peer.required():
            pytest.fail(f"{peer.missing()} ({peer.REQUIRE_ENV}=1: not skipping)")
        pytest.skip(peer.missing())
    return path


@pytest.fixture(scope="session")
def kube_apiserver() -> str:
    """The kube-apiserver built by setup (lab/kube_apiserver.py); skips or fails as ``built_peer``."""
    return built_peer(kube_apiserver_lab)


@pytest.fixture(scope="session")
def go_flanneld() -> str:
    """The Go flanneld built by setup (lab/goflannel.py); skips or fails as ``built_peer``."""
    return built_peer(goflannel)


@pytest.fixture
def ns(root: None, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bare namespace named by the test module's ``NS``, removed afterwards (also on failure)."""
    name = request.module.NS
    ns_delete(name)
    ns_add(name)
    try:
        yield name
    finally:
        ns_delete(name)
    assert name not in ns_list()


@pytest.fixture
def driver(ns: str) -> Iterator[Callable[..., TrafficDriver]]:
    """Start TrafficManagers in ``ns``, each in a process of its own (as one flanneld each)."""
    made: list[TrafficDriver] = []

    def make(**opts: bool) -> TrafficDriver:
        made.append(TrafficDriver(ns, **opts))
        return made[-1]

    yield make
    for d in made:
        d.close()
