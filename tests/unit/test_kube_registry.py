"""The kube registry's event logic without a server: Node watch events -> Changes for the peer table."""

import ipaddress

from pyflannel.core.events import BadLease, PeerTable
from pyflannel.store.kube import KubeOptions, KubeRegistry

P = "flannel.alpha.coreos.com/"
N = ipaddress.IPv4Network


def node(name, cidr, ip="198.18.0.11", **extra):
    ann = {P + "kube-subnet-manager": "true", P + "public-ip": ip, P + "backend-type": "vxlan",
           P + "backend-data": '{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}', **extra}
    return {"metadata": {"name": name, "annotations": ann, "resourceVersion": "7"}, "spec": {"podCIDR": cidr}}


def test_add_modify_delete_and_a_moved_podcidr():
    reg, table = KubeRegistry(KubeOptions()), PeerTable()
    ch = reg._change("ADDED", node("a", "10.0.1.0/24"), 5)
    assert [le.subnet for le in ch.puts] == [N("10.0.1.0/24")] and ch.revision == 5
    table.apply(ch)
    ch = reg._change("MODIFIED", node("a", "10.0.4.0/24"), 6)  # podCIDR changed: old subnet goes
    assert ch.deletes == (N("10.0.1.0/24"),) and [le.subnet for le in ch.puts] == [N("10.0.4.0/24")]
    table.apply(ch)
    ch = reg._change("DELETED", node("a", "10.0.4.0/24"), 7)
    assert ch.deletes == (N("10.0.4.0/24"),)
    table.apply(ch)
    assert table.leases == {}


def test_garbage_on_a_known_node_keeps_its_last_good_lease():
    reg, table = KubeRegistry(KubeOptions()), PeerTable()
    table.apply(reg._change("ADDED", node("a", "10.0.1.0/24"), 5))
    ch = reg._change("MODIFIED", node("a", "10.0.1.0/24", ip="garbage"), 6)
    assert ch.deletes == () and ch.puts == ()
    assert isinstance(ch.bad[0], BadLease) and ch.bad[0].key == "node a" and "public-ip" in ch.bad[0].reason
    table.apply(ch)
    assert N("10.0.1.0/24") in table.leases


def test_a_node_that_stops_being_a_flannel_node_is_removed():
    reg = KubeRegistry(KubeOptions())
    reg._change("ADDED", node("a", "10.0.1.0/24"), 5)
    plain = {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.1.0/24"}}
    assert reg._change("MODIFIED", plain, 6).deletes == (N("10.0.1.0/24"),)


class _Raw:
    """A raw (``_preload_content=False``) response: the client does not check its status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def read(self) -> bytes:
        return self.body


def _answer(status: int, body: bytes):
    async def fn(*args, **kwargs):
        return _Raw(status, body)
    return fn


def test_an_error_status_of_a_raw_response_is_an_error_not_the_object():
    import asyncio

    import pytest

    from pyflannel.core.errors import StoreUnavailable
    from pyflannel.store.kube import KubeForbidden

    reg = KubeRegistry(KubeOptions())
    forbidden = b'{"kind":"Status","status":"Failure","message":"nodes \\"h1\\" is forbidden","code":403}'
    with pytest.raises(KubeForbidden, match="forbids get on nodes/h1: nodes \"h1\" is forbidden"):
        asyncio.run(reg._call("get", "nodes/h1", _answer(403, forbidden)))
    with pytest.raises(StoreUnavailable, match="HTTP 503"):
        asyncio.run(reg._call("get", "nodes/h1", _answer(503, b'{"kind":"Status","message":"not ready"}')))
    assert asyncio.run(reg._call("get", "nodes/h1", _answer(200, b'{"kind":"Node"}'))) == {"kind": "Node"}
    assert reg.errors == 2


def test_the_kube_lease_manager_takes_every_call_the_keeper_and_conductor_make():
    """The keeper and the Conductor call either manager the same way (a rebase once changed the
    etcd manager's ``recreate`` and left the kube one behind: the keeper died on a deleted Node)."""
    import inspect

    from pyflannel.store.kube_manager import KubeLeaseManager
    from pyflannel.store.manager import LeaseManager

    for name in ("acquire", "renew", "recreate"):
        etcd = inspect.signature(getattr(LeaseManager, name))
        kube = inspect.signature(getattr(KubeLeaseManager, name))
        args = [p.name for p in etcd.parameters.values() if p.default is inspect.Parameter.empty]
        kube.bind(*args)  # every required argument of the etcd manager's call is accepted
        etcd_optional = [p for p in etcd.parameters.values() if p.default is not inspect.Parameter.empty]
        kube.bind(*args, *[p.name for p in etcd_optional])


def test_a_401_makes_the_next_call_re_read_the_service_account_token(tmp_path):
    """In-cluster config reads the token file once a minute; on a 401 (a revoked or expired token)
    the very next call reads it again, as client-go does, so a renewed token works at once."""
    import asyncio

    import pytest
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

    from pyflannel.store.kube import KubeUnauthorized

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("old")
    ca.write_text("x")
    loader = InClusterConfigLoader(str(token), str(ca), environ={"KUBERNETES_SERVICE_HOST": "198.18.0.2",
                                                                 "KUBERNETES_SERVICE_PORT": "6443"})
    cfg = Configuration()
    loader.load_and_set(cfg)
    reg = KubeRegistry(KubeOptions())
    reg._incluster = loader
    token.write_text("new")
    key = lambda: asyncio.run(cfg.get_api_key_with_prefix("BearerToken"))  # noqa: E731
    assert key() == "Bearer old"  # within the minute: the cached one
    with pytest.raises(KubeUnauthorized, match=r"401 Unauthorized.*re-reads the service-account token file"):
        asyncio.run(reg._call("get", "nodes/h1", _answer(401, b'{"kind":"Status","code":401}')))
    assert key() == "Bearer new"


def test_the_watch_timeout_env(monkeypatch):
    from pyflannel.store.kube import WATCH_TIMEOUT_ENV, WATCH_TIMEOUT_S

    monkeypatch.setenv(WATCH_TIMEOUT_ENV, "3")
    assert KubeRegistry(KubeOptions()).watch_timeout == 3
    monkeypatch.setenv(WATCH_TIMEOUT_ENV, "soon")
    assert KubeRegistry(KubeOptions()).watch_timeout == WATCH_TIMEOUT_S
