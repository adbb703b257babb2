"""The gce backend (flannel's ``backend/gce``, removed in 2022): no encapsulation; each host adds a
Compute Engine route for its subnet with itself as next hop, and the VPC forwards.

``Backend: {"Type": "gce", "RouteLimit": 250}``. Project, zone, instance and network come from the
metadata server (header ``Metadata-Flavor: Google``); the network is that of the NIC carrying the
interface address (flannel: nic0). Route ``flannel-10-0-53-0-24``: destRange our subnet,
nextHopInstance us, priority 1000; one of that name with another next hop is deleted and
re-inserted; operations are polled until DONE, at most ``Compute.op_timeout_s``. Lease and MTU: flannel's.
Better than flannel: ``canIpForward`` off is refused with the fix; a missing scope or permission is
named; throttling (429, rateLimitExceeded, 5xx) is retried with backoff; a warning near
``RouteLimit`` and an error naming the project at the quota; stale routes go (``base_cloud``).

Plain HTTPS (``requests``), the token of the instance's service account. Endpoints (environment):
``FLANNEL_GCE_METADATA_URL`` (default http://169.254.169.254/computeMetadata/v1, else from
``GCE_METADATA_HOST``, as Google's libraries) and ``FLANNEL_GCE_COMPUTE_URL`` (default
https://compute.googleapis.com/compute/v1, else ``CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE``).
Needs scope compute (or cloud-platform) and compute.routes.get/list/create/delete,
compute.networks.get/updatePolicy, compute.instances.get, compute.globalOperations.get
(roles/compute.networkAdmin).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import time
from typing import Any

import requests

from ..core.config import NetworkConfig
from ..core.errors import LocalConfigError
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

DEFAULT_METADATA = "http://169.254.169.254/computeMetadata/v1"
DEFAULT_COMPUTE = "https://compute.googleapis.com/compute/v1"
DEFAULT_ROUTE_LIMIT = 250
SCOPES = ("https://www.googleapis.com/auth/compute", "https://www.googleapis.com/auth/cloud-platform")
_RETRY_STATUS = {429, 500, 502, 503, 504}
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
_INSTANCE_PATH = re.compile(r"projects/[^/]+/zones/[^/]+/instances/[^/]+\Z")
_QUOTA_FIX = "raise the project's ROUTES quota (then raise Backend.RouteLimit)"
_IAM_FIX = "grant it to the instance's service account (roles/compute.networkAdmin has all gce needs)"


def route_name(subnet: ipaddress.IPv4Network) -> str:
    return "flannel-" + str(subnet).replace(".", "-").replace("/", "-")


def instance_path(link: str) -> str:  # projects/P/zones/Z/instances/N, whichever host the link names
    m = _INSTANCE_PATH.search(link or "")
    return m.group(0) if m else ""


def _net(obj: dict[str, Any] | str) -> str:  # a network link as projects/P/global/networks/N
    return str(obj if isinstance(obj, str) else obj.get("network", "")).rpartition("/compute/v1/")[2]


def _dangling(route: dict[str, Any]) -> bool:  # GCE's blackhole: the next-hop instance is gone
    return any(w.get("code") == "NEXT_HOP_INSTANCE_NOT_FOUND" for w in route.get("warnings", []))


def endpoints() -> tuple[str, str]:
    metadata = os.environ.get("FLANNEL_GCE_METADATA_URL") or (
        f"http://{os.environ['GCE_METADATA_HOST']}/computeMetadata/v1" if os.environ.get("GCE_METADATA_HOST")
        else DEFAULT_METADATA)
    compute = os.environ.get("FLANNEL_GCE_COMPUTE_URL") or os.environ.get(
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE") or DEFAULT_COMPUTE
    return metadata.rstrip("/"), compute.rstrip("/")


class GceCallError(CloudError):
    """A Compute call failed for a reason that may pass (5xx, throttled too long, timeout)."""


class Metadata:
    """The metadata server; never through a proxy. Also the source of the access token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.trust_env = False
        self._token, self._expires = "", 0.0

    def get(self, path: str, **params: str) -> str:
        url = f"{self.base}/{path}"
        try:
            resp = self.http.get(url, params=params, headers={"Metadata-Flavor": "Google"}, timeout=(2, 10))
        except requests.RequestException as err:
            raise MetadataUnavailable(
                f"gce backend: cannot reach the GCE metadata server at {self.base} ({err}): this backend runs on "
                "Compute Engine instances only; elsewhere (a test, a proxy) set FLANNEL_GCE_METADATA_URL="
                "http://HOST:PORT/computeMetadata/v1 and FLANNEL_GCE_COMPUTE_URL") from err
        if resp.headers.get("Metadata-Flavor") != "Google":
            raise MetadataUnavailable(f"gce backend: {url} has no Metadata-Flavor: Google header: not a GCE metadata "
                                      "server (FLANNEL_GCE_METADATA_URL)")
        if resp.status_code != 200:
            raise MetadataUnavailable(f"gce backend: the metadata server answered HTTP {resp.status_code} for {url}")
        return resp.text

    def token(self) -> str:
        if time.monotonic() >= self._expires:
            tok = json.loads(self.get("instance/service-accounts/default/token"))
            self._token = tok["access_token"]
            self._expires = time.monotonic() + max(int(tok.get("expires_in", 0)) - 60, 0)
        return self._token


class Compute:
    """Compute Engine REST calls for one project: retries throttling, names refused permissions."""

    attempts, backoff_s, poll_s, op_timeout_s = 6, 1.0, 1.0, 120.0

    def __init__(self, base: str, project: str, metadata: Metadata) -> None:
        self.base, self.project, self.metadata = base, project, metadata
        self.http = requests.Session()

    def request(self, method: str, path: str, api: str, body: Any = None, ok404: bool = False,
                **params: str) -> dict[str, Any] | None:
        url = f"{self.base}/{path}" if path.startswith("projects/") else f"{self.base}/projects/{self.project}/{path}"
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            try:
                resp = self.http.request(method, url, params=params or None, json=body, timeout=(5, 30),
                                         headers={"Authorization": f"Bearer {self.metadata.token()}"})
            except requests.RequestException as err:
                if last:
                    raise GceCallError(f"GCE {api} failed: {err} (FLANNEL_GCE_COMPUTE_URL={self.base})") from err
                self._sleep(attempt, None)
                continue
            try:
                data = resp.json() if resp.content else {}
            except ValueError:  # an HTML error page from a proxy or load balancer
                data = {"error": {"message": resp.text[:200]}}
            err_info = data.get("error") or {}
            reasons = {e.get("reason", "") for e in err_info.get("errors", [])}
            if resp.status_code in _RETRY_STATUS or (resp.status_code == 403 and reasons & _RATE_REASONS):
                if last:
                    raise GceCallError(f"GCE {api} throttled or failing (HTTP {resp.status_code}) after "
                                       f"{self.attempts} attempts with backoff")
                self._sleep(attempt, resp.headers.get("Retry-After"))
                continue
            if resp.status_code == 404 and ok404:
                return None
            if resp.status_code >= 400:
                raise self._error(api, resp.status_code, str(err_info.get("message", resp.reason)), reasons)
            return dict(data)
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(30.0, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)  # exponential, jitter
        time.sleep(max(delay, min(float(retry_after), 30.0)) if retry_after and retry_after.isdigit() else delay)

    def _error(self, api: str, status: int, msg: str, reasons: set[str]) -> Exception:
        if status == 403 and "quotaExceeded" in reasons:
            return RouteLimitError(f"project {self.project}", msg, _QUOTA_FIX)
        if status == 403 and ("insufficientPermissions" in reasons or "scope" in msg.lower()):
            return MissingPermission(f"OAuth scope {SCOPES[0]}", f"GCE {api}", msg,
                                     "give the instance that scope (or cloud-platform)")
        if status == 403:
            named = re.search(r"Required '([\w.]+)' permission", msg)
            permission = named.group(1) if named else "compute." + api.replace("insert", "create")
            return MissingPermission(permission, f"GCE {api}", msg, _IAM_FIX)
        return GceCallError(f"GCE {api} failed: HTTP {status}: {msg}")

    def wait(self, op: dict[str, Any] | None, what: str) -> None:
        """Poll a global operation until DONE, at most ``op_timeout_s``; its error becomes ours."""
        assert op is not None
        deadline, polls = time.monotonic() + self.op_timeout_s, 0
        while op.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise GceCallError(f"GCE operation {op.get('name')} ({what}) not DONE after {self.op_timeout_s:g}s")
            time.sleep(self.poll_s)
            polls += 1
            if polls % 5 == 0:
                log.info("gce: %s: operation %s is %s, waiting", what, op.get("name"), op.get("status"))
            op = self.request("GET", f"global/operations/{op['name']}", "globalOperations.get") or {}
        errors = (op.get("error") or {}).get("errors", [])
        if any(e.get("code") == "QUOTA_EXCEEDED" for e in errors):
            raise RouteLimitError(f"project {self.project}", errors[0].get("message", ""), _QUOTA_FIX)
        if errors:
            raise GceCallError(f"GCE {what} failed: " + "; ".join(f"{e.get('code')}: {e.get('message')}"
                                                                 for e in errors))


class GceBackend(CloudBackend):
    name = "gce"

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        self.route_limit = route_limit(config, DEFAULT_ROUTE_LIMIT, "gce")
        metadata_url, self.compute_url = endpoints()
        self.metadata = Metadata(metadata_url)
        self.compute: Compute | None = None
        self.project = self.zone = self.instance = self.network = ""
        self.network_link = self.instance_link = self.network_path = ""

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        route_limit(config, DEFAULT_ROUTE_LIMIT, "gce")
        return require_ipv4(config, "gce") + check_keys(config, ("RouteLimit",), "gce")

    def discover(self) -> None:
        md = self.metadata
        self.project = md.get("project/project-id").strip()
        self.zone = md.get("instance/zone").strip().rsplit("/", 1)[-1]
        self.instance = md.get("instance/name").strip()
        nics = json.loads(md.get("instance/network-interfaces/", recursive="true"))
        want = str(self.ext.iface_addr)
        nic = next((n for n in nics if n.get("ip") == want), None)
        if nic is None:
            have = "; ".join(f"{n.get('ip')} ({n.get('network', '?').rsplit('/', 1)[-1]})" for n in nics)
            raise LocalConfigError(f"gce backend: no network interface of instance {self.instance} has {want}, the "
                                   f"address of {self.ext.name} (it has: {have or 'none'}); choose one with --iface")
        self.network = str(nic.get("network", "")).rsplit("/", 1)[-1]
        scopes = md.get("instance/service-accounts/default/scopes").split()
        if not set(scopes) & set(SCOPES):
            raise MissingPermission(f"OAuth scope {SCOPES[0]}", "the instance's service account", "its scopes are "
                                    f"{' '.join(scopes) or 'none'}", "stop the instance and add the scope "
                                    "(gcloud compute instances set-service-account --scopes=compute-rw)")
        self.compute = api = Compute(self.compute_url, self.project, md)
        self.network_link = (api.request("GET", f"global/networks/{self.network}", "networks.get") or {})["selfLink"]
        inst = api.request("GET", f"zones/{self.zone}/instances/{self.instance}", "instances.get") or {}
        self.instance_link = inst["selfLink"]
        self.own_target, self.network_path = instance_path(self.instance_link), _net(self.network_link)
        log.info("gce: project=%s zone=%s instance=%s network=%s compute=%s metadata=%s", self.project, self.zone,
                 self.instance, self.network, self.compute_url, md.base)
        if not inst.get("canIpForward"):
            raise LocalConfigError(
                f"gce backend: instance {self.instance} has canIpForward off, so GCE drops every packet routed to it "
                "for a container subnet: create the instance with --can-ip-forward (or stop it and set "
                "canIpForward: true with `gcloud compute instances export`/`update-from-file`), then start flanneld")

    def ensure_own(self, initial: bool) -> list[CloudRoute] | None:
        """Our route (one GET when it is right); the flannel routes of our network when we clean."""
        assert self.lease is not None and self.compute is not None
        own, name = self.lease.subnet, route_name(self.lease.subnet)
        route = self.compute.request("GET", f"global/routes/{name}", "routes.get", ok404=True)
        if route is None or not (instance_path(route.get("nextHopInstance", "")) == self.own_target
                                 and route.get("destRange") == str(own) and _net(route) == self.network_path
                                 and not _dangling(route)):
            if route is not None:
                self.delete(CloudRoute(self.network, own, "", name), "it pointed at "
                            f"{route.get('nextHopInstance') or route.get('nextHopIp') or 'something else'}")
            body = {"name": name, "network": self.network_link, "destRange": str(own),
                    "nextHopInstance": self.instance_link, "priority": 1000,
                    "description": f"flannel subnet lease of {self.instance}"}
            self.compute.wait(self.compute.request("POST", "global/routes", "routes.insert", body), f"insert {name}")
            self.changes += 1
            log.info("gce: route %s added: %s -> %s", name, own, self.instance)
        if not (initial or self.sweep_pending or self.cleaner):
            return None  # a host that is not the cleaner only keeps its own route
        routes, token = [], ""
        while True:
            page = self.compute.request("GET", "global/routes", "routes.list", maxResults="500",
                                        **({"pageToken": token} if token else {})) or {}
            routes += page.get("items", [])
            if not (token := page.get("nextPageToken", "")):
                break
        self.check_near_limit(f"project {self.project}", len(routes), self.route_limit, _QUOTA_FIX)
        return [CloudRoute(self.network, ipaddress.IPv4Network(r["destRange"], strict=False),
                           instance_path(r.get("nextHopInstance", "")), r["name"], _dangling(r))
                for r in routes if r.get("name", "").startswith("flannel-") and "." in r.get("destRange", "")
                and _net(r) == self.network_path]

    def delete(self, route: CloudRoute, why: str) -> None:
        assert self.compute is not None
        op = self.compute.request("DELETE", f"global/routes/{route.name}", "routes.delete", ok404=True)
        if op is not None:
            self.compute.wait(op, f"delete {route.name}")
        self.changes += 1
        log.info("gce: route %s removed: %s", route.name, why)

    def target_ips(self, targets: set[str]) -> dict[str, set[str]]:
        assert self.compute is not None
        found = {t: self.compute.request("GET", t, "instances.get", ok404=True) for t in targets}  # any project
        return {t: {n.get("networkIP") for n in inst.get("networkInterfaces", [])} for t, inst in found.items() if inst}
