"""The process around the conductor: the instance lock, signals, a bounded shutdown and the exit
code (``run`` is what ``flanneld`` calls; the conductor itself is in ``daemon.py``)."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import threading
import time

from .core.errors import AllocationError, ConfigError, LeaseLost, LocalConfigError
from .daemon import Conductor, Options
from .instance import InstanceLock
from .observe import state_lines
from .process import ignore_early, install_signals, raise_file_limit

log = logging.getLogger("flanneld")


async def _main(opts: Options) -> int:
    conductor = Conductor(opts)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)  # a second signal kills us the default way
        threading.Thread(target=_shutdown_watchdog, name="shutdown-watchdog", daemon=True).start()
        task.cancel()

    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, on_signal, s)
    install_signals(loop, lambda: state_lines(conductor.view()))
    try:
        await conductor.run()
        return 0
    except asyncio.CancelledError:
        log.info("exiting cleanly; %s", "the node keeps its annotations for the next start" if opts.kube
                 else "the lease stays in etcd for the next start")
        return 0
    except Exception as err:
        for e in _flatten(err):
            if isinstance(e, _EXPECTED):
                log.error("%s", e)
            else:
                log.error("flanneld failed: %s", e, exc_info=e)
        return 1
    finally:
        await conductor.close()


_EXPECTED = (LocalConfigError, ConfigError, AllocationError, LeaseLost)
SHUTDOWN_GRACE_S = 8.0


def _shutdown_watchdog() -> None:
    """A stop must never hang (systemd would SIGKILL us at TimeoutStopSec anyway): if the clean
    shutdown has not finished after ``SHUTDOWN_GRACE_S``, print every thread's stack for the
    operator and exit 0 all the same; the lease stays in etcd and the kernel state in place."""
    time.sleep(SHUTDOWN_GRACE_S)
    log.error("shutdown is still not done after %gs; the stacks of all threads follow; exiting anyway",
              SHUTDOWN_GRACE_S)
    faulthandler.dump_traceback(all_threads=True)
    logging.shutdown()
    os._exit(0)


def _flatten(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for sub in err.exceptions for leaf in _flatten(sub)]
    return [err]


def run(opts: Options, banner: str = "") -> int:
    """The composition root: run flanneld until SIGTERM; the process exit code. ``banner`` (the
    version and flags) is logged once the instance lock is ours: a refused second flanneld says
    one line, the refusal."""
    ignore_early()
    instance = InstanceLock(opts.subnet_file)
    try:
        instance.acquire()  # before anything is touched: a second flanneld must change nothing
    except LocalConfigError as err:
        log.error("%s", err)
        return 1
    if banner:
        log.info("%s", banner)
    raise_file_limit()
    try:
        return asyncio.run(_main(opts))
    except KeyboardInterrupt:
        return 0
    finally:
        instance.release()
