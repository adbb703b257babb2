"""The process's own lot: its open-files limit, and the signals other than SIGTERM and SIGINT.

- **RLIMIT_NOFILE**: systemd starts a service with a soft limit of 1024 files (hard: 524288).
  flanneld raises the soft limit to the hard one at start-up, as every Go program does since
  Go 1.19 (so Go flannel too), and logs when it cannot. The health server bounds its own
  connections besides (``observe.HttpServer``), so even 1024 is enough.
- **SIGUSR1** logs the daemon's state in a few lines (``observe.state_lines``).
- **SIGUSR2, SIGALRM**: ignored, as Go flannel (the Go runtime catches them and does nothing).
- **SIGHUP**: ignored too, where Go flannel exits (Go's default): a hangup of the terminal that
  started flanneld, or a stray ``kill -HUP`` meant as "reload", must not take the network down
  (on udp, ``flannel0`` goes with the process). There is nothing to reload: the flags and the
  network config are read at start only. Each of these is logged the first time it arrives.

Ignored signals get a handler, never ``SIG_IGN`` (which would be inherited by iptables & co.),
except for the short time before the event loop runs (``ignore_early``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable

log = logging.getLogger("flanneld")

IGNORED = {
    signal.SIGUSR2: "as Go flannel does",
    signal.SIGALRM: "as Go flannel does",
    signal.SIGHUP: "flanneld reads its flags and the network config at start only: restart it to apply a change; "
                   "SIGUSR1 logs its state",
}
DUMP = signal.SIGUSR1


def raise_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; say what was done, or why not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel caps it at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        log.info("open files limit: %d (already the hard limit)", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        log.warning("cannot raise the open files limit from %d to %d (%s): keeping %d; raise LimitNOFILE= in "
                    "flanneld.service if it runs short", soft, target, err, soft)
        return
    log.info("open files limit: raised from %d to %d", soft, target)


def ignore_early() -> None:
    """Until the event loop's handlers are in place: neither dump nor ignored signal ends us."""
    for sig in (DUMP, *IGNORED):
        signal.signal(sig, signal.SIG_IGN)


def install_signals(loop: asyncio.AbstractEventLoop, state: Callable[[], list[str]]) -> None:
    """SIGUSR1 logs ``state()``; the IGNORED ones are logged the first time and otherwise ignored."""
    seen: set[int] = set()

    def ignore(sig: signal.Signals) -> None:
        if sig not in seen:
            seen.add(sig)
            log.info("received %s: ignored (%s); further ones are ignored silently", sig.name, IGNORED[sig])

    def dump() -> None:
        try:
            lines = state()
        except Exception:  # a dump must never hurt the daemon
            log.exception("received SIGUSR1 but could not gather the state")
            return
        for line in lines:
            log.info("%s", line)

    loop.add_signal_handler(DUMP, dump)
    for sig in IGNORED:
        loop.add_signal_handler(sig, ignore, sig)
