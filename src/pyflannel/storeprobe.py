"""The store probe: notices an outage of etcd (or of the Kubernetes API server) that the lease watch
rides out silently, and a network config changed under a running flanneld.

An outage is one error line, not-ready while it lasts (``Stats.store_ok``, ``store_problem``: what
/readyz and flannel_ready say) with every route and the lease kept as they are, and one line when
the store answers again. A changed config (etcd mode; its raw value is read on every probe) is one
warning naming what changed: only a restart applies it, flanneld keeps running on the one it
started with.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .core.config import RESTART_NEEDED, NetworkConfig, config_changes, parse_config
from .core.errors import ConfigError, StoreUnavailable
from .observe import Stats
from .store.etcd import EtcdRegistry
from .store.kube import KubeRegistry, KubeUnauthorized

log = logging.getLogger("flanneld")


class StoreProbe:
    def __init__(self, registry: EtcdRegistry | KubeRegistry, stats: Stats) -> None:
        self.registry = registry
        self.stats = stats
        self.config: NetworkConfig | None = None  # the config flanneld runs with
        self.config_seen: bytes | None = None  # the config in etcd as last read (raw)

    async def run(self, config: NetworkConfig, period: float = 1.0) -> None:
        """Notice an etcd outage (the watch reconnects silently): log it once, report not-ready,
        keep the kernel as it is; log once more when etcd answers again."""
        self.config = config
        store_name = self.registry.store_name
        down_since: float | None = None
        while True:
            await asyncio.sleep(period)
            try:
                if isinstance(self.registry, KubeRegistry):
                    await asyncio.wait_for(self.registry.probe(), 2 * period + 10)
                    data = self.config_seen
                else:
                    data = await asyncio.wait_for(self.registry.get_config(), 2 * period)
            except (StoreUnavailable, TimeoutError) as err:
                if down_since is None:
                    down_since = time.monotonic()
                    state = "refuses flanneld's credentials" if isinstance(err, KubeUnauthorized) else "is unreachable"
                    self.stats.store_ok = False
                    self.stats.store_problem = f"{store_name} {state}"
                    log.error("%s %s (%s): keeping every route and the lease as they are, retrying every %gs",
                              store_name, state, err or "no answer", period)
                continue
            if down_since is not None:
                log.info("%s answers again after %.1fs; the lease watch resumes where it stopped",
                         store_name, time.monotonic() - down_since)
                down_since = None
                self.stats.store_ok = True
            self.check_config(data)

    def check_config(self, data: bytes | None) -> None:
        """The config in etcd changed while we run: say once what changed and that only a restart
        applies it (flanneld keeps running on the config it started with)."""
        if data == self.config_seen or self.config is None:
            return
        self.config_seen = data
        if data is None:
            log.warning("the network config was deleted from %s; flanneld keeps running on the one it started "
                        "with (write it back with `flannelctl config set`)", self.registry.config_key)
            return
        try:
            changes = config_changes(self.config, parse_config(data))
        except ConfigError as err:
            log.warning("the network config at %s is now invalid (%s); flanneld keeps running on the one it started "
                        "with; fix it with `flannelctl config set`", self.registry.config_key, err)
            return
        if changes:
            log.warning("the network config at %s changed: %s; %s", self.registry.config_key, "; ".join(changes),
                        RESTART_NEEDED)
        else:
            log.info("the network config at %s is the one flanneld runs with again", self.registry.config_key)
