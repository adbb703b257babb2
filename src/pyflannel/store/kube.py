"""The Kubernetes registry: Node objects as leases, over kubernetes_asyncio (``-kube-subnet-mgr``).

Why kubernetes_asyncio (see README): the Kubernetes project's OpenAPI-generated client made
async, released in step with Kubernetes, with in-cluster and kubeconfig loading (client
certificates, tokens, exec plugins) and watches with ``resourceVersion`` and
``allowWatchBookmarks``. Only the raw JSON is used (``_preload_content=False``): 1000 Node models
need not be built to read four annotations. It is imported only in kube mode (~0.7 s, ~60 MB).

The subnets of each node are its podCIDRs (``spec.podCIDRs``: IPv4, IPv6 or one of each), set by
Kubernetes; which of them make its lease is the network config's (``families``, set once the
config is read: kubenode.node_to_lease). flanneld only publishes its
annotations on its own node (a patch on ``nodes/status``, as Go flannel) and marks the node
NetworkUnavailable=False. The watch resumes from its last ``resourceVersion`` (bookmarks keep it
fresh) and reports ``WatchLost`` on 410 Gone, so the manager re-lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..core import kubenode
from ..core.errors import LocalConfigError, StoreDataError, StoreUnavailable
from ..core.events import BadLease, Changes, Snapshot, WatchLost
from ..core.lease import Lease, LeaseAttrs, SubnetId

log = logging.getLogger(__name__)
WATCH_TIMEOUT_S = 300  # the server ends each watch call after this; we resume from the last version
# shortens that (seconds), so that a test sees the resume (and a 410 Gone on it) without waiting 5 min
WATCH_TIMEOUT_ENV = "PYFLANNEL_KUBE_WATCH_TIMEOUT"
_CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str = ""
    api_url: str = ""
    prefix: str = kubenode.DEFAULT_PREFIX + "/"
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    set_network_unavailable: bool = True


class KubeForbidden(StoreUnavailable):
    """The API server refused a call: the role lacks a verb on a resource."""


class KubeUnauthorized(StoreUnavailable):
    """The API server does not accept our credentials (401): an expired or revoked token."""


def _watch_timeout() -> int:
    text = os.environ.get(WATCH_TIMEOUT_ENV, "")
    try:
        return max(1, int(text)) if text else WATCH_TIMEOUT_S
    except ValueError:
        log.warning("ignoring %s=%r (not a number of seconds); watching %ds at a time",
                    WATCH_TIMEOUT_ENV, text, WATCH_TIMEOUT_S)
        return WATCH_TIMEOUT_S


def _fix_for(status: int, verb: str, resource: str, body: str) -> str:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    if status == 403:
        return (f"the API server forbids {verb} on {resource}: {message or 'forbidden'}; grant it in flannel's "
                "ClusterRole (dist/kubernetes/kube-flannel.yml: nodes get/list/watch, nodes/status patch, pods get)")
    if status == 401:
        return (f"the API server does not accept our credentials ({verb} {resource}: 401 Unauthorized): the token "
                "or client certificate is expired or revoked (a deleted ServiceAccount invalidates its tokens); "
                "flanneld keeps every route and retries: in a pod it re-reads the service-account token file, "
                "which the kubelet renews, else give valid credentials in -kubeconfig-file and restart flanneld")
    return f"{verb} {resource}: HTTP {status} {message}".strip()


class KubeRegistry:
    """``Registry`` over the Node objects of one cluster."""

    def __init__(self, opts: KubeOptions) -> None:
        self.opts = opts
        self.prefix = opts.prefix
        self.subnets_prefix = "node "
        self.endpoints = opts.api_url or "(kubeconfig)"
        self.errors = 0
        self.store_name = "the Kubernetes API server"
        self.node = ""  # our node's name, set by ``connect``
        self._api: Any = None
        self._core: Any = None
        self._names: dict[str, SubnetId] = {}  # node name -> the ident of the lease last reported
        self.families = kubenode.Families()  # EnableIPv4/EnableIPv6 of the network config
        self._incluster: Any = None  # in-cluster config: its loader, to re-read the token file on a 401
        self.watch_timeout = _watch_timeout()

    @property
    def config_key(self) -> str:
        return self.opts.net_config_path

    async def connect(self) -> None:
        """Load the credentials (kubeconfig, else in-cluster) and find our node's name."""
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        try:
            if self.opts.kubeconfig:
                await config.load_kube_config(config_file=self.opts.kubeconfig, client_configuration=cfg)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                self._incluster = config.incluster_config.InClusterConfigLoader(
                    config.incluster_config.SERVICE_TOKEN_FILENAME, config.incluster_config.SERVICE_CERT_FILENAME)
                self._incluster.load_and_set(cfg)
            elif not self.opts.api_url:
                raise LocalConfigError("no Kubernetes API server: give -kubeconfig-file or -kube-api-url, or run "
                                       "in a pod (KUBERNETES_SERVICE_HOST and its service-account token)")
        except config.ConfigException as err:
            raise LocalConfigError(f"cannot load the Kubernetes credentials: {err}") from err
        except OSError as err:
            raise LocalConfigError(f"cannot read {self.opts.kubeconfig}: {err.strerror or err}") from err
        if self.opts.api_url:
            cfg.host = self.opts.api_url
        self.endpoints = cfg.host
        self._api = client.ApiClient(cfg)
        self._core = client.CoreV1Api(self._api)
        self.node = await self._node_name()

    async def _node_name(self) -> str:
        name = os.environ.get("NODE_NAME", "")
        if name:
            return name
        pod, ns = os.environ.get("POD_NAME", ""), os.environ.get("POD_NAMESPACE", "")
        if not pod or not ns:
            raise LocalConfigError("env variables POD_NAME and POD_NAMESPACE must be set (or NODE_NAME): in the "
                                   "DaemonSet, set them from the downward API (fieldRef metadata.name, "
                                   "metadata.namespace) or NODE_NAME from spec.nodeName")
        data = await self._call("get", f"pods/{ns}/{pod}", self._core.read_namespaced_pod, pod, ns)
        node = str((data.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise LocalConfigError(f"pod {ns}/{pod} is not scheduled on a node (spec.nodeName is empty)")
        return node

    async def _call(self, verb: str, resource: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call -> decoded JSON; StoreUnavailable (KubeForbidden) on any failure."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            resp = await asyncio.wait_for(fn(*args, _preload_content=False, **kwargs), _CALL_TIMEOUT)
            async with resp:
                status, body = resp.status, await resp.read()
        except ApiException as err:
            status, body = err.status or 0, (err.body or "").encode() if isinstance(err.body, str) else b""
        except Exception as err:  # OSError, TimeoutError, aiohttp.ClientError and kin: the server cannot be reached
            self.errors += 1
            raise StoreUnavailable(f"the API server {self.endpoints} cannot be reached ({verb} {resource}): "
                                   f"{err or type(err).__name__}") from err
        # the raw response (_preload_content=False) is not checked by the client: an error status
        # must not be read as the object (a Status as a Node)
        if 200 <= status <= 299:
            try:
                return json.loads(body)
            except ValueError as err:
                self.errors += 1
                raise StoreUnavailable(f"the API server {self.endpoints} answered {verb} {resource} with "
                                       f"something that is not JSON: {err}") from err
        self.errors += 1
        if status == 404:
            raise _NotFound(resource)
        if status == 401:
            self._reread_token()
        cls = {401: KubeUnauthorized, 403: KubeForbidden}.get(status, StoreUnavailable)
        raise cls(_fix_for(status, verb, resource, body.decode(errors="replace")))

    def _reread_token(self) -> None:
        """A 401: read the service-account token file again on the next call, not only once a
        minute (as client-go resets its cached token on a 401), so a renewed token works at once."""
        if self._incluster is not None:
            self._incluster.token_expires_at = datetime.datetime.min

    # ---- config: a file in kube mode ---------------------------------------------------------------
    async def get_config(self) -> bytes | None:
        try:
            with open(self.opts.net_config_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise LocalConfigError(f"cannot read the network config {self.opts.net_config_path}: "
                                   f"{err.strerror or err}") from err

    async def put_config(self, data: bytes) -> None:
        raise LocalConfigError("in kube mode the network config is the file -net-config-path (the ConfigMap)")

    async def probe(self) -> None:
        """A cheap call that fails when the API server is unreachable or refuses us. Our Node not
        found is an answer: the server is there (the lease keeper makes the Node's lease again)."""
        with contextlib.suppress(_NotFound):
            await self._call("get", f"nodes/{self.node}", self._core.read_node, self.node)

    # ---- nodes --------------------------------------------------------------------------------------
    async def get_node(self) -> dict[str, Any] | None:
        try:
            return dict(await self._call("get", f"nodes/{self.node}", self._core.read_node, self.node))
        except _NotFound:
            return None

    async def patch_status(self, body: dict[str, Any]) -> None:
        await self._call("patch", "nodes/status", self._core.patch_node_status, self.node, body,
                         _content_type="application/strategic-merge-patch+json")

    async def publish(self, attrs: LeaseAttrs) -> None:
        await self.patch_status({"metadata": {"annotations": kubenode.lease_annotations(attrs, self.prefix)}})

    async def mark_network_available(self) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.patch_status({"status": {"conditions": [kubenode.network_ready_condition(now)]}})

    def _decode(self, node: dict[str, Any]) -> Lease | BadLease | None:
        name = kubenode.node_name(node)
        try:
            return kubenode.node_to_lease(node, self.prefix, self.families)
        except StoreDataError as err:
            subnet: SubnetId | None = None
            with contextlib.suppress(StoreDataError):
                v4, v6 = kubenode.pod_cidrs(node)
                subnet = v4 if self.families.ipv4 else v6
            return BadLease(f"node {name}", str(err), subnet)

    async def list_leases(self) -> Snapshot:
        data = await self._call("list", "nodes", self._core.list_node)
        leases, bad, names = [], [], {}
        for node in data.get("items") or []:
            got = self._decode(node)
            if isinstance(got, Lease):
                leases.append(got)
                names[kubenode.node_name(node)] = got.ident
            elif isinstance(got, BadLease):
                bad.append(got)
        self._names = names
        return Snapshot(tuple(leases), _revision(data), tuple(bad))

    async def watch_leases(self, start_revision: int) -> AsyncIterator[Changes | WatchLost]:
        """Node events from ``start_revision``; each server-side timeout resumes from the last
        version seen; 410 Gone or a broken stream: ``WatchLost``."""
        version = start_revision - 1  # the manager asks for "after the list", as with etcd
        while True:
            try:
                resp = await asyncio.wait_for(self._core.list_node(
                    watch=True, resource_version=str(version), allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout, _preload_content=False,
                    _request_timeout=self.watch_timeout + 30), _CALL_TIMEOUT)
            except Exception as err:  # ApiException, aiohttp errors, timeouts
                self.errors += 1
                status = getattr(err, "status", None)
                if status == 401:
                    self._reread_token()
                if status == 410:
                    yield WatchLost("the node watch's resourceVersion is too old (410 Gone)")
                else:
                    why = (_fix_for(status, "watch", "nodes", getattr(err, "body", "") or "") if status
                           else str(err) or type(err).__name__)
                    yield WatchLost(f"cannot watch nodes: {why}")
                return
            if resp.status != 200:  # not raised by the client for a raw response
                if resp.status == 401:
                    self._reread_token()
                async with resp:
                    text = (await resp.read()).decode(errors="replace")
                self.errors += 1
                yield WatchLost("the node watch's resourceVersion is too old (410 Gone)" if resp.status == 410
                                else f"cannot watch nodes: {_fix_for(resp.status, 'watch', 'nodes', text)}")
                return
            try:
                async with resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            code = obj.get("code")
                            yield WatchLost(f"the node watch ended: {code} {obj.get('reason', '')} "
                                            f"{obj.get('message', '')}".strip())
                            return
                        version = _revision(obj) or version
                        if kind == "BOOKMARK":
                            continue
                        yield self._change(kind, obj, version)
            except Exception as err:  # the stream broke (server gone, reset)
                self.errors += 1
                yield WatchLost(f"the node watch broke: {err or type(err).__name__}")
                return

    def _change(self, kind: str, node: dict[str, Any], version: int) -> Changes:
        name = kubenode.node_name(node)
        old = self._names.pop(name, None)
        if kind == "DELETED":
            return Changes(deletes=(old,) if old is not None else (), revision=version)
        got = self._decode(node)
        deletes = (old,) if old is not None and not (isinstance(got, Lease) and got.ident == old) else ()
        if isinstance(got, Lease):
            self._names[name] = got.ident
            return Changes(puts=(got,), deletes=deletes, revision=version)
        bad = (got,) if isinstance(got, BadLease) else ()
        if isinstance(got, BadLease) and got.subnet == old:  # garbage is not a delete: keep its last good lease
            deletes = ()
            if old is not None:
                self._names[name] = old
        return Changes(deletes=deletes, revision=version, bad=bad)

    # ---- what the etcd registry does and kube mode does not ----------------------------------------
    async def create_lease(self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        raise LocalConfigError("in kube mode subnets are node podCIDRs, assigned by Kubernetes")

    async def update_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        raise LocalConfigError("in kube mode subnets are node podCIDRs, assigned by Kubernetes")

    async def delete_lease(self, subnet: ipaddress.IPv4Network, mod_revision: int | None = None) -> bool:
        raise LocalConfigError("in kube mode subnets are node podCIDRs, assigned by Kubernetes")

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None


class _NotFound(StoreUnavailable):
    pass


def _revision(obj: dict[str, Any]) -> int:
    text = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    try:
        return int(text)
    except ValueError:
        return 0
