"""The aws-vpc backend (flannel's ``backend/awsvpc``, removed in 2022): no encapsulation; each host
routes its own subnet to its own ENI in the VPC route table(s), and the VPC router forwards.

``Backend: {"Type": "aws-vpc", "RouteTableID": "rtb-…" | ["rtb-…", …], "RouteLimit": 50}``.
Without RouteTableID, the table associated with the instance's subnet is used, else the VPC's
main table. Region and instance ID come from the instance metadata service (IMDSv2, falling back
to v1); the ENI is the one carrying the external interface address; its source/dest check is
turned off (a warning if that is denied). The lease is ``{"PublicIP":"…","PublicIPv6":null}``.

Better than flannel: each IAM permission the API refuses is named (``MissingPermission``); a
warning when a table nears ``RouteLimit`` routes (AWS's default quota, 50), and an error naming
the table when it is full; stale routes are removed as ``base_cloud`` explains; our route is
fixed with one atomic ReplaceRoute (flannel: delete, then create); the whole state is re-checked
on a timer, so a route deleted by hand comes back.

Endpoints, all read where boto3 reads them (environment or ``~/.aws/config``), which is how the
tests point this at moto on 127.0.0.1:

- ``AWS_ENDPOINT_URL_EC2`` or ``AWS_ENDPOINT_URL``: the EC2 API;
- ``AWS_EC2_METADATA_SERVICE_ENDPOINT``: the metadata service (default http://169.254.169.254/).

IAM permissions needed (the instance profile): ec2:DescribeInstances, ec2:DescribeRouteTables,
ec2:DescribeNetworkInterfaces, ec2:CreateRoute, ec2:ReplaceRoute, ec2:DeleteRoute,
ec2:ModifyNetworkInterfaceAttribute. Throttling is retried by botocore's "standard" mode
(exponential backoff with jitter, ``MAX_ATTEMPTS`` attempts).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import urllib.error
import urllib.request
from typing import Any

import boto3
import botocore.session
from botocore import xform_name
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ..core.config import NetworkConfig
from ..core.errors import ConfigError, LocalConfigError
from ..core.host import ExternalInterface
from .base import check_keys
from .base_cloud import (
    CloudBackend,
    CloudError,
    CloudRoute,
    MetadataUnavailable,
    MissingPermission,
    RouteLimitError,
    require_ipv4,
    route_limit,
)

log = logging.getLogger(__name__)

PERMISSIONS = ("ec2:DescribeInstances", "ec2:DescribeRouteTables", "ec2:DescribeNetworkInterfaces",
               "ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:DeleteRoute", "ec2:ModifyNetworkInterfaceAttribute")
DEFAULT_IMDS = "http://169.254.169.254/"
DEFAULT_ROUTE_LIMIT = 50
MAX_ATTEMPTS = 8
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
_THROTTLED = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"}
_RTB = re.compile(r"rtb-[0-9a-zA-Z]+\Z")
_QUOTA_FIX = "ask AWS for a higher 'Routes per route table' quota (then raise Backend.RouteLimit)"


def parse_route_tables(config: NetworkConfig) -> tuple[str, ...] | None:
    """Backend.RouteTableID: a string or a non-empty list of strings; None when absent."""
    value = config.backend_option("RouteTableID")
    if value is None:
        return None
    tables = [value] if isinstance(value, str) else value
    if not isinstance(tables, list) or not tables or not all(isinstance(t, str) for t in tables):
        raise ConfigError(f"aws-vpc backend: RouteTableID must be a route table ID or a list of them, "
                          f'e.g. "rtb-0123abcd" or ["rtb-0123abcd", "rtb-4567ef01"], got {value!r} '
                          "(or leave it out to use the table of the instance's subnet)")
    bad = [t for t in tables if not _RTB.match(t)]
    if bad:
        raise ConfigError(f"aws-vpc backend: RouteTableID {bad[0]!r} is not a route table ID (rtb-…)")
    return tuple(dict.fromkeys(tables))


class Imds:
    """The EC2 instance metadata service: IMDSv2 (session token) with a v1 fallback; no proxy."""

    def __init__(self, endpoint: str, timeout: float = 2.0) -> None:
        self.base = endpoint.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None

    def _read(self, req: urllib.request.Request) -> str:
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise MetadataUnavailable(
                f"aws-vpc backend: cannot reach the EC2 instance metadata service at {self.base} ({reason}): "
                "this backend runs on EC2 instances only; elsewhere (a test, a proxy) point it at a metadata "
                "endpoint with AWS_EC2_METADATA_SERVICE_ENDPOINT=http://HOST:PORT/ and at the EC2 API with "
                "AWS_ENDPOINT_URL") from err

    def get(self, path: str) -> str:
        if self._token is None:
            put = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            try:
                self._token = self._read(put)
            except urllib.error.HTTPError:
                self._token = ""  # IMDSv1 only
        headers = {"X-aws-ec2-metadata-token": self._token} if self._token else {}
        url = f"{self.base}/latest/meta-data/{path}"
        try:
            return self._read(urllib.request.Request(url, headers=headers)).strip()
        except urllib.error.HTTPError as err:
            raise MetadataUnavailable(f"aws-vpc backend: the metadata service answered {err.code} for {url}: "
                                      "is this an EC2 instance (AWS_EC2_METADATA_SERVICE_ENDPOINT)?") from err


def cloud_route(table: str, r: dict[str, Any]) -> CloudRoute:
    target = r.get("NetworkInterfaceId") or r.get("InstanceId") or ""
    return CloudRoute(table, ipaddress.IPv4Network(r["DestinationCidrBlock"], strict=False), target,
                      blackhole=r.get("State") == "blackhole")


class AwsCallError(CloudError):
    def __init__(self, msg: str, code: str) -> None:
        super().__init__(msg)
        self.code = code


class AwsVpcBackend(CloudBackend):
    name = "aws-vpc"

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        self.configured_tables = parse_route_tables(config)
        self.route_limit = route_limit(config, DEFAULT_ROUTE_LIMIT, "aws-vpc")
        core = botocore.session.get_session()  # reads AWS_* and ~/.aws/config now, once
        self.session = boto3.session.Session(botocore_session=core)
        endpoint = core.get_config_variable("ec2_metadata_service_endpoint") or DEFAULT_IMDS
        self.imds = Imds(endpoint)
        self.ec2: Any = None
        self.tables: tuple[str, ...] = ()
        self.instance_id = ""
        self.eni_id = ""

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        warnings = require_ipv4(config, "aws-vpc") + check_keys(config, ("RouteTableID", "RouteLimit"), "aws-vpc")
        parse_route_tables(config)
        route_limit(config, DEFAULT_ROUTE_LIMIT, "aws-vpc")
        return warnings

    def discover(self) -> None:
        region = self.imds.get("placement/region")
        self.instance_id = self.imds.get("instance-id")
        config = BotoConfig(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}, connect_timeout=5,
                            read_timeout=30, user_agent_extra="pyflannel")
        self.ec2 = self.session.client("ec2", region_name=region, config=config)
        log.info("aws-vpc: instance=%s region=%s ec2_endpoint=%s metadata=%s", self.instance_id, region,
                 self.ec2.meta.endpoint_url, self.imds.base)
        eni = self.find_eni()
        self.eni_id = self.own_target = eni["NetworkInterfaceId"]
        try:
            self.call("ModifyNetworkInterfaceAttribute", NetworkInterfaceId=self.eni_id,
                      SourceDestCheck={"Value": False})
        except (CloudError, LocalConfigError) as err:
            log.warning("aws-vpc: could not turn off the source/dest check of %s, so EC2 may drop traffic for "
                        "container subnets: %s", self.eni_id, err)
        self.tables = self.configured_tables or (self.detect_table(eni),)
        log.info("aws-vpc: eni=%s route_tables=%s", self.eni_id, ",".join(self.tables))

    def find_eni(self) -> dict[str, Any]:
        resp = self.call("DescribeInstances", InstanceIds=[self.instance_id])
        found = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
        if not found:
            raise LocalConfigError(f"aws-vpc backend: EC2 does not know instance {self.instance_id} (from the "
                                   "metadata service): is the API endpoint in the instance's region?")
        want, enis = str(self.ext.iface_addr), found[0].get("NetworkInterfaces", [])
        for eni in enis:
            if any(a.get("PrivateIpAddress") == want for a in eni.get("PrivateIpAddresses", [])):
                return dict(eni)
        have = "; ".join(f"{e['NetworkInterfaceId']}: " + " ".join(a["PrivateIpAddress"] for a in
                                                                  e.get("PrivateIpAddresses", [])) for e in enis)
        raise LocalConfigError(f"aws-vpc backend: no ENI of instance {self.instance_id} carries {want}, the address "
                               f"of {self.ext.name} (its ENIs: {have or 'none'}); choose the interface of one of "
                               "them with --iface")

    def detect_table(self, eni: dict[str, Any]) -> str:
        subnet, vpc = eni.get("SubnetId", ""), eni.get("VpcId", "")
        found = self.call("DescribeRouteTables", Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
        if not found["RouteTables"]:
            found = self.call("DescribeRouteTables", Filters=[{"Name": "association.main", "Values": ["true"]},
                                                              {"Name": "vpc-id", "Values": [vpc]}])
        if not found["RouteTables"]:
            raise LocalConfigError(f"aws-vpc backend: no route table is associated with subnet {subnet} and VPC "
                                   f"{vpc} has no main table: name the table(s) in Backend.RouteTableID")
        return str(found["RouteTables"][0]["RouteTableId"])

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """One EC2 call (botocore retries throttling); errors typed by who must fix them."""
        try:
            return dict(getattr(self.ec2, xform_name(op))(**kwargs))
        except ClientError as err:
            raise self._error(op, kwargs, err) from err
        except NoCredentialsError as err:
            raise LocalConfigError("aws-vpc backend: no AWS credentials: give the instance an IAM instance profile "
                                   f"allowing {', '.join(PERMISSIONS)}") from err
        except BotoCoreError as err:
            raise AwsCallError(f"EC2 {op} failed: {err} (endpoint {self.ec2.meta.endpoint_url}; "
                               "AWS_ENDPOINT_URL overrides it)", type(err).__name__) from err

    def _error(self, op: str, kwargs: dict[str, Any], err: ClientError) -> Exception:
        info = err.response.get("Error", {})
        code, msg = str(info.get("Code", "")), str(info.get("Message", ""))
        if code in _DENIED:
            return MissingPermission(f"ec2:{op}", f"EC2 {op}", f"{code}: {msg}",
                                     "allow it in the IAM policy of the instance profile (aws-vpc needs "
                                     f"{', '.join(PERMISSIONS)})")
        if code == "RouteLimitExceeded":
            return RouteLimitError(f"route table {kwargs.get('RouteTableId', '?')}", f"{code}: {msg}", _QUOTA_FIX)
        if code.startswith("InvalidRouteTableID"):
            return ConfigError(f"aws-vpc backend: {msg or code}: fix Backend.RouteTableID, or leave it out to use "
                               "the table of the instance's subnet")
        if code in _THROTTLED:
            tries = err.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            return AwsCallError(f"EC2 {op} throttled ({code}) after {tries} retries with backoff", code)
        return AwsCallError(f"EC2 {op} failed: {code}: {msg}", code)

    def ensure_own(self, initial: bool) -> list[CloudRoute]:
        routes: list[CloudRoute] = []
        for table in self.call("DescribeRouteTables", RouteTableIds=list(self.tables))["RouteTables"]:
            tid, raw = table["RouteTableId"], [r for r in table.get("Routes", []) if r.get("DestinationCidrBlock")]
            added = self.ensure_in_table(tid, raw)
            self.check_near_limit(f"route table {tid}", len(table.get("Routes", [])) + added, self.route_limit,
                                  _QUOTA_FIX)
            routes += [cloud_route(tid, r) for r in raw]
        return routes

    def ensure_in_table(self, tid: str, raw: list[dict[str, Any]]) -> int:
        """Our subnet -> our ENI in table ``tid``; how many routes this added (0 or 1)."""
        assert self.lease is not None
        own = str(self.lease.subnet)
        mine = next((r for r in raw if r["DestinationCidrBlock"] == own), None)
        if mine is not None and mine.get("State") == "active" and mine.get("NetworkInterfaceId") == self.eni_id:
            return 0
        args = {"RouteTableId": tid, "DestinationCidrBlock": own, "NetworkInterfaceId": self.eni_id}
        self.changes += 1
        if mine is not None:
            self.call("ReplaceRoute", **args)
            log.info("aws-vpc: route %s in %s pointed at %s (%s): replaced, now -> %s", own, tid,
                     cloud_route(tid, mine).target or "another target", mine.get("State"), self.eni_id)
            return 0
        try:
            self.call("CreateRoute", **args)
        except AwsCallError as err:
            if err.code != "RouteAlreadyExists":
                raise
            self.call("ReplaceRoute", **args)
        log.info("aws-vpc: route added to %s: %s -> %s", tid, own, self.eni_id)
        return 1

    def delete(self, route: CloudRoute, why: str) -> None:
        try:
            self.call("DeleteRoute", RouteTableId=route.table, DestinationCidrBlock=str(route.dest))
        except AwsCallError as err:
            if err.code != "InvalidRoute.NotFound":
                raise
        self.changes += 1
        log.info("aws-vpc: removed route %s -> %s from %s: %s", route.dest, route.target or "-", route.table, why)

    def target_ips(self, targets: set[str]) -> dict[str, set[str]]:
        """Private addresses per ENI and per instance; a deleted one is simply absent."""
        ips: dict[str, set[str]] = {}
        for name, values in (("network-interface-id", sorted(t for t in targets if t.startswith("eni-"))),
                             ("attachment.instance-id", sorted(t for t in targets if t.startswith("i-")))):
            if values:
                for eni in self.call("DescribeNetworkInterfaces", Filters=[{"Name": name, "Values": values}]).get(
                        "NetworkInterfaces", []):
                    addrs = {a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])}
                    for key in (eni["NetworkInterfaceId"], eni.get("Attachment", {}).get("InstanceId")):
                        if key:
                            ips.setdefault(key, set()).update(addrs)
        return ips
