"""flanneld's lenient reading of its own previous subnet.env (issue 13, part 5): bytes, line by line,
never failing; every valid previous subnet it still names is kept, and what was ignored is said once."""

from __future__ import annotations

import errno
import logging
import os
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.subnetenv import (
    MAX_SUBNET_ENV_BYTES,
    PreviousRun,
    previous_run,
    salvage_subnet_env,
)
from pyflannel.subnetfile import read_previous_subnet, try_write_subnet_file, unwritable_fix
from pyflannel.systemd import sd_notify

GOOD = b"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.53.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
NET, SUB = IPv4Network("10.0.0.0/16"), IPv4Network("10.0.53.0/24")


def prev(data: bytes, subnet_len: int = 24) -> PreviousRun:
    return previous_run(salvage_subnet_env(data), subnet_len)


def test_a_good_file_reads_as_before() -> None:
    s = salvage_subnet_env(GOOD)
    assert s.ignored_count == 0 and s.cut_key == ""
    assert prev(GOOD) == PreviousRun(SUB, NET)


def test_invalid_utf8_line_among_good_ones_is_ignored_and_named() -> None:
    data = GOOD.replace(b"FLANNEL_MTU=1472", b"FLANNEL_MTU=\xff\xfe14")
    s = salvage_subnet_env(data)
    assert s.ignored_count == 1
    assert s.ignored[0].startswith("line 3 (") and "not UTF-8 (byte 0xff at column 13)" in s.ignored[0]
    assert s.values["FLANNEL_SUBNET"] == "10.0.53.1/24" and "FLANNEL_MTU" not in s.values
    assert prev(data) == PreviousRun(SUB, NET)


def test_a_whole_binary_file_names_no_subnet_and_says_why() -> None:
    got = prev(bytes(range(256)) * 4)
    assert got.subnet is None and got.problem.startswith("it has no FLANNEL_SUBNET line (")


@pytest.mark.parametrize("bad", [b"garbage", b"=1", b"BAD KEY=1", b"A='unterminated", b"export"])
def test_a_bad_line_among_good_ones_keeps_the_rest(bad: bytes) -> None:
    data = GOOD.replace(b"FLANNEL_MTU=1472\n", b"FLANNEL_MTU=1472\n" + bad + b"\n")
    s = salvage_subnet_env(data)
    assert s.ignored_count == 1 and s.ignored[0].startswith("line 4 (")
    assert s.values["FLANNEL_IPMASQ"] == "false"
    assert prev(data) == PreviousRun(SUB, NET)


def test_cut_subnet_whose_address_is_whole_names_the_subnet() -> None:
    for cut in (b"10.0.53.1/2", b"10.0.53.1/"):
        got = prev(b"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=" + cut)
        assert (got.subnet, got.network, got.problem) == (SUB, NET, "")
        assert "10.0.53.1 is the first of 10.0.53.0/24 (SubnetLen /24)" in got.recovered


@pytest.mark.parametrize("cut", [b"10.0.5", b"10.0.53.", b"10.0.53.1", b""])
def test_cut_subnet_without_a_whole_address_is_a_plain_problem(cut: bytes) -> None:
    # "10.0.53.1" without "/" may itself be cut from 10.0.53.12x: not trusted at the end of the file
    got = prev(b"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=" + cut)
    assert got.subnet is None and got.network == NET
    assert got.problem == f"FLANNEL_SUBNET={cut.decode()!a} is cut off (no newline ends the file), and no " \
                          "whole address survives in it"


def test_cut_subnet_must_be_the_first_address_of_a_subnet() -> None:
    assert prev(b"FLANNEL_SUBNET=10.0.53.129/2", 25).subnet == IPv4Network("10.0.53.128/25")
    assert prev(b"FLANNEL_SUBNET=10.0.53.7/2", 24).subnet is None  # flannel always writes the first address


def test_a_hand_written_file_without_final_newline_is_quietly_fine() -> None:
    got = prev(GOOD.replace(b"FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n", b"").rstrip(b"\n"))
    assert got == PreviousRun(SUB, NET)


def test_a_cut_network_line_is_not_trusted() -> None:
    assert prev(b"FLANNEL_SUBNET=10.0.53.1/24\nFLANNEL_NETWORK=10.0.0.0/1") == PreviousRun(SUB, None)


def test_nul_bytes() -> None:
    # what a crash often leaves: the file's length with its blocks zeroed, or NULs after the text
    assert prev(bytes(4096)).problem == "it has no FLANNEL_SUBNET line (1 damaged line ignored)"
    padded = salvage_subnet_env(GOOD + bytes(100))
    assert padded.ignored_count == 1 and "NUL byte at column 1" in padded.ignored[0]
    assert previous_run(padded, 24) == PreviousRun(SUB, NET)
    # NULs right in the subnet line: the whole address before them still names the subnet
    got = prev(GOOD.replace(b"1/24\n", b"1/2\0\0\0\n"))
    assert got.subnet == SUB and got.recovered
    assert prev(b"FLANNEL_SUBNET=10.0.5\0\0\n").problem.startswith("FLANNEL_SUBNET='10.0.5' is on a damaged line")


def test_a_bad_value_on_a_complete_line_is_named() -> None:
    got = prev(b"FLANNEL_SUBNET=zzz\n")
    assert got.subnet is None and got.problem == "FLANNEL_SUBNET='zzz' is not a subnet such as 10.0.53.1/24"


def test_ignored_lines_are_counted_but_only_a_few_kept() -> None:
    s = salvage_subnet_env(b"x\n" * 1000 + GOOD)
    assert s.ignored_count == 1000 and len(s.ignored) <= 8
    assert previous_run(s, 24) == PreviousRun(SUB, NET)


@given(st.binary(max_size=400), st.integers(1, 32))
def test_any_bytes_give_a_previous_run(data: bytes, subnet_len: int) -> None:
    got = prev(data, subnet_len)
    assert (got.subnet is None) == bool(got.problem)
    if got.recovered:
        assert got.subnet is not None and got.subnet.prefixlen == subnet_len


# --- the file itself ------------------------------------------------------------------------------


def test_read_previous_subnet_logs_ignored_lines_once(tmp_path, caplog) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(GOOD.replace(b"FLANNEL_MTU=1472", b"\xc3\x28") + b"junk\n")
    with caplog.at_level(logging.WARNING, "flanneld"):
        got = read_previous_subnet(str(path), 24)
    assert got == PreviousRun(SUB, NET)
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert msg.startswith(f"previous subnet file {path}: ignoring 2 damaged lines and reading the rest: line 3 (")
    assert "line 5 (b'junk'): no '=' in line" in msg


def test_a_huge_file_is_read_only_up_to_the_limit(tmp_path, caplog) -> None:
    path = tmp_path / "subnet.env"
    with open(path, "wb") as f:
        f.write(GOOD)
        f.write(b"#" * (20 * 2**20))  # 20 MiB of one comment line
    with caplog.at_level(logging.WARNING, "flanneld"):
        assert read_previous_subnet(str(path), 24) == PreviousRun(SUB, NET)
    assert f"everything after the first {MAX_SUBNET_ENV_BYTES} bytes (the file is larger)" in caplog.text


def test_a_huge_line_of_garbage(tmp_path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(b"\xff" * (5 * 2**20))
    got = read_previous_subnet(str(path), 24)
    assert got.subnet is None and got.problem.startswith("it has no FLANNEL_SUBNET line")


def test_missing_directory_fifo(tmp_path) -> None:
    assert read_previous_subnet(str(tmp_path / "none"), 24) == PreviousRun()
    (tmp_path / "dir").mkdir()
    assert read_previous_subnet(str(tmp_path / "dir"), 24).problem in ("it is not a regular file",
                                                                        "it cannot be read: Is a directory")
    os.mkfifo(tmp_path / "fifo")  # a FIFO nobody writes to must not hang the start
    assert read_previous_subnet(str(tmp_path / "fifo"), 24).problem == "it is not a regular file"


def test_unwritable_subnet_file_is_an_error_value_with_a_fix(tmp_path) -> None:
    path = tmp_path / "subnet.env"
    path.mkdir()
    err = try_write_subnet_file(str(path), "FLANNEL_MTU=1\n")
    assert err is not None and err.errno == errno.EISDIR
    assert unwritable_fix(str(path), err) == f"a directory is in its place: remove it (rmdir {path})"
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]  # no temporary file left behind
    path.rmdir()
    assert try_write_subnet_file(str(path), "FLANNEL_MTU=1\n") is None and path.read_text() == "FLANNEL_MTU=1\n"
    assert "read-only" in unwritable_fix(str(path), OSError(errno.EROFS, "Read-only file system"))
    assert "full" in unwritable_fix(str(path), OSError(errno.ENOSPC, "No space left on device"))


def test_readyz_names_the_cause_while_forwarding() -> None:
    from pyflannel.observe import HttpServer, Stats, View

    stats = Stats(not_ready="cannot write /run/flannel/subnet.env: Read-only file system")
    server = HttpServer("127.0.0.1", 0, View(stats))
    assert server.respond("/readyz") == (503, "text/plain", b"flanneld is not ready: cannot write "
                                         b"/run/flannel/subnet.env: Read-only file system (forwarding continues)")
    stats.not_ready, stats.subnet_file_written = "", True
    assert server.respond("/readyz")[0] == 200


def test_sd_notify_to_a_missing_socket_is_false(tmp_path) -> None:
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
