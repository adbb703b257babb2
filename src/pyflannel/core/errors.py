"""Errors typed by who is to blame, so every layer knows whether to exit, skip or retry.

- ``LocalConfigError``: this host's flags, files or interfaces are wrong. flanneld exits 1 with
  the message; the operator fixes the host.
- ``ConfigError``: the network config in the store is wrong. flanneld logs it and retries, since
  somebody may fix the key while we wait.
- ``StoreDataError``: a value someone else wrote under ``<prefix>/subnets/`` cannot be decoded.
  It is logged once and skipped; it never means "forget the other peers".
- ``StoreUnavailable``: etcd cannot be reached right now. Back off, keep the kernel as it is.
- ``AllocationError``: no free subnet is left in the network.
- ``TransientError``: a remote API (a cloud's) failed for now; retried with backoff, never fatal.
- ``KernelError``: a netlink/kernel operation failed; fatal while setting up, retried afterwards.
"""

from __future__ import annotations


class FlannelError(Exception):
    """Base class of every error pyflannel raises on purpose."""


class LocalConfigError(FlannelError):
    """A flag, file or interface of this host is wrong."""


class ConfigError(FlannelError):
    """The network config JSON is missing or invalid."""


class StoreDataError(FlannelError):
    """A key or value in the store cannot be decoded."""


class StoreUnavailable(FlannelError):
    """The store cannot be reached; the caller should back off and retry."""


class AllocationError(FlannelError):
    """No subnet could be leased."""


class LeaseLost(FlannelError):
    """Our own lease was taken by another host while we were away."""


class KernelError(FlannelError):
    """A netlink or other kernel operation failed; the message names the object, the errno and the fix."""


class TransientError(FlannelError):
    """A remote API failed for now (throttled, 5xx, unreachable): retried with backoff, never fatal."""
