"""The gce backend against a small local fake of the Compute Engine REST endpoints it calls
(routes get/insert/delete/list, globalOperations get, networks get, instances get) and of the
metadata server, on 127.0.0.1. No real Google endpoint is reachable here; the fake keeps a request
log, so the tests check the exact requests: names, bodies, headers, operation polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cloud_helpers import CloudHost, join, lease

from pyflannel.backend import get_backend
from pyflannel.backend.base_cloud import MetadataUnavailable, MissingPermission, RouteLimitError
from pyflannel.backend.gce import Compute, GceBackend, route_name
from pyflannel.core.config import parse_config
from pyflannel.core.errors import LocalConfigError
from pyflannel.core.host import ExternalInterface
from pyflannel.core.lease import Lease

PROJECT, ZONE, NETWORK = "proj-1", "us-central1-a", "default"
API = "https://www.googleapis.com/compute/v1"  # what GCE writes in selfLinks, whatever endpoint was called
NET_LINK = f"{API}/projects/{PROJECT}/global/networks/{NETWORK}"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"


def inst_link(name: str) -> str:
    return f"{API}/projects/{PROJECT}/zones/{ZONE}/instances/{name}"


class FakeGce:
    """Metadata server (per instance, under /md/<instance>/computeMetadata/v1) and Compute API
    (under /compute/v1). Inserts and deletes are applied when their operation is polled DONE,
    after ``op_polls`` answers of RUNNING; ``faults`` queues answers for (method, path)."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.scopes: dict[str, str] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, dict[str, Any]] = {}
        self.op_polls = 2
        self.page_size = 2
        self.faults: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        self.log: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def add_instance(self, name: str, ip: str, can_ip_forward: bool = True) -> None:
        self.instances[name] = {"kind": "compute#instance", "name": name, "selfLink": inst_link(name),
                                "canIpForward": can_ip_forward, "zone": f"{API}/projects/{PROJECT}/zones/{ZONE}",
                                "networkInterfaces": [{"name": "nic0", "network": NET_LINK, "networkIP": ip}]}
        self.scopes[name] = f"{COMPUTE_SCOPE}\nhttps://www.googleapis.com/auth/logging.write\n"

    def add_route(self, name: str, dest: str, instance: str, network: str = NET_LINK) -> None:
        self.routes[name] = {"kind": "compute#route", "name": name, "network": network, "destRange": dest,
                             "nextHopInstance": inst_link(instance), "priority": 1000}

    def compute_log(self) -> list[tuple[str, str, Any]]:
        return [e for e in self.log if e[1].startswith("/compute/")]

    def _route_view(self, route: dict[str, Any]) -> dict[str, Any]:
        name = route["nextHopInstance"].rsplit("/", 1)[-1]
        if name not in self.instances:
            return {**route, "warnings": [{"code": "NEXT_HOP_INSTANCE_NOT_FOUND", "message": "gone"}]}
        return route

    def metadata(self, inst: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        me = self.instances[inst]
        if path == "instance/service-accounts/default/token":
            return 200, {"access_token": f"tok-{inst}", "expires_in": 3599, "token_type": "Bearer"}
        if path == "instance/network-interfaces/" and query.get("recursive") == ["true"]:
            return 200, [{"ip": n["networkIP"], "network": f"projects/123456/networks/{NETWORK}", "mac": "42:01"}
                         for n in me["networkInterfaces"]]
        answers = {"project/project-id": PROJECT, "instance/zone": f"projects/123456/zones/{ZONE}",
                   "instance/name": inst, "instance/service-accounts/default/scopes": self.scopes[inst]}
        return (200, answers[path]) if path in answers else (404, "not found")

    def compute(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        prefix = f"/compute/v1/projects/{PROJECT}/"
        rest = path.removeprefix(prefix)
        if rest.startswith("global/operations/"):
            op = self.ops[rest.rsplit("/", 1)[1]]
            op["left"] -= 1
            if op["left"] <= 0 and op["status"] != "DONE":
                op["status"] = "DONE"
                op.pop("apply")()
            view = {k: v for k, v in op.items() if k not in ("left", "apply")}
            return 200, {**view, "status": op["status"] if op["left"] <= 0 else "RUNNING"}
        if rest == f"global/networks/{NETWORK}":
            return 200, {"kind": "compute#network", "name": NETWORK, "selfLink": NET_LINK}
        if rest.startswith(f"zones/{ZONE}/instances/"):
            inst = self.instances.get(rest.rsplit("/", 1)[1])
            return (200, inst) if inst else (404, {"error": {"code": 404, "message": "instance not found"}})
        if rest == "global/routes" and method == "GET":
            items = [self._route_view(r) for _, r in sorted(self.routes.items())]
            start = int(query.get("pageToken", ["0"])[0])
            size = min(self.page_size, int(query.get("maxResults", ["500"])[0]))
            page = {"kind": "compute#routeList", "items": items[start:start + size]}
            return 200, page | ({"nextPageToken": str(start + size)} if start + size < len(items) else {})
        if rest == "global/routes" and method == "POST":
            return 200, self._op("insert", body["name"], lambda: self.routes.__setitem__(body["name"], body))
        if rest.startswith("global/routes/"):
            name = rest.rsplit("/", 1)[1]
            if name not in self.routes:
                return 404, {"error": {"code": 404, "message": f"The resource '{name}' was not found"}}
            if method == "DELETE":
                return 200, self._op("delete", name, lambda: self.routes.pop(name))
            return 200, self._route_view(self.routes[name])
        return 400, {"error": {"code": 400, "message": f"fake: unexpected {method} {path}"}}

    def _op(self, kind: str, name: str, apply: Any) -> dict[str, Any]:
        op_name = f"operation-{len(self.ops) + 1}"
        self.ops[op_name] = {"kind": "compute#operation", "name": op_name, "operationType": kind, "status": "PENDING",
                             "targetLink": f"{API}/projects/{PROJECT}/global/routes/{name}",
                             "left": self.op_polls, "apply": apply}
        return {k: v for k, v in self.ops[op_name].items() if k not in ("left", "apply")}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.log.append((self.command, self.path, body))
                    status, payload, headers = self.answer(url.path, parse_qs(url.query), body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def answer(self, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
                if path.startswith("/md/"):
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return 403, "Missing Metadata-Flavor:Google header.", {}
                    inst, _, rest = path.removeprefix("/md/").partition("/computeMetadata/v1/")
                    status, payload = fake.metadata(inst, rest, query)
                    return status, payload, {"Metadata-Flavor": "Google"}
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer tok-"):
                    return 401, {"error": {"code": 401, "message": "no token"}}, {}
                queued = fake.faults.get((self.command, path))
                if queued:
                    status, payload = queued.pop(0)
                    return status, payload, {"Content-Type": "application/json"}
                status, payload = fake.compute(self.command, path, query, body)
                return status, payload, {"Content-Type": "application/json"}

            do_GET = do_POST = do_DELETE = handle_any

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGce]:
    for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "GCE_METADATA_HOST", "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(Compute, "backoff_s", 0.01)
    monkeypatch.setattr(Compute, "poll_s", 0.01)
    f = FakeGce()
    for i in range(3):
        f.add_instance(f"node-{i + 1}", f"198.18.0.{11 + i}")
    monkeypatch.setenv("FLANNEL_GCE_COMPUTE_URL", f"{f.url}/compute/v1")
    try:
        yield f
    finally:
        f.close()


def backend(fake: FakeGce, inst: str, ip: str | None = None, opts: dict[str, Any] | None = None) -> GceBackend:
    """The daemon's construction for one instance, with that instance's metadata endpoint."""
    config = parse_config(json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "gce", **(opts or {})}}))
    get_backend("gce").check_config(config)
    addr = A(ip or fake.instances[inst]["networkInterfaces"][0]["networkIP"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLANNEL_GCE_METADATA_URL", f"{fake.url}/md/{inst}/computeMetadata/v1")
        be = GceBackend(ExternalInterface("ens4", 2, 1460, addr, addr), config)
    be.stale_grace_s = 0.0
    return be




def leases3(fake: FakeGce) -> list[Lease]:
    return [lease(f"10.0.{53 + i}.0/24", f"198.18.0.{11 + i}") for i in range(3)]


def test_route_name() -> None:
    assert route_name(N("10.0.53.0/24")) == "flannel-10-0-53-0-24"


def test_exact_requests_of_one_host_joining(fake: FakeGce) -> None:
    be, own = backend(fake, "node-1"), leases3(fake)[0]

    host = CloudHost(be, own)
    asyncio.run(host.start())
    p = f"/compute/v1/projects/{PROJECT}"
    body = {"name": "flannel-10-0-53-0-24", "network": NET_LINK, "destRange": "10.0.53.0/24",
            "nextHopInstance": inst_link("node-1"), "priority": 1000, "description": "flannel subnet lease of node-1"}
    md = "/md/node-1/computeMetadata/v1/"
    assert fake.log == [
        ("GET", md + "project/project-id", None), ("GET", md + "instance/zone", None),
        ("GET", md + "instance/name", None), ("GET", md + "instance/network-interfaces/?recursive=true", None),
        ("GET", md + "instance/service-accounts/default/scopes", None),
        ("GET", md + "instance/service-accounts/default/token", None),
        ("GET", f"{p}/global/networks/default", None), ("GET", f"{p}/zones/{ZONE}/instances/node-1", None),
        ("GET", f"{p}/global/routes/flannel-10-0-53-0-24", None),
        ("POST", f"{p}/global/routes", body),
        ("GET", f"{p}/global/operations/operation-1", None),  # RUNNING
        ("GET", f"{p}/global/operations/operation-1", None),  # DONE
        ("GET", f"{p}/global/routes?maxResults=500", None),  # cleanup before the leases are known: dangling only
    ]
    assert fake.routes["flannel-10-0-53-0-24"] == body
    before = len(fake.log)
    asyncio.run(host.peers([]))  # the first lease snapshot: alone, so the lowest subnet: a cleanup pass
    assert fake.log[before:] == [("GET", f"{p}/global/routes/flannel-10-0-53-0-24", None),
                                 ("GET", f"{p}/global/routes?maxResults=500", None)]


def test_three_hosts_join_then_a_lease_goes(fake: FakeGce) -> None:
    ls = leases3(fake)
    hosts = [backend(fake, f"node-{i + 1}") for i in range(3)]

    async def scenario() -> None:
        joined = [await join(be, ls[i], ls[:i] + ls[i + 1:]) for i, be in enumerate(hosts)]
        assert {n: (r["destRange"], r["nextHopInstance"]) for n, r in fake.routes.items()} == {
            f"flannel-10-0-{53 + i}-0-24": (f"10.0.{53 + i}.0/24", inst_link(f"node-{i + 1}")) for i in range(3)}
        assert [be.mtu() for be in hosts] == [1460] * 3
        before = len(fake.log)
        await joined[1].peers([ls[0]])  # not the lowest subnet: no request at all
        assert fake.log[before:] == []
        await joined[0].peers([ls[1]])  # the lowest: removes node-3's route
        assert set(fake.routes) == {"flannel-10-0-53-0-24", "flannel-10-0-54-0-24"}
        calls = [(m, u.rsplit("/", 1)[-1]) for m, u, _ in fake.log[before:]]
        assert ("GET", "node-3") in calls and ("DELETE", "flannel-10-0-55-0-24") in calls

    asyncio.run(scenario())


def test_a_route_with_another_next_hop_is_deleted_then_inserted(fake: FakeGce) -> None:
    fake.add_route("flannel-10-0-53-0-24", "10.0.53.0/24", "node-2")
    asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    writes = [(m, u.rsplit("/", 1)[-1]) for m, u, _ in fake.compute_log() if m != "GET" or "operations" in u]
    assert writes == [("DELETE", "flannel-10-0-53-0-24"), ("GET", "operation-1"), ("GET", "operation-1"),
                      ("POST", "routes"), ("GET", "operation-2"), ("GET", "operation-2")]
    assert fake.routes["flannel-10-0-53-0-24"]["nextHopInstance"] == inst_link("node-1")


def test_restart_makes_no_change(fake: FakeGce) -> None:
    asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    before = len(fake.log)
    asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    assert {m for m, _, _ in fake.log[before:]} == {"GET"}
    assert not [u for _, u, _ in fake.log[before:] if "operations" in u]


def test_cleanup_never_touches_live_hosts_other_networks_or_foreign_routes(fake: FakeGce) -> None:
    def dangling(name: str, dest: str) -> None:
        fake.add_instance("gone", "198.18.0.99")
        fake.add_route(name, dest, "gone")
        del fake.instances["gone"]  # GCE then says NEXT_HOP_INSTANCE_NOT_FOUND

    dangling("flannel-10-0-60-0-24", "10.0.60.0/24")
    fake.add_route("flannel-10-0-61-0-24", "10.0.61.0/24", "node-2")  # unleased, but node-2 is live
    fake.add_route("flannel-10-0-62-0-24", "10.0.62.0/24", "node-3", network=NET_LINK.replace("default", "other"))
    fake.add_route("my-own-route", "10.0.63.0/24", "node-3")
    fake.add_route("flannel-10-0-64-0-24", "10.0.64.0/24", "node-3")  # unleased, node-3 holds no lease
    ls = leases3(fake)
    asyncio.run(join(backend(fake, "node-1"), ls[0], [ls[1]]))  # the cleaner
    assert set(fake.routes) == {"flannel-10-0-53-0-24", "flannel-10-0-61-0-24", "flannel-10-0-62-0-24",
                                "my-own-route"}
    dangling("flannel-10-0-65-0-24", "10.0.65.0/24")
    asyncio.run(join(backend(fake, "node-2"), ls[1], [ls[0]]))  # not the cleaner: dangling and its own old route
    assert set(fake.routes) == {"flannel-10-0-53-0-24", "flannel-10-0-54-0-24", "flannel-10-0-62-0-24",
                                "my-own-route"}


def test_can_ip_forward_off_is_refused_with_the_fix(fake: FakeGce) -> None:
    fake.instances["node-1"]["canIpForward"] = False
    with pytest.raises(LocalConfigError, match=r"canIpForward off.*--can-ip-forward"):
        asyncio.run(backend(fake, "node-1").prepare(None))


def test_throttling_is_retried_with_backoff(fake: FakeGce) -> None:
    path = f"/compute/v1/projects/{PROJECT}/global/routes"
    fake.faults[("POST", path)] = [
        (429, {"error": {"code": 429, "message": "Rate Limit Exceeded", "errors": [{"reason": "rateLimitExceeded"}]}}),
        (403, {"error": {"code": 403, "message": "Rate Limit Exceeded",
                         "errors": [{"reason": "userRateLimitExceeded"}]}}),
        (503, {"error": {"code": 503, "message": "backend error"}})]
    asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    assert [m for m, u, _ in fake.log if urlsplit(u).path == path].count("POST") == 4
    assert "flannel-10-0-53-0-24" in fake.routes


def test_missing_iam_permission_is_named(fake: FakeGce) -> None:
    path = f"/compute/v1/projects/{PROJECT}/global/routes"
    msg = f"Required 'compute.routes.create' permission for 'projects/{PROJECT}/global/routes/flannel-10-0-53-0-24'"
    fake.faults[("POST", path)] = [(403, {"error": {"code": 403, "message": msg, "errors": [{"reason": "forbidden"}]}})]
    with pytest.raises(MissingPermission) as err:
        asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    assert err.value.permission == "compute.routes.create" and "roles/compute.networkAdmin" in str(err.value)


def test_missing_oauth_scope_is_named(fake: FakeGce) -> None:
    fake.scopes["node-1"] = "https://www.googleapis.com/auth/devstorage.read_only\n"
    with pytest.raises(MissingPermission, match=r"OAuth scope https://www\.googleapis\.com/auth/compute"):
        asyncio.run(backend(fake, "node-1").prepare(None))


def test_route_quota_reached_names_the_project_and_suggests_vxlan(fake: FakeGce) -> None:
    def fail_insert(method: str, path: str, query: Any, body: Any, orig: Any = fake.compute) -> tuple[int, Any]:
        status, payload = orig(method, path, query, body)
        if method == "POST":
            fake.ops[payload["name"]]["apply"] = lambda: fake.ops[payload["name"]].__setitem__(
                "error", {"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'ROUTES' exceeded. Limit: 250.0"}]})
        return status, payload

    fake.compute = fail_insert  # type: ignore[method-assign]
    with pytest.raises(RouteLimitError) as err:
        asyncio.run(join(backend(fake, "node-1"), leases3(fake)[0], []))
    assert f"project {PROJECT}" in str(err.value) and "vxlan" in str(err.value) and "ROUTES" in str(err.value)


def test_near_the_route_limit_warns(fake: FakeGce, caplog: pytest.LogCaptureFixture) -> None:
    for n in range(3):
        fake.add_route(f"other-{n}", f"192.168.{n}.0/24", "node-3")
    with caplog.at_level(logging.WARNING):
        asyncio.run(join(backend(fake, "node-1", opts={"RouteLimit": 5}), leases3(fake)[0], []))
    assert f"project {PROJECT} holds 4 routes of its limit of 5" in caplog.text and "vxlan" in caplog.text


def test_operation_wait_is_bounded(fake: FakeGce, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    fake.op_polls = 10**9
    monkeypatch.setattr(Compute, "op_timeout_s", 0.2)
    be = backend(fake, "node-1")

    async def scenario() -> None:
        host = CloudHost(be, leases3(fake)[0])
        await host.start()  # a transient failure: logged, not fatal
        assert "not DONE after 0.2s" in caplog.text and host.conv.stats.errors == 1
        assert "flannel-10-0-53-0-24" not in fake.routes
        fake.op_polls = 1
        await host.peers([])  # the next pass tries again
        assert "flannel-10-0-53-0-24" in fake.routes and "works again" in caplog.text

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())


def test_no_metadata_server_says_how_to_point_at_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FLANNEL_GCE_METADATA_URL", f"http://127.0.0.1:{port}/computeMetadata/v1")
    config = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "gce"}}')
    be = GceBackend(ExternalInterface("ens4", 2, 1460, A("198.18.0.11"), A("198.18.0.11")), config)
    with pytest.raises(MetadataUnavailable, match=r"Compute Engine instances only.*FLANNEL_GCE_METADATA_URL"):
        asyncio.run(be.prepare(None))


def test_interface_address_on_no_nic(fake: FakeGce) -> None:
    with pytest.raises(LocalConfigError, match=r"no network interface of instance node-1 has 198\.18\.0\.250.*"
                                               r"198\.18\.0\.11 \(default\)"):
        asyncio.run(backend(fake, "node-1", ip="198.18.0.250").prepare(None))
