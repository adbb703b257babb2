"""mk-docker-opts against the golden output of flannel's dist/mk_docker_opts_test.go
(docs/compatibility.md#mk-docker-opts).

main() runs in-process on files under tmp_path; the route table is always injected, so these tests
never read or change the host's routes.
"""

from __future__ import annotations

import pytest

from pyflannel.cli import mk_docker_opts
from pyflannel.cli.mk_docker_opts import (
    Options,
    conflicting_routes,
    main,
    parse_args,
    read_route_table,
    route_probe,
)

SAMPLE_SUBNET_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
)

GOLDEN_INDIVIDUAL = (
    b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1472"\n'
)
GOLDEN_COMBINED = b'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text(SAMPLE_SUBNET_ENV)
    return src, tmp_path / "docker_opts.env"


def run(src, dst, *flags, environ=None, routes: str | None = ""):
    argv = ["-f", str(src), "-d", str(dst), *flags]
    return main(argv, environ={} if environ is None else environ, route_table=lambda: routes)


# --- golden cases from dist/mk_docker_opts_test.go ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ((), GOLDEN_INDIVIDUAL + GOLDEN_COMBINED),
        (("-i",), GOLDEN_INDIVIDUAL),
        (("-c",), GOLDEN_COMBINED),
        (
            ("-k", "CUSTOM_KEY"),
            GOLDEN_INDIVIDUAL + b'CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n',
        ),
        (
            ("-m",),
            b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
            b'DOCKER_OPT_MTU="--mtu=1472"\n'
            b'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n',
        ),
        # getopts spellings: both flags, combined flags, attached option arguments.
        (("-i", "-c"), GOLDEN_INDIVIDUAL + GOLDEN_COMBINED),
        (("-ic",), GOLDEN_INDIVIDUAL + GOLDEN_COMBINED),
        (("-kCUSTOM_KEY", "-c"), b'CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'),
        (("-mc",), b'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n'),
    ],
)
def test_golden_output(files, flags, want, capsys):
    src, dst = files
    assert run(src, dst, *flags) == 0
    assert dst.read_bytes() == want
    assert capsys.readouterr().err == ""


def test_attached_file_arguments(files):
    src, dst = files
    assert main([f"-f{src}", f"-d{dst}"], environ={}, route_table=lambda: "") == 0
    assert dst.read_bytes() == GOLDEN_INDIVIDUAL + GOLDEN_COMBINED


def test_existing_env_value_is_prepended_with_a_space(files):
    src, dst = files
    assert run(src, dst, "-c", environ={"DOCKER_OPTS": "--debug"}) == 0
    assert dst.read_bytes() == b'DOCKER_OPTS="--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'


def test_existing_env_value_of_custom_key(files):
    src, dst = files
    environ = {"DOCKER_OPTS": "--ignored", "CUSTOM_KEY": "--log-level=warn"}
    assert run(src, dst, "-c", "-k", "CUSTOM_KEY", environ=environ) == 0
    assert (
        dst.read_bytes() == b'CUSTOM_KEY="--log-level=warn  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'
    )


def test_empty_env_value_adds_no_space(files):
    src, dst = files
    assert run(src, dst, "-c", environ={"DOCKER_OPTS": ""}) == 0
    assert dst.read_bytes() == GOLDEN_COMBINED


def test_process_environment_is_the_default(files, monkeypatch):
    src, dst = files
    monkeypatch.setenv("DOCKER_OPTS", "--from-env")
    assert main(["-f", str(src), "-d", str(dst), "-c"], route_table=lambda: "") == 0
    assert dst.read_bytes().startswith(b'DOCKER_OPTS="--from-env  --bip=')


def test_ipmasq_true_disables_docker_masquerading(tmp_path):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert run(src, dst, "-c") == 0
    assert dst.read_bytes() == b'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"\n'


def test_invalid_ipmasq_exits_1_before_touching_output(tmp_path, capsys):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=yes\n")
    dst.write_text("previous\n")
    assert run(src, dst) == 1
    assert "Invalid value of FLANNEL_IPMASQ: yes" in capsys.readouterr().err
    assert dst.read_text() == "previous\n"


def test_invalid_ipmasq_is_ignored_with_m(tmp_path):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=yes\n")
    assert run(src, dst, "-m") == 0
    assert dst.read_bytes() == b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPTS=" --bip=10.1.74.1/24"\n'


def test_output_file_is_truncated(files):
    src, dst = files
    dst.write_text("X" * 1000 + "\n")
    assert run(src, dst, "-c") == 0
    assert dst.read_bytes() == GOLDEN_COMBINED


def test_missing_env_file_writes_only_combined_line_and_warns(tmp_path, capsys):
    src, dst = tmp_path / "absent.env", tmp_path / "out.env"
    assert run(src, dst) == 0
    assert dst.read_bytes() == b'DOCKER_OPTS=""\n'
    err = capsys.readouterr().err
    assert "warning" in err and str(src) in err


def test_missing_env_file_keeps_env_value(tmp_path):
    src, dst = tmp_path / "absent.env", tmp_path / "out.env"
    assert run(src, dst, "-i") == 0
    assert dst.read_bytes() == b""
    assert run(src, dst, environ={"DOCKER_OPTS": "--debug"}) == 0
    assert dst.read_bytes() == b'DOCKER_OPTS="--debug "\n'


def test_partial_env_file_emits_only_what_is_set(tmp_path):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_MTU=1450\nFLANNEL_SUBNET=\n")
    assert run(src, dst) == 0
    assert dst.read_bytes() == b'DOCKER_OPT_MTU="--mtu=1450"\nDOCKER_OPTS=" --mtu=1450"\n'


def test_env_file_is_parsed_not_sourced(tmp_path):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text(
        "# comment\nexport FLANNEL_SUBNET='10.1.74.1/24'\n"
        'FLANNEL_MTU="1472"\nFLANNEL_IPMASQ=false\nFLANNEL_X=$(touch pwned)\n'
    )
    assert run(src, dst) == 0
    assert dst.read_bytes() == GOLDEN_INDIVIDUAL + GOLDEN_COMBINED
    assert not (tmp_path / "pwned").exists()


def test_malformed_env_file_exits_1_naming_file_and_line(tmp_path, capsys):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_MTU=1450\nthis is not an assignment\n")
    assert run(src, dst) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "line 2" in err
    assert not dst.exists()


def test_unwritable_output_exits_1(files, capsys):
    src, dst = files
    assert run(src, dst.parent / "missing-dir" / "out.env") == 1
    assert "cannot write" in capsys.readouterr().err


# --- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [("-h",), ("-?",), ("-i", "-h"), ("-x",), ("-f",), ("-k", "BAD KEY")])
def test_usage_exits_1_without_writing(files, flags, capsys):
    _src, dst = files
    assert main(["-d", str(dst), *flags], environ={}, route_table=lambda: "") == 1
    err = capsys.readouterr().err
    assert "[-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]" in err
    assert "\t-m\tDo not output --ip-masq (useful for older Docker version)\n" in err
    assert not dst.exists()


@pytest.mark.parametrize(("flags", "first"), [(("-x",), "Illegal option -x"), (("-i", "-y"), "Illegal option -y"),
                                             (("-f",), "No arg for -f option"), (("-c", "-k"), "No arg for -k option")])
def test_bad_option_is_named_in_dashs_words(files, flags, first, capsys):
    """The script's getopts runs under dash: the first stderr line is dash's, byte for byte (the
    whole output is compared with the script itself in tests/e2e/test_goflannel_bytes.py)."""
    _src, dst = files
    assert main(["-d", str(dst), *flags], environ={}, route_table=lambda: "") == 1
    assert capsys.readouterr().err.split("\n")[0] == first


def test_parse_args_defaults_and_stop_at_first_operand():
    assert parse_args([]) == Options(
        flannel_env="/run/flannel/subnet.env",
        docker_env="/run/docker_opts.env",
        combined_key="DOCKER_OPTS",
        individual=True,
        combined=True,
        ipmasq=True,
    )
    assert parse_args(["-c", "operand", "-i"]) == Options(individual=False, combined=True)
    assert parse_args(["-f", "-d"]).flannel_env == "-d"  # getopts: -f takes the next word


# --- routing-table sanity check -------------------------------------------------------------------


def test_route_probe_like_the_script():
    assert route_probe("10.1.74.1/24") == "10.1.74.0/24"
    assert route_probe("10.1.74.129/25") == "10.1.74.128/25"
    assert route_probe("fd00::1/64") is None
    assert route_probe("garbage") is None


def test_conflicting_routes_needs_probe_and_via_on_one_line():
    table = (
        "default via 192.168.1.1 dev eth0\n"
        "10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1\n"
        "10.1.74.0/24 via 192.168.1.9 dev eth0\n"
        "10.1.75.0/24 via 192.168.1.9 dev eth0\n"
    )
    assert conflicting_routes(table, "10.1.74.0/24") == ["10.1.74.0/24 via 192.168.1.9 dev eth0"]
    # grep's '.' matches any character, as in the script.
    assert conflicting_routes("10x1x74x0/24 via 1.2.3.4\n", "10.1.74.0/24") == ["10x1x74x0/24 via 1.2.3.4"]


def test_route_conflict_exits_1_after_writing(files, capsys):
    src, dst = files
    routes = "default via 192.168.1.1 dev eth0\n10.1.74.0/24 via 192.168.1.9 dev eth0 proto static\n"
    assert run(src, dst, routes=routes) == 1
    assert dst.read_bytes() == GOLDEN_INDIVIDUAL + GOLDEN_COMBINED
    assert capsys.readouterr().err == (
        "Your routing table already contains the subnet: 10.1.74.0/24 via 192.168.1.9 dev eth0 proto static\n"
    )


@pytest.mark.parametrize(
    "routes",
    ["", None, "10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1\n"],
)
def test_no_route_conflict(files, routes):
    src, dst = files
    assert run(src, dst, routes=routes) == 0


def test_route_table_not_read_without_subnet(tmp_path):
    src, dst = tmp_path / "subnet.env", tmp_path / "out.env"
    src.write_text("FLANNEL_MTU=1450\n")

    def explode():
        raise AssertionError("route table must not be read")

    assert main(["-f", str(src), "-d", str(dst)], environ={}, route_table=explode) == 0


def test_read_route_table_without_ip_is_none(monkeypatch):
    monkeypatch.setattr(mk_docker_opts.shutil, "which", lambda name: None)
    assert read_route_table() is None


# ---- property: any env file and any flags give an exit code and a message, never a traceback ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_flag = st.sampled_from(["-i", "-c", "-m", "-k", "-h", "-?", "-x", "-kKEY", "-k", "BAD KEY", "--", "-f"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), flags=st.lists(_flag, max_size=4))
def test_any_env_file_and_flags_give_an_exit_code(tmp_path, capsys, text: str, flags: list[str]) -> None:
    src, dst = tmp_path / "subnet.env", tmp_path / "docker.env"
    src.write_text(text)
    code = mk_docker_opts.main(["-f", str(src), "-d", str(dst), *flags], environ={}, route_table=lambda: "")
    assert code in (0, 1, 2)
    out = capsys.readouterr()
    if code != 0:
        assert out.err.strip(), "a failure always says why"
