"""Netlink link events for the devices we own: a thread blocked on an RTMGRP_LINK socket that
calls back when one of them is deleted or changed, so a hand-deleted flannel.1 is rebuilt at
once instead of at the next timer tick."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger(__name__)


class LinkMonitor:
    def __init__(self, names: Iterable[str], on_event: Callable[[str, str], None]) -> None:
        self.names = frozenset(names)
        self.on_event = on_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="link-monitor", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self, ready: threading.Event) -> None:
        try:
            with IPRoute() as ipr:
                ipr.bind(groups=RTMGRP_LINK)
                ready.set()
                while not self._stop.is_set():
                    r, _, _ = select.select([ipr.fileno()], [], [], 0.5)
                    if not r:
                        continue
                    for msg in ipr.get():
                        name = msg.get("ifname")
                        if name in self.names:
                            self.on_event(msg.get("event", ""), name)
        except Exception as err:  # the timer-driven resync still heals; just say so
            log.warning("link monitor stopped: %s (the periodic resync keeps running)", err)
        finally:
            ready.set()

