"""The etcd v3 registry: flannel's key layout and JSON over etcd3aio.

Why etcd3aio (see README): asyncio-native, TLS with client certs, username/password on TLS and
plain http with token refresh, several endpoints with failover, and a watch that re-attaches
after an etcd restart. Its gaps are owned here: a compacted or cancelled watch is reported as
``WatchLost`` (the manager re-lists), create-if-absent and grants run with ``max_attempts=1``
so a lost reply is never reported as a lost race, and ``--etcd-endpoints`` URLs are turned into
the ``ip:port`` targets it wants.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import posixpath
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare
from etcd3aio.errors import EtcdError, EtcdUnauthenticatedError
from etcd3aio.kv import KVService, prefix_range_end

from ..core.errors import LocalConfigError, StoreDataError, StoreUnavailable
from ..core.events import BadLease, Changes, Snapshot, WatchLost
from ..core.lease import (
    Lease,
    LeaseAttrs,
    SubnetId,
    parse_lease_attrs,
    parse_subnet_key,
    render_lease_attrs,
    render_subnet_key,
    subnet_id,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_CALL_TIMEOUT = 5.0
_MAX_VALUE = 64 * 1024  # a lease value is < 300 bytes; anything huge is garbage


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    prefix: str = "/coreos.com/network"
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""


def join_key(*parts: str) -> str:
    """Go's path.Join: one slash between parts, duplicate and trailing slashes cleaned."""
    joined = posixpath.normpath("/".join(p for p in parts if p))
    return "/" + joined.lstrip("/") if joined.startswith("/") else joined


def grpc_targets(endpoints: tuple[str, ...]) -> tuple[list[str], bool, str | None]:
    """``http://etcd:2379`` -> ``['10.1.2.3:2379']``; also whether TLS is asked for and a host name
    to verify the server certificate against (the first host name given)."""
    targets, tls, server_name = [], False, None
    for ep in endpoints:
        ep = ep.strip()
        if not ep:
            continue
        url = urlsplit(ep if "://" in ep else f"http://{ep}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise LocalConfigError(f"bad etcd endpoint {ep!r}: expected http://HOST:PORT or https://HOST:PORT")
        tls = tls or url.scheme == "https"
        try:
            port = url.port or 2379
        except ValueError as err:
            raise LocalConfigError(f"bad etcd endpoint {ep!r}: {err}") from err
        host = url.hostname
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            server_name = server_name or host
            try:
                host = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
            except OSError as err:
                raise StoreUnavailable(f"cannot resolve etcd endpoint {ep!r}: {err}") from err
        targets.append(f"{host}:{port}")
    if not targets:
        raise LocalConfigError("no etcd endpoints given: set --etcd-endpoints=http://HOST:2379")
    if server_name is None and targets:
        # endpoints given as IPs: gRPC cannot derive one name from a multi-address target, so the
        # server certificate is checked against the first address (etcd certs carry IP SANs)
        server_name = targets[0].rsplit(":", 1)[0]
    return targets, tls, server_name


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise LocalConfigError(f"cannot read {what} {path}: {err.strerror}") from err


def _check_tls_files(cafile: str, certfile: str, keyfile: str) -> None:
    """gRPC takes any bytes and then fails every call with "Failed to create security handshaker"
    (and logs C++ errors): check the PEM files first, so that a wrong one is named."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (ssl.SSLError, ValueError) as err:
        raise LocalConfigError(f"--etcd-cafile {cafile} holds no PEM CA certificate ({err})") from None
    if certfile:
        try:  # an empty password: an encrypted key fails here instead of prompting on a terminal
            ctx.load_cert_chain(certfile, keyfile, password="")
        except (ssl.SSLError, ValueError) as err:
            raise LocalConfigError(f"--etcd-certfile {certfile} and --etcd-keyfile {keyfile} are not a PEM "
                                   f"certificate and its unencrypted key ({err})") from None


class EtcdRegistry:
    """Registry over one etcd cluster and one prefix."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.prefix = join_key(options.prefix)
        self._client: Etcd3Client | None = None
        self._refresher: Any = None
        self.endpoints = ",".join(options.endpoints)
        self.errors = 0  # failed calls, for the metrics
        self.store_name = "etcd"

    @property
    def config_key(self) -> str:
        return join_key(self.prefix, "config")

    @property
    def subnets_prefix(self) -> str:
        return join_key(self.prefix, "subnets") + "/"

    def lease_key(self, subnet: ipaddress.IPv4Network, v6: ipaddress.IPv6Network | None = None) -> str:
        return self.subnets_prefix + render_subnet_key(subnet, v6)

    async def connect(self) -> Etcd3Client:
        if self._client is not None:
            return self._client
        o = self.options
        targets, tls, server_name = grpc_targets(o.endpoints)
        conn: dict[str, Any] = {}
        if o.keyfile and o.certfile:
            conn["cert_key"] = _read(o.keyfile, "--etcd-keyfile")
            conn["cert_chain"] = _read(o.certfile, "--etcd-certfile")
            tls = True
        elif o.keyfile or o.certfile:
            log.warning("no certificate provided: connecting to etcd with http. This is insecure "
                        "(give both --etcd-certfile and --etcd-keyfile for TLS)")
        if tls:
            cafile = o.cafile or "/etc/ssl/certs/ca-certificates.crt"
            conn["ca_cert"] = _read(cafile, "--etcd-cafile")
            _check_tls_files(cafile, o.certfile if "cert_chain" in conn else "", o.keyfile)
        client = Etcd3Client(
            targets,
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            tls_server_name=server_name if tls else None,
            **conn,
        )
        # gRPC backs off reconnects up to 120 s; cap it at 1 s so a returning etcd is seen at once
        # (docs/etcd-client.md#reconnect). etcd3aio has no parameter for it, so extend its channel
        # options.
        client._manager.grpc_options += [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        await client.connect()
        if o.username:
            self._refresher = client.token_refresher(o.username, o.password, interval=60.0)
            try:
                await self._call(self._refresher.__aenter__)
            except BaseException:
                await client.close()
                self._refresher = None
                raise
        self._client = client
        return client

    async def close(self) -> None:
        if self._refresher is not None:
            with contextlib.suppress(Exception):
                await self._refresher.__aexit__(None, None, None)
            self._refresher = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        try:
            try:
                return await fn(*args, **kw)
            except EtcdUnauthenticatedError:
                if not self.options.username or self._client is None:
                    raise
                # a restarted member forgets its tokens ("invalid auth token"): log in again, once
                await self._authenticate()
                return await fn(*args, **kw)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as err:
            self.errors += 1
            raise StoreUnavailable(f"etcd at {self.endpoints} failed: {_describe(err)}") from err

    async def _authenticate(self) -> None:
        client = self._client
        assert client is not None and client.auth is not None
        client.set_token(None)  # etcd rejects even Authenticate when it carries a stale token
        resp = await client.auth.authenticate(self.options.username, self.options.password, timeout=_CALL_TIMEOUT)
        client.set_token(resp.token)
        log.info("re-authenticated to etcd as %s", self.options.username)

    async def _kv(self) -> KVService:
        client = await self.connect()
        assert client.kv is not None
        return client.kv

    async def get_config(self) -> bytes | None:
        kv = await self._kv()
        resp = await self._call(kv.get, self.config_key, timeout=_CALL_TIMEOUT)
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def put_config(self, data: bytes) -> None:
        kv = await self._kv()
        await self._call(kv.put, self.config_key, data, timeout=_CALL_TIMEOUT)

    def _decode(self, key: bytes, value: bytes, lease_id: int, mod_revision: int, create_revision: int = 0
                ) -> Lease | BadLease:
        skey = key.decode(errors="replace")
        tail = skey[len(self.subnets_prefix):]
        try:
            subnet, v6 = parse_subnet_key(tail)
            if render_subnet_key(subnet, v6) != tail:
                raise StoreDataError(f"not a canonical subnet key: {tail!r}")
        except StoreDataError as err:
            return BadLease(skey, str(err))
        try:
            if len(value) > _MAX_VALUE:
                raise StoreDataError(f"lease value is {len(value)} bytes, far too large")
            attrs = parse_lease_attrs(value)
        except StoreDataError as err:
            return BadLease(skey, str(err), subnet_id(subnet, v6), mod_revision)
        return Lease(subnet, attrs, v6, lease_id=lease_id, mod_revision=mod_revision, create_revision=create_revision)

    async def list_leases(self) -> Snapshot:
        kv = await self._kv()
        p = self.subnets_prefix
        resp = await self._call(kv.get, p, prefix_range_end(p.encode()), timeout=_CALL_TIMEOUT)
        leases, bad = [], []
        for item in resp.kvs:
            got = self._decode(item.key, item.value, item.lease, item.mod_revision, item.create_revision)
            (bad if isinstance(got, BadLease) else leases).append(got)
        return Snapshot(tuple(leases), resp.header.revision, tuple(bad))

    async def _grant(self, ttl: int) -> tuple[int, float]:
        client = await self.connect()
        assert client.lease is not None
        resp = await self._call(client.lease.grant, ttl, timeout=_CALL_TIMEOUT, max_attempts=1)
        return resp.ID, time.time() + resp.TTL

    async def revoke(self, lease_id: int) -> None:
        client = await self.connect()
        assert client.lease is not None
        with contextlib.suppress(StoreUnavailable):
            await self._call(client.lease.revoke, lease_id, timeout=_CALL_TIMEOUT, max_attempts=1)

    async def time_to_live(self, lease_id: int) -> int:
        client = await self.connect()
        assert client.lease is not None
        resp = await self._call(client.lease.time_to_live, lease_id, timeout=_CALL_TIMEOUT)
        return int(resp.TTL)

    async def _put_if(
        self, key: str, compare: Compare, attrs: LeaseAttrs, ttl: int | None, subnet: ipaddress.IPv4Network,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease | None:
        kv = await self._kv()
        lease_id, expiration = (0, None) if ttl is None else await self._grant(ttl)
        value = render_lease_attrs(attrs)
        # No revoke when the txn fails to answer: it may have committed, and revoking its lease would
        # delete the key we just wrote. An unused lease simply expires.
        resp = await self._call(
            kv.txn, [compare], [KVService.txn_op_put(key, value, lease=lease_id)],
            timeout=_CALL_TIMEOUT, max_attempts=1,
        )
        if not resp.succeeded:
            if lease_id:
                await self.revoke(lease_id)
            return None
        rev = resp.header.revision
        return Lease(subnet, attrs, ipv6_subnet, lease_id=lease_id, mod_revision=rev, expiration=expiration)

    async def create_lease(
        self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, ttl: int | None,
        ipv6_subnet: ipaddress.IPv6Network | None = None,
    ) -> Lease | None:
        key = self.lease_key(subnet, ipv6_subnet)
        return await self._put_if(key, KVService.txn_compare_version(key, 0), attrs, ttl, subnet, ipv6_subnet)

    async def update_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        key = self.lease_key(current.subnet, current.ipv6_subnet)
        cmp = Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=current.mod_revision)
        new = await self._put_if(key, cmp, attrs, ttl, current.subnet, current.ipv6_subnet)
        if new is not None and current.lease_id and current.lease_id != new.lease_id:
            await self.revoke(current.lease_id)  # the key moved to the new lease; drop the empty one
        return new

    async def delete_lease(self, subnet: ipaddress.IPv4Network, mod_revision: int | None = None,
                           ipv6_subnet: ipaddress.IPv6Network | None = None) -> bool:
        kv = await self._kv()
        key = self.lease_key(subnet, ipv6_subnet)
        if mod_revision is None:
            resp = await self._call(kv.delete, key, timeout=_CALL_TIMEOUT)
            return resp.deleted > 0
        cmp = Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=mod_revision)
        txn = await self._call(kv.txn, [cmp], [KVService.txn_op_delete(key)], timeout=_CALL_TIMEOUT, max_attempts=1)
        return bool(txn.succeeded)

    async def delete_subnet_key(self, key: str) -> bool:
        """Delete one key under ``<prefix>/subnets/`` as it is spelled, also one that does not decode
        (``flannelctl leases revoke`` of a bad key); False when there was none."""
        if not key.startswith(self.subnets_prefix) or key == self.subnets_prefix:
            raise ValueError(f"{key!r} is not a key under {self.subnets_prefix}")
        kv = await self._kv()
        resp = await self._call(kv.delete, key, timeout=_CALL_TIMEOUT)
        return resp.deleted > 0

    async def watch_leases(self, start_revision: int) -> AsyncIterator[Changes | WatchLost]:
        client = await self.connect()
        assert client.watch is not None
        p = self.subnets_prefix
        stream = client.watch.watch(p, prefix_range_end(p.encode()), start_revision=start_revision)
        try:
            async for resp in stream:
                if resp.canceled or resp.compact_revision:
                    yield WatchLost(f"watch cancelled (compacted at revision {resp.compact_revision}): "
                                    f"{resp.cancel_reason or 'compaction'}")
                    return
                if not resp.events:
                    continue
                # One response may hold several events for one key (a watch catching up): the
                # last one wins, so puts and deletes come out disjoint and order-free. By key, not
                # by subnet: two keys can name one subnet (leasecheck.screen_held picks the holder).
                last: dict[str, Lease | SubnetId] = {}
                bad, odd = [], []
                for ev in resp.events:
                    got = self._decode(ev.kv.key, ev.kv.value, ev.kv.lease, ev.kv.mod_revision,
                                       ev.kv.create_revision)
                    if ev.type == 1:  # DELETE: the key alone says which subnet went away
                        gone = got.ident if isinstance(got, Lease) else got.subnet
                        if gone is not None:
                            last[got.key[len(p):] if isinstance(got, BadLease) else got.key] = gone
                        else:  # not a subnet key at all: only flannel_bad_leases cares that it went
                            odd.append(got.key[len(p):])
                    elif isinstance(got, BadLease):
                        bad.append(got)
                    else:
                        last[got.key] = got
                gone_keys = [(key, sn) for key, sn in last.items() if not isinstance(sn, Lease)]
                yield Changes(tuple(le for le in last.values() if isinstance(le, Lease)),
                              tuple(sn for _, sn in gone_keys), resp.header.revision, tuple(bad),
                              tuple(key for key, _ in gone_keys) + tuple(odd))
        except (EtcdError, grpc.aio.AioRpcError) as err:
            yield WatchLost(f"watch on etcd at {self.endpoints} failed: {_describe(err)}")
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    if isinstance(err, TimeoutError):
        return f"no answer within {_CALL_TIMEOUT:g}s"
    return str(err) or type(err).__name__
