"""The one-flanneld-per-subnet-file lock (issue 13: a second flanneld wrecked the first)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyflannel.core.errors import LocalConfigError
from pyflannel.instance import InstanceLock, lock_path


def test_lock_names_follow_the_subnet_file():
    assert lock_path("/run/flannel/subnet.env", "/L") == "/L/run-flannel-subnet.env.lock"
    # distinct files never share a lock name, even with dashes in them
    assert lock_path("/a-b/c", "/L") != lock_path("/a/b-c", "/L")


def test_a_second_holder_is_refused_by_pid_and_a_released_lock_is_free(tmp_path):
    first = InstanceLock(str(tmp_path / "subnet.env"), str(tmp_path / "locks"))
    first.acquire()
    with pytest.raises(LocalConfigError, match=rf"flanneld pid {os.getpid()} already runs with --subnet-file="):
        InstanceLock(str(tmp_path / "subnet.env"), str(tmp_path / "locks")).acquire()
    InstanceLock(str(tmp_path / "other.env"), str(tmp_path / "locks")).acquire()  # another network: fine
    first.release()
    InstanceLock(str(tmp_path / "subnet.env"), str(tmp_path / "locks")).acquire()


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
    code = ("import sys, os; from pyflannel.instance import InstanceLock; "
            f"InstanceLock({str(tmp_path / 's.env')!r}, {str(tmp_path)!r}).acquire(); os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    InstanceLock(str(tmp_path / "s.env"), str(tmp_path)).acquire()


def test_an_uncreatable_lock_warns_and_does_not_gate(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    InstanceLock(str(tmp_path / "s.env"), str(tmp_path / "file" / "locks")).acquire()
    assert "would not be refused" in caplog.text


def test_the_holder_is_read_from_proc_locks_without_taking_the_lock(tmp_path):
    from pyflannel.instance import holder

    subnet, locks = str(tmp_path / "s.env"), str(tmp_path / "locks")
    assert holder(subnet, locks) is None
    lock = InstanceLock(subnet, locks)
    lock.acquire()
    assert holder(subnet, locks) == os.getpid()
    assert holder(str(tmp_path / "other.env"), locks) is None
    lock.release()
    assert holder(subnet, locks) is None
