"""The aws-vpc backend against moto running as a real local server on 127.0.0.1, through boto3
exactly as on AWS: the test builds a VPC, a subnet, a route table and 3 instances with their ENIs,
then runs the backend's entry point once per instance (ctor -> check_config -> prepare -> setup
-> converger start -> lease events, as the daemon does), each with its own metadata endpoint.

Two things moto does not do are supplied here, in the open: per-instance metadata (a small front
that answers ``instance-id`` and forwards the rest to moto's metadata endpoints), and AWS's
``blackhole`` route state (moto reports every route active; patched to say blackhole when the
route's ENI was deleted, as AWS does). The same front injects AWS's throttling, route-limit and
UnauthorizedOperation answers; moto's own IAM enforcement supplies a real denial.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from cloud_helpers import join, lease
from moto.ec2.models.route_tables import Route as MotoRoute
from moto.server import ThreadedMotoServer

from pyflannel.backend import get_backend
from pyflannel.backend.awsvpc import AwsVpcBackend
from pyflannel.backend.base_cloud import (
    CloudRoute,
    MetadataUnavailable,
    MissingPermission,
    RouteLimitError,
    plan_cleanup,
)
from pyflannel.core.config import parse_config
from pyflannel.core.errors import ConfigError, LocalConfigError
from pyflannel.core.host import ExternalInterface

NET = N("10.0.0.0/16")
REGION = "us-east-1"  # what moto's metadata endpoint reports
WRITES = {"CreateRoute", "ReplaceRoute", "DeleteRoute"}


def _moto_route_state(self: MotoRoute) -> str:
    """AWS: a route whose target ENI was deleted is a blackhole. moto: always active."""
    eni = self.interface
    return "blackhole" if eni is not None and eni.id not in self.route_table.ec2_backend.enis else "active"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MotoRoute, "state", property(_moto_route_state))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def ec2_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}'
            "</Message></Error></Errors><RequestID>injected</RequestID></Response>").encode()


class Front:
    """An HTTP front for moto on 127.0.0.1: logs every EC2 action (or metadata path), answers
    ``overrides`` paths itself, injects queued ``faults`` per action, forwards the rest unchanged
    (Host included, so request signatures stay valid)."""

    def __init__(self, upstream: str, overrides: dict[str, str] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.overrides = overrides or {}
        self.faults: dict[str, list[tuple[int, str, str]]] = {}
        self.log: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def actions(self) -> list[str]:
        return [a for a in self.log if not a.startswith("/")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = parse_qs(body.decode()).get("Action", [self.path])[0]
                front.log.append(action)
                if self.path in front.overrides:
                    return self.reply(200, front.overrides[self.path].encode(), "text/plain")
                if front.faults.get(action):
                    status, code, message = front.faults[action].pop(0)
                    return self.reply(status, ec2_error(code, message), "text/xml")
                conn = http.client.HTTPConnection(front.upstream.hostname, front.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
                conn.request(self.command, self.path, body, headers)
                resp = conn.getresponse()
                self.reply(resp.status, resp.read(), resp.getheader("Content-Type", "text/xml"))
                conn.close()

            def reply(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = handle_any

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class World:
    ec2: Any
    api: Front
    vpc: str
    subnet: str
    table: str
    instances: list[str]
    enis: list[str]
    ips: list[str]
    fronts: list[Front] = field(default_factory=list)

    def routes(self, table: str | None = None) -> dict[str, str]:
        """dest -> target (ENI) of the non-local routes; a blackhole shows as 'blackhole:<eni>'."""
        rt = self.ec2.describe_route_tables(RouteTableIds=[table or self.table])["RouteTables"][0]
        return {r["DestinationCidrBlock"]: ("blackhole:" if r["State"] == "blackhole" else "") +
                r.get("NetworkInterfaceId", r.get("GatewayId", "")) for r in rt["Routes"]
                if r.get("GatewayId") != "local"}

    def backend(self, i: int, backend: dict[str, Any] | None = None, iface_addr: str = "") -> AwsVpcBackend:
        """Host i's backend, as the daemon builds it: with its own metadata endpoint."""
        imds = Front(self.api.upstream.geturl(), {"/latest/meta-data/instance-id": self.instances[i]})
        self.fronts.append(imds)
        config = parse_config(json.dumps({"Network": str(NET), "Backend": {"Type": "aws-vpc", **(backend or {})}}))
        get_backend("aws-vpc").check_config(config)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
            ip = A(iface_addr or self.ips[i])
            be = AwsVpcBackend(ExternalInterface("eth0", 2, 9001, ip, ip), config)
        be.stale_grace_s = 0.0
        return be




@pytest.fixture
def world(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    api = Front(moto_url)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
              "https_proxy", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_ENDPOINT_URL", api.url)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    vpc = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="198.18.1.0/24")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    found = ec2.run_instances(ImageId="ami-12c6146b", MinCount=3, MaxCount=3, SubnetId=subnet)["Instances"]
    w = World(ec2, api, vpc, subnet, table, [i["InstanceId"] for i in found],
              [i["NetworkInterfaces"][0]["NetworkInterfaceId"] for i in found],
              [i["NetworkInterfaces"][0]["PrivateIpAddress"] for i in found])
    try:
        yield w
    finally:
        for f in [api, *w.fronts]:
            f.close()


def test_three_hosts_join_then_a_lease_goes(world: World) -> None:
    leases = [lease(f"10.0.{i + 1}.0/24", world.ips[i]) for i in range(3)]
    hosts = [world.backend(i) for i in range(3)]

    async def scenario() -> None:
        joined = [await join(be, leases[i], leases[:i] + leases[i + 1:]) for i, be in enumerate(hosts)]
        assert world.routes() == {f"10.0.{i + 1}.0/24": world.enis[i] for i in range(3)}
        for eni in world.enis:
            attr = world.ec2.describe_network_interface_attribute(NetworkInterfaceId=eni, Attribute="sourceDestCheck")
            assert attr["SourceDestCheck"]["Value"] is False
        assert [be.mtu() for be in hosts] == [9001] * 3
        assert [be.tables for be in hosts] == [(world.table,)] * 3  # detected from the subnet's association

        # host 3's lease is deleted: host 2 (not the lowest subnet) leaves the route alone and makes
        # no call at all; host 1 (the lowest) removes it
        before = len(world.api.actions())
        await joined[1].peers([leases[0]])
        assert world.api.actions()[before:] == []
        assert "10.0.3.0/24" in world.routes()
        await joined[0].peers([leases[1]])
        assert world.routes() == {"10.0.1.0/24": world.enis[0], "10.0.2.0/24": world.enis[1]}

    asyncio.run(scenario())


def test_cleanup_keeps_what_belongs_to_live_hosts_and_removes_blackholes(world: World) -> None:
    ec2, t = world.ec2, world.table
    leases = [lease(f"10.0.{i + 1}.0/24", world.ips[i]) for i in range(2)]  # host 2 is live: it holds a lease

    def blackhole(*dests: str) -> None:
        spare = ec2.create_network_interface(SubnetId=world.subnet)["NetworkInterface"]["NetworkInterfaceId"]
        for dest in dests:
            ec2.create_route(RouteTableId=t, DestinationCidrBlock=dest, NetworkInterfaceId=spare)
        ec2.delete_network_interface(NetworkInterfaceId=spare)  # its routes turn blackhole, as on AWS
        assert world.routes()[dests[0]] == f"blackhole:{spare}"

    blackhole("10.0.9.0/24", "192.168.9.0/24")
    for dest, eni in (("10.0.7.0/24", world.enis[1]), ("10.0.8.0/24", world.enis[0]),
                      ("10.0.6.0/24", world.enis[2]), ("10.0.0.0/20", world.enis[2])):
        ec2.create_route(RouteTableId=t, DestinationCidrBlock=dest, NetworkInterfaceId=eni)
    h1, h2 = world.backend(0), world.backend(1)
    clock = [1000.0]
    h1.clock = lambda: clock[0]
    h1.stale_grace_s = 30.0

    async def scenario() -> None:
        host1 = await join(h1, leases[0], [leases[1]])  # the lowest subnet: the cleaner
        got = world.routes()
        assert "10.0.9.0/24" not in got  # blackhole inside the network
        assert got["192.168.9.0/24"].startswith("blackhole:")  # outside the network: not ours to touch
        assert "10.0.8.0/24" not in got  # unleased, pointed at h1 itself: an old lease of ours
        assert got["10.0.7.0/24"] == world.enis[1]  # unleased, but points at a live host: never deleted
        assert got["10.0.6.0/24"] == world.enis[2]  # unleased, instance 3 holds no lease: within the grace
        assert got["10.0.0.0/20"] == world.enis[2]  # not a subnet-sized route: not flannel's
        clock[0] += 61
        await host1.timer()  # the timer's pass, past the grace
        assert "10.0.6.0/24" not in world.routes()
        assert world.routes()["10.0.7.0/24"] == world.enis[1]

        blackhole("10.0.10.0/24")
        await join(h2, leases[1], [leases[0]])  # not the cleaner: blackholes and its own stale route only
        got = world.routes()
        assert "10.0.10.0/24" not in got and "10.0.7.0/24" not in got
        assert got == {"10.0.1.0/24": world.enis[0], "10.0.2.0/24": world.enis[1], "10.0.0.0/20": world.enis[2],
                       "192.168.9.0/24": got["192.168.9.0/24"]}

    asyncio.run(scenario())


def test_restart_is_idempotent_and_a_wrong_route_is_replaced(world: World) -> None:
    world.ec2.create_route(RouteTableId=world.table, DestinationCidrBlock="10.0.1.0/24",
                           NetworkInterfaceId=world.enis[2])
    own = lease("10.0.1.0/24", world.ips[0])
    asyncio.run(join(world.backend(0), own, []))
    assert world.routes() == {"10.0.1.0/24": world.enis[0]}
    assert "ReplaceRoute" in world.api.actions() and "CreateRoute" not in world.api.actions()
    before = len(world.api.actions())
    asyncio.run(join(world.backend(0), own, []))  # flanneld restarted: nothing to write
    assert not WRITES & set(world.api.actions()[before:])


def test_route_table_ids_given_as_a_list(world: World) -> None:
    other = world.ec2.create_route_table(VpcId=world.vpc)["RouteTable"]["RouteTableId"]
    be = world.backend(0, {"RouteTableID": [world.table, other]})
    asyncio.run(join(be, lease("10.0.1.0/24", world.ips[0]), []))
    assert world.routes(world.table) == world.routes(other) == {"10.0.1.0/24": world.enis[0]}


def test_a_configured_table_that_does_not_exist(world: World) -> None:
    be = world.backend(0, {"RouteTableID": "rtb-0123456789abcdef0"})
    with pytest.raises(ConfigError, match=r"rtb-0123456789abcdef0.*fix Backend\.RouteTableID"):
        asyncio.run(join(be, lease("10.0.1.0/24", world.ips[0]), []))


def test_main_table_when_the_subnet_has_no_table(world: World) -> None:
    assoc = world.ec2.describe_route_tables(RouteTableIds=[world.table])["RouteTables"][0]["Associations"][0]
    world.ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
    main = world.ec2.describe_route_tables(Filters=[{"Name": "association.main", "Values": ["true"]},
                                                    {"Name": "vpc-id", "Values": [world.vpc]}])["RouteTables"][0]
    be = world.backend(0)
    asyncio.run(join(be, lease("10.0.1.0/24", world.ips[0]), []))
    assert be.tables == (main["RouteTableId"],)
    assert world.routes(main["RouteTableId"]) == {"10.0.1.0/24": world.enis[0]}


def test_a_call_denied_by_iam_names_the_permission(world: World, moto_url: str, monkeypatch, caplog) -> None:
    iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
    iam.create_user(UserName="flannel")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"}]}
    iam.put_user_policy(UserName="flannel", PolicyName="describe-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="flannel")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    requests.post(f"{moto_url}/moto-api/reset-auth", data="0", timeout=10).raise_for_status()  # moto enforces IAM
    try:
        be = world.backend(0)
        with pytest.raises(MissingPermission) as err:
            asyncio.run(join(be, lease("10.0.1.0/24", world.ips[0]), []))
    finally:
        requests.post(f"{moto_url}/moto-api/reset-auth", data="inf", timeout=10).raise_for_status()
    assert err.value.permission == "ec2:CreateRoute"
    assert "missing permission ec2:CreateRoute" in str(err.value) and "instance profile" in str(err.value)
    assert "ec2:ModifyNetworkInterfaceAttribute" in caplog.text  # denied too: a warning, as flannel
    assert world.routes() == {}


def test_aws_unauthorized_operation_is_named(world: World) -> None:
    world.api.faults["DescribeRouteTables"] = [(403, "UnauthorizedOperation", "You are not authorized to perform "
                                                "this operation.")]
    with pytest.raises(MissingPermission, match="ec2:DescribeRouteTables"):
        asyncio.run(world.backend(0).prepare(None))


def test_throttling_is_retried_with_backoff(world: World) -> None:
    world.api.faults["DescribeRouteTables"] = [(503, "RequestLimitExceeded", "Request limit exceeded.")] * 2
    asyncio.run(join(world.backend(0), lease("10.0.1.0/24", world.ips[0]), []))
    assert world.api.actions().count("DescribeRouteTables") >= 3
    assert world.routes() == {"10.0.1.0/24": world.enis[0]}


def test_route_limit_reached_names_the_table_and_suggests_vxlan(world: World) -> None:
    world.api.faults["CreateRoute"] = [(400, "RouteLimitExceeded", "The maximum number of routes has been reached.")]
    with pytest.raises(RouteLimitError) as err:
        asyncio.run(join(world.backend(0), lease("10.0.1.0/24", world.ips[0]), []))
    assert world.table in str(err.value) and "vxlan" in str(err.value)


def test_near_the_route_limit_warns(world: World, caplog: pytest.LogCaptureFixture) -> None:
    for n in (5, 6):
        world.ec2.create_route(RouteTableId=world.table, DestinationCidrBlock=f"192.168.{n}.0/24",
                               NetworkInterfaceId=world.enis[2])
    with caplog.at_level(logging.WARNING):
        asyncio.run(join(world.backend(0, {"RouteLimit": 5}), lease("10.0.1.0/24", world.ips[0]), []))
    assert f"route table {world.table} holds 4 routes of its limit of 5" in caplog.text
    assert "vxlan" in caplog.text


def test_no_metadata_service_says_how_to_point_at_one(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}/")
    config = parse_config(json.dumps({"Network": str(NET), "Backend": {"Type": "aws-vpc"}}))
    be = AwsVpcBackend(ExternalInterface("eth0", 2, 9001, A(world.ips[0]), A(world.ips[0])), config)
    with pytest.raises(MetadataUnavailable, match="AWS_EC2_METADATA_SERVICE_ENDPOINT=http://HOST:PORT/"):
        asyncio.run(be.prepare(None))


def test_interface_address_on_no_eni(world: World) -> None:
    with pytest.raises(LocalConfigError) as err:
        asyncio.run(world.backend(0, iface_addr="198.18.1.250").prepare(None))
    msg = str(err.value)
    assert f"no ENI of instance {world.instances[0]} carries 198.18.1.250" in msg
    assert f"{world.enis[0]}: {world.ips[0]}" in msg and "--iface" in msg


@pytest.mark.parametrize("value", [42, [], ["rtb-0a1b", 7], "igw-0a1b", {"id": "rtb-0a1b"}, True])
def test_route_table_id_of_the_wrong_type(value: Any) -> None:
    config = parse_config(json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "aws-vpc", "RouteTableID": value}}))
    with pytest.raises(ConfigError, match="RouteTableID"):
        get_backend("aws-vpc").check_config(config)


def test_config_checks() -> None:
    ok = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "aws-vpc", "routetableid": "rtb-0a1b",'
                      ' "Port": 1}}')
    assert get_backend("aws-vpc").check_config(ok) == [
        "aws-vpc backend: ignoring unknown key 'Port' in Backend (known: RouteLimit, RouteTableID)"]
    bad = parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "aws-vpc", "RouteLimit": 0}}')
    with pytest.raises(ConfigError, match="RouteLimit"):
        get_backend("aws-vpc").check_config(bad)


def r(dest: str, target: str, blackhole: bool = False) -> CloudRoute:
    return CloudRoute("rtb-1", N(dest), target, blackhole=blackhole)


def test_plan_cleanup_rules() -> None:
    own, live = N("10.0.1.0/24"), [N("10.0.1.0/24"), N("10.0.2.0/24")]
    routes = [r("10.0.1.0/24", "eni-other"), r("10.0.2.0/24", "eni-2"), r("10.0.3.0/24", "eni-1"),
              r("10.0.4.0/24", "eni-4"), r("10.0.5.0/24", "", blackhole=True), r("10.1.0.0/24", "eni-9"),
              r("10.0.6.0/24", ""), r("10.0.0.0/20", "eni-4"), r("172.16.0.0/24", "", blackhole=True)]
    plan = plan_cleanup(routes, NET, 24, own, "eni-1", live, cleaner=True)
    assert [(x.dest, why) for x, why in plan.delete] == [
        (N("10.0.3.0/24"), "points at us but our lease is 10.0.1.0/24"),
        (N("10.0.5.0/24"), "blackhole route inside the network")]
    assert [x.dest for x in plan.suspects] == [N("10.0.4.0/24")]
    assert plan_cleanup(routes, NET, 24, own, "eni-1", live, cleaner=False).suspects == ()
    before_snapshot = plan_cleanup(routes, NET, 24, own, "eni-1", None, cleaner=True)
    assert [x.dest for x, _ in before_snapshot.delete] == [N("10.0.5.0/24")] and before_snapshot.suspects == ()
