"""Go ``flag``-style parsing and flanneld's option checks (docs/compatibility.md#flags)."""

from __future__ import annotations

import os

import pytest

from pyflannel import __version__
from pyflannel.cli.flags import Flag, FlagSet, HelpRequested, UsageError
from pyflannel.cli.flanneld import FLANNELD_FLAGS, build_options, main

FLAGS = [
    Flag("etcd-endpoints", "str", "http://127.0.0.1:4001,http://127.0.0.1:2379", "endpoints"),
    Flag("etcd-prefix", "str", "/coreos.com/network", "prefix"),
    Flag("iface", "list", [], "interface; repeatable"),
    Flag("ip-masq", "bool", False, "masquerade"),
    Flag("set-node-network-unavailable", "bool", True, "a bool defaulting to true"),
    Flag("subnet-lease-renew-margin", "int", 60, "minutes"),
    Flag("v", "int", 0, "verbosity"),
]


def fs() -> FlagSet:
    return FlagSet("flanneld", FLAGS, env_prefix="FLANNELD")


def parse(*argv: str, env: dict[str, str] | None = None):
    return fs().parse(list(argv), env or {})


# --- spellings ---------------------------------------------------------------------------------


def test_defaults():
    v, rest = parse()
    assert v == {
        "etcd-endpoints": "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "etcd-prefix": "/coreos.com/network",
        "iface": [],
        "ip-masq": False,
        "set-node-network-unavailable": True,
        "subnet-lease-renew-margin": 60,
        "v": 0,
    }
    assert rest == []


@pytest.mark.parametrize(
    "argv",
    [
        ["-etcd-endpoints=http://10.0.0.1:2379"],
        ["--etcd-endpoints=http://10.0.0.1:2379"],
        ["-etcd-endpoints", "http://10.0.0.1:2379"],
        ["--etcd-endpoints", "http://10.0.0.1:2379"],
    ],
)
def test_value_spellings(argv):
    v, rest = parse(*argv)
    assert v["etcd-endpoints"] == "http://10.0.0.1:2379"
    assert rest == []


def test_value_may_contain_equals_and_start_with_dash():
    v, _ = parse("-etcd-prefix=/a=b", "-etcd-endpoints", "-weird")
    assert v["etcd-prefix"] == "/a=b"
    assert v["etcd-endpoints"] == "-weird"


def test_last_occurrence_wins_for_scalars():
    v, _ = parse("-etcd-prefix=/a", "--etcd-prefix", "/b")
    assert v["etcd-prefix"] == "/b"


def test_repeatable_flag():
    v, _ = parse("-iface", "a", "-iface", "b", "--iface=c")
    assert v["iface"] == ["a", "b", "c"]


def test_list_default_is_a_fresh_copy():
    v1, _ = parse()
    v1["iface"].append("x")
    v2, _ = parse()
    assert v2["iface"] == []
    assert FLAGS[2].default == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-ip-masq"], True),
        (["--ip-masq"], True),
        (["-ip-masq=true"], True),
        (["--ip-masq=false"], False),
        (["-ip-masq=0"], False),
        (["-ip-masq=1"], True),
        (["-ip-masq=F"], False),
        (["-ip-masq=T"], True),
        (["-ip-masq=TRUE"], True),
        (["-ip-masq=False"], False),
        (["-ip-masq", "-ip-masq=false"], False),
    ],
)
def test_bool_spellings(argv, expected):
    v, rest = parse(*argv)
    assert v["ip-masq"] is expected
    assert rest == []


def test_bool_defaulting_to_true_can_be_turned_off():
    v, _ = parse("--set-node-network-unavailable=false")
    assert v["set-node-network-unavailable"] is False


def test_bool_does_not_take_the_next_argument():
    v, rest = parse("-ip-masq", "false")
    assert v["ip-masq"] is True
    assert rest == ["false"]


@pytest.mark.parametrize("raw", ["yes", "no", "", "2", "on"])
def test_bad_bool(raw):
    with pytest.raises(UsageError, match="-ip-masq"):
        parse(f"-ip-masq={raw}")


@pytest.mark.parametrize(("raw", "value"), [("5", 5), ("-3", -3), ("+7", 7), ("0x10", 16), ("0", 0), ("1_000", 1000)])
def test_int_values(raw, value):
    v, _ = parse(f"-v={raw}")
    assert v["v"] == value


@pytest.mark.parametrize("raw", ["abc", "1.5", "", "5m", "0x", "--"])
def test_bad_int(raw):
    with pytest.raises(UsageError) as info:
        parse(f"-subnet-lease-renew-margin={raw}")
    assert "-subnet-lease-renew-margin" in str(info.value)


def test_bad_int_as_separate_argument():
    with pytest.raises(UsageError, match="not an integer"):
        parse("-v", "lots")


def test_int_parsing_matches_go():
    v, _ = parse("-v=010")
    assert v["v"] == 8
    with pytest.raises(UsageError):
        parse("-v= 60")


@pytest.mark.parametrize("argv", [["-bogus"], ["--bogus=1"], ["-etcd-endpoint=x"], ["-Ip-masq"]])
def test_unknown_flag(argv):
    with pytest.raises(UsageError, match="flag provided but not defined"):
        parse(*argv)


def test_missing_argument():
    with pytest.raises(UsageError, match="flag needs an argument: -etcd-prefix"):
        parse("-etcd-prefix")


@pytest.mark.parametrize("arg", ["-h", "--h", "-help", "--help"])
def test_help(arg):
    with pytest.raises(HelpRequested):
        parse("-v=1", arg)


def test_parsing_stops_at_first_positional_and_after_double_dash():
    v, rest = parse("-v=2", "extra", "-ip-masq")
    assert v["v"] == 2 and v["ip-masq"] is False
    assert rest == ["extra", "-ip-masq"]
    v, rest = parse("-ip-masq", "--", "-v=3")
    assert v["ip-masq"] is True and v["v"] == 0
    assert rest == ["-v=3"]
    _, rest = parse("-", "-v=1")
    assert rest == ["-", "-v=1"]


def test_interspersed_mode():
    v, rest = fs().parse(["a", "-v=2", "b", "--unknown", "-ip-masq"], {}, interspersed=True)
    assert v["v"] == 2 and v["ip-masq"] is True
    assert rest == ["a", "b", "--unknown"]


def test_usage_mentions_flags_and_env():
    text = fs().usage()
    assert "-etcd-endpoints string" in text
    assert "-subnet-lease-renew-margin int" in text
    assert "FLANNELD_ETCD_ENDPOINTS" in text


# --- environment -------------------------------------------------------------------------------


def test_env_applied_when_flag_absent():
    v, _ = parse(env={
        "FLANNELD_ETCD_ENDPOINTS": "http://10.9.9.9:2379",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
        "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE": "false",
    })
    assert v["etcd-endpoints"] == "http://10.9.9.9:2379"
    assert v["ip-masq"] is True
    assert v["subnet-lease-renew-margin"] == 30
    assert v["set-node-network-unavailable"] is False


def test_command_line_beats_env():
    v, _ = parse("-etcd-endpoints=http://cmd:2379", "--ip-masq=false", "-v", "1",
                 env={"FLANNELD_ETCD_ENDPOINTS": "http://env:2379", "FLANNELD_IP_MASQ": "true", "FLANNELD_V": "5"})
    assert v["etcd-endpoints"] == "http://cmd:2379"
    assert v["ip-masq"] is False
    assert v["v"] == 1


def test_env_for_repeatable_flag_gives_exactly_one_value():
    v, _ = parse(env={"FLANNELD_IFACE": "eth0,eth1"})
    assert v["iface"] == ["eth0,eth1"]
    v, _ = parse("-iface", "eth2", env={"FLANNELD_IFACE": "eth0"})
    assert v["iface"] == ["eth2"]


def test_empty_env_is_ignored_and_other_vars_too():
    v, _ = parse(env={"FLANNELD_ETCD_PREFIX": "", "FLANNEL_ETCD_PREFIX": "/x", "flanneld_etcd_prefix": "/y"})
    assert v["etcd-prefix"] == "/coreos.com/network"


def test_bad_env_value_names_the_variable():
    with pytest.raises(UsageError, match=r"\$FLANNELD_V"):
        parse(env={"FLANNELD_V": "loud"})
    with pytest.raises(UsageError, match=r"\$FLANNELD_IP_MASQ"):
        parse(env={"FLANNELD_IP_MASQ": "yes"})


def test_bad_env_value_is_harmless_when_flag_given():
    v, _ = parse("-v=1", env={"FLANNELD_V": "loud"})
    assert v["v"] == 1


def test_no_env_prefix_means_no_env():
    v, _ = FlagSet("x", FLAGS).parse([], {"FLANNELD_V": "4", "_V": "4"})
    assert v["v"] == 0


# --- flanneld ----------------------------------------------------------------------------------


def flanneld_values(*argv: str, env: dict[str, str] | None = None):
    values, rest = FlagSet("flanneld", FLANNELD_FLAGS, env_prefix="FLANNELD").parse(list(argv), env or {})
    assert rest == []
    return values


MARGIN_MSG = "Invalid subnet-lease-renew-margin option, out of acceptable range"


@pytest.mark.parametrize("margin", ["0", "1440", "-1", "100000"])
def test_renew_margin_out_of_range(margin):
    with pytest.raises(UsageError, match=MARGIN_MSG):
        build_options(flanneld_values(f"-subnet-lease-renew-margin={margin}"))


@pytest.mark.parametrize("margin", [1, 60, 1439])
def test_renew_margin_in_range(margin):
    opts = build_options(flanneld_values(f"--subnet-lease-renew-margin={margin}"))
    assert opts.renew_margin_min == margin


def test_build_options_maps_flags():
    opts = build_options(flanneld_values(
        "-etcd-endpoints=http://10.0.0.1:2379,,http://10.0.0.2:2379", "-etcd-prefix=/atomic.io/network",
        "-iface", "eth0", "-iface", "10.1.2.3", "-public-ip=198.18.0.11", "-ip-masq",
        "-subnet-file=/tmp/s.env", "-iptables-resync=7", "-etcd-username=u", "-etcd-password=p",
    ))
    assert opts.etcd.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert opts.etcd.prefix == "/atomic.io/network"
    assert opts.etcd.username == "u" and opts.etcd.password == "p"
    assert opts.ifaces == ("eth0", "10.1.2.3")
    assert opts.public_ip == "198.18.0.11"
    assert opts.ip_masq is True
    assert opts.subnet_file == "/tmp/s.env"
    assert opts.iptables_resync_s == 7.0
    assert opts.renew_margin_min == 60
    assert opts.lease_ttl_s == 86400


def test_build_options_defaults_match_flannel():
    opts = build_options(flanneld_values())
    assert opts.etcd.endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    assert opts.etcd.prefix == "/coreos.com/network"
    assert opts.subnet_file == "/run/flannel/subnet.env"


def test_build_options_kube_mode():
    opts = build_options(flanneld_values("-kube-subnet-mgr", "-kubeconfig-file=/k",
                                         "-kube-annotation-prefix=ex.com/fl"))
    assert opts.kube is not None and opts.kube.prefix == "ex.com/fl-" and opts.kube.kubeconfig == "/k"
    assert opts.kube.net_config_path == "/etc/kube-flannel/net-conf.json" and opts.kube.set_network_unavailable
    assert not [w for w in opts.unsupported if "kube" in w]
    assert build_options(flanneld_values()).kube is None


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["-subnet-lease-ttl=4"], "subnet-lease-ttl"),
        (["-iptables-resync=0"], "iptables-resync"),
        (["-kube-subnet-mgr", "-kube-annotation-prefix=a/b/c"], "kube-annotation-prefix"),
    ],
)
def test_build_options_rejects(argv, match):
    with pytest.raises(UsageError, match=match):
        build_options(flanneld_values(*argv))


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("FLANNELD_"):
            monkeypatch.delenv(name)


def test_main_version(clean_env, capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().err
    assert main(["-version"], {}) == 0


def test_main_help(capsys):
    assert main(["-h"], {}) == 0
    assert "-etcd-endpoints" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["-bogus"], ["--etcd-endpoints"], ["-v=loud"], ["-ip-masq=maybe"], ["stray"]],
)
def test_main_bad_flag_returns_2(argv, capsys):
    assert main(argv, {}) == 2
    err = capsys.readouterr().err
    assert err.startswith("flanneld: ")
    assert "flanneld -h" in err


@pytest.mark.parametrize("margin", ["0", "1440"])
def test_main_bad_margin_returns_2_with_flannels_message(margin, capsys):
    assert main([f"--subnet-lease-renew-margin={margin}"], {}) == 2
    assert MARGIN_MSG in capsys.readouterr().err
    assert main([], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": margin}) == 2
    assert MARGIN_MSG in capsys.readouterr().err


def test_main_bad_env_returns_2(capsys):
    assert main([], {"FLANNELD_IPTABLES_RESYNC": "soon"}) == 2
    assert "$FLANNELD_IPTABLES_RESYNC" in capsys.readouterr().err


def test_accepted_flags_that_do_nothing_say_so_at_start_up():
    assert build_options(flanneld_values()).unsupported == ()
    warnings = build_options(flanneld_values("-ip-blackhole-route", "-kubeconfig-file=/etc/k.conf", "-vmodule=x=2",
                                             "-set-node-network-unavailable=false")).unsupported
    assert len(warnings) == 4
    assert warnings[0].startswith("-ip-blackhole-route is not supported by pyflannel yet")
    assert "-kubeconfig-file has no effect without -kube-subnet-mgr (etcd mode)" in warnings
    assert "-set-node-network-unavailable has no effect without -kube-subnet-mgr (etcd mode)" in warnings
    assert any(w.startswith("-vmodule is accepted for compatibility") for w in warnings)
