"""The one owner of our own lease: renews it before it expires, takes it again when someone deletes
it, and ends flanneld (``LeaseLost``) when another host took our subnet.

The watcher tells it what it saw of our key (``observe``: it only records and wakes); only the
keeper's task changes ``lease``. flannel exits when its lease is deleted; we re-create the same
subnet, riding out an unavailable etcd, while the watcher keeps following the peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .core.backoff import Backoff, LogOnce
from .core.errors import LeaseLost, StoreUnavailable
from .core.events import BadLease, Changes, Snapshot
from .core.lease import Lease, SubnetId
from .store.etcd import EtcdRegistry
from .store.manager import LeaseManager

log = logging.getLogger("flanneld")
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Seen:
    lease: Lease | None  # None: our key was deleted (or holds garbage)
    garbage: BadLease | None = None  # our key's value no longer decodes


def _owner(lease: Lease) -> str:
    """Who a lease says it belongs to: its PublicIP; on an IPv6-only network (PublicIP 0.0.0.0 on
    every host) its PublicIPv6."""
    if lease.attrs.public_ip.is_unspecified and lease.attrs.public_ipv6 is not None:
        return str(lease.attrs.public_ipv6)
    return str(lease.attrs.public_ip)


class LeaseKeeper:
    def __init__(self, lease: Lease, manager: LeaseManager, registry: EtcdRegistry, renew_margin_s: float) -> None:
        self.lease = lease
        self.manager = manager
        self.registry = registry
        self.renew_margin_s = renew_margin_s
        self._seen: _Seen | None = None
        self._wake = asyncio.Event()
        self._not_before = 0.0  # a failed renewal is retried no sooner than this (time.time())
        self._renew_at = self._renewal_time(lease)
        self._renew_log = LogOnce(log, same=lambda m: m.split(" (")[0])  # one outage, one line
        self._retry = Backoff(0.5, 10.0)
        self.renewals = 0

    @property
    def subnet(self) -> SubnetId:
        """Our lease's ident (its IPv4 subnet; its IPv6 subnet on an IPv6-only network)."""
        return self.lease.ident

    def observe(self, ev: Snapshot | Changes) -> None:
        """What the watcher saw of our key in ``ev`` (O(size of ev)); acted on by ``run``."""
        own = self.lease.ident
        key = self.registry.subnets_prefix + self.lease.key
        garbage = next((b for b in ev.bad if b.subnet == own and b.key == key), None)
        if garbage is not None:
            seen = _Seen(None, garbage)
        elif isinstance(ev, Snapshot):
            mine = next((le for le in ev.leases if le.ident == own), None)
            seen = _Seen(mine)
        else:
            mine = next((le for le in reversed(ev.puts) if le.ident == own), None)
            if mine is not None:
                seen = _Seen(mine)
            elif own in ev.deletes:
                seen = _Seen(None)
            else:
                return
        self._seen = seen
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._until_renewal())
            self._wake.clear()
            seen, self._seen = self._seen, None
            if seen is not None:
                if seen.garbage is not None:
                    await self._restore(seen.garbage)
                    continue
                if seen.lease is None:
                    log.warning("our lease %s was deleted from %s; taking it again", self.lease.ident,
                                self.registry.store_name)
                    await self._retake()
                    continue
                self._follow(seen.lease)
            until = self._until_renewal()
            if until is not None and until <= 0:
                await self._renew()

    def _renewal_time(self, lease: Lease) -> float | None:
        """When to renew ``lease`` (time.time()): ``renew_margin_s`` before it expires, but never
        later than half its remaining life from now; None for a reservation."""
        if lease.is_reservation or lease.expiration is None:
            return None
        now = time.time()
        remaining = lease.expiration - now
        return now + (max(remaining - self.renew_margin_s, remaining / 2, 0.5) if remaining > 0 else 0.0)

    def _set(self, lease: Lease) -> None:
        """The one place ``lease`` changes hands; a new expiry moves the renewal time."""
        if lease.expiration != self.lease.expiration or lease.is_reservation != self.lease.is_reservation:
            self._renew_at = self._renewal_time(lease)
            if self._renew_at is not None:
                log.debug("lease %s: next renewal in %.0fs", lease.ident, self._renew_at - time.time())
        self.lease = lease

    def _until_renewal(self) -> float | None:
        if self._renew_at is None:
            return None
        now = time.time()
        return max(self._renew_at - now, self._not_before - now, 0.0)

    def _follow(self, seen: Lease) -> None:
        """Our key changed: our own renewal (follow its revision), or another host took it."""
        if _owner(seen) != _owner(self.lease):
            raise LeaseLost(f"our subnet {seen.ident} now belongs to {_owner(seen)}: someone else took it; "
                            "exiting so that a restart leases a new subnet (then restart docker)")
        self._set(Lease(seen.subnet, self.lease.attrs, seen.ipv6_subnet, seen.lease_id, seen.mod_revision,
                        self.lease.expiration))

    async def _renew(self) -> None:
        try:
            new = await self.manager.renew(self.lease)
        except StoreUnavailable as err:
            delay = self._retry_delay()
            self._renew_log.error("cannot renew lease %s (it expires in %s), retrying with a backoff: %s",
                                  self.lease.ident, self._time_left(), err)
            self._not_before = time.time() + delay
            return
        self._retry.reset()
        if new is None:  # changed under us: let the watcher's view settle, then try again
            self._not_before = time.time() + 1.0
            return
        self._renew_log.ok("lease %s can be renewed again", new.ident)
        self._set(new)
        self.renewals += 1
        log.info("lease renewed subnet=%s expires_in=%ds", new.ident, int((new.expiration or 0) - time.time()))

    def _retry_delay(self) -> float:
        """After a failed renewal: the backoff (0.5 s doubling up to 10 s), but never more than a
        quarter of the time the lease has left, so a short etcd stall is retried while it lives."""
        delay = self._retry.next()
        left = (self.lease.expiration or 0.0) - time.time()
        return min(delay, max(left / 4, 0.2)) if left > 0 else min(delay, 1.0)

    def _time_left(self) -> str:
        left = (self.lease.expiration or 0.0) - time.time()
        return f"{left:.0f}s" if left > 0 else "no time: it has expired"

    async def _restore(self, garbage: BadLease) -> None:
        """Someone overwrote our key with a value that is no lease (no TTL: it would stay for good,
        and a restart would lease another subnet): write our lease back over exactly that value."""
        log.warning("our lease %s was overwritten with something that is not a lease (%s); writing it back",
                    self.lease.ident, garbage.reason)
        new = await self._until_stored(lambda: self.manager.restore(self.lease, garbage.mod_revision),
                                       f"write our lease {self.lease.ident} back")
        if new is None:  # changed again meanwhile: the watcher says what it is now
            return
        self._set(new)
        log.info("lease %s written back", new.ident)

    async def _retake(self) -> None:
        """Re-create our deleted lease, riding out an unavailable etcd; LeaseLost if another host
        took the subnet meanwhile."""
        own = self.lease.ident

        async def attempt() -> Lease:
            while True:
                new = await self.manager.recreate(self.lease.subnet, self.lease.ipv6_subnet)
                if new is not None:
                    return new
                # the key exists: our own earlier attempt, or another host
                snap = await self.registry.list_leases()
                new = next((le for le in snap.leases if le.key == self.lease.key), None)
                if new is None:
                    continue
                if _owner(new) != _owner(self.lease):
                    raise LeaseLost(f"our lease {own} was deleted and {_owner(new)} took the subnet; "
                                    "exiting so that a restart leases a new one (then restart docker)")
                return new

        self._set(await self._until_stored(attempt, f"re-create our lease {own}"))
        log.info("lease %s taken again", own)

    async def _until_stored(self, op: Callable[[], Awaitable[_T]], what: str) -> _T:
        """``op()``, again and again while etcd is unavailable (0.2 s doubling up to 2 s, one line
        per outage: "cannot <what> yet"); anything else it raises passes through."""
        backoff, failing = Backoff(0.2, 2.0), LogOnce(log)
        while True:
            try:
                return await op()
            except StoreUnavailable as err:
                failing.error("cannot %s yet, retrying: %s", what, err)
                await asyncio.sleep(backoff.next())
