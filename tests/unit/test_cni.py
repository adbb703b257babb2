"""The CNI plugin without root: flannel's golden delegates (docs/compatibility.md#cni, flannel_linux_test.go),
every bad input as SPEC error JSON, version negotiation, and the command flow against a fake delegate."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyflannel.cli.cni import main
from pyflannel.core.cni import (
    CniError,
    FlannelEnv,
    GoStruct,
    NetConf,
    check_version,
    parse_flannel_env,
    parse_netconf,
    render_delegate,
    render_go_json,
    render_version_info,
    with_route_gateways,
)
from pyflannel.core.errors import FlannelError
from pyflannel.core.subnetenv import parse_subnet_env

V4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n"
        "FLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")
TWO_NETS = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" \
           "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
INPUT_ROUTES = [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}]


def env_of(text: str) -> FlannelEnv:
    return parse_flannel_env(parse_subnet_env(text), "subnet.env")


def delegate(text: str, **conf: Any) -> bytes:
    raw = json.dumps({"name": "cni-flannel", "type": "flannel", **conf}).encode()
    return render_go_json(render_delegate(parse_netconf(raw), env_of(text)))


# ---- golden output --------------------------------------------------------------------------------


def test_golden_ipv4_byte_for_byte():
    assert delegate(V4) == (
        b'{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],'
        b'"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}')


def test_golden_ipv6_dual_stack_and_two_networks():
    assert json.loads(delegate(V6))["ipam"] == {
        "ranges": [[{"subnet": "fc00::/64"}]], "routes": [{"dst": "fc00::/48"}], "type": "host-local"}
    assert json.loads(delegate(DUAL))["ipam"] == {
        "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
        "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}], "type": "host-local"}
    assert json.loads(delegate(TWO_NETS))["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]


def test_input_ipam_keeps_type_unknown_keys_and_routes_first():
    got = json.loads(delegate(DUAL, ipam={"type": "my-ipam", "unknown-param": "unknown-value",
                                          "routes": INPUT_ROUTES}))
    assert got["ipam"] == {"type": "my-ipam", "unknown-param": "unknown-value",
                           "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
                           "routes": [*INPUT_ROUTES, {"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]}
    assert json.loads(delegate(V4, ipam={"routes": INPUT_ROUTES}))["ipam"]["type"] == "host-local"


def test_routes_are_cni_route_structs_in_field_order():
    routes = [{"Scope": 0, "GW": "10.1.17.20", "dst": "10.96.0.5/12", "mtu": 0, "priority": 7, "x": 1}]
    assert b'"routes":[{"dst":"10.96.0.5/12","gw":"10.1.17.20","priority":7,"scope":0},' in \
        delegate(V4, ipam={"routes": routes})


def test_user_values_win_and_cni_version_runtime_config_are_copied():
    got = json.loads(delegate(V4, cniVersion="0.3.1", runtimeConfig={"portMappings": []},
                              delegate={"type": "ipvlan", "mtu": 1400, "ipMasq": True, "cniVersion": "9"}))
    assert got == {"cniVersion": "0.3.1", "ipMasq": True, "mtu": 1400, "name": "cni-flannel", "type": "ipvlan",
                   "runtimeConfig": {"portMappings": []}, "ipam": got["ipam"]}  # no isGateway: not a bridge
    manifest = json.loads(delegate(V4.replace("IPMASQ=true", "IPMASQ=false"),
                                   delegate={"hairpinMode": True, "isDefaultGateway": True}))
    assert manifest["ipMasq"] is True and manifest["hairpinMode"] and manifest["isDefaultGateway"]


def test_netconf_defaults_and_go_field_matching():
    conf = parse_netconf(b'{"name":"cni-flannel","type":"flannel"}')
    assert (conf.subnet_file, conf.data_dir) == ("/run/flannel/subnet.env", "/var/lib/cni/flannel")
    conf = parse_netconf(b'{"Name":"n","SUBNETFILE":"/a","subnetFile":null,"delegate":{"a":1},"Delegate":{"b":2}}')
    assert conf == NetConf(name="n", subnet_file="/a", delegate={"a": 1, "b": 2})


def test_go_json_encoding():
    value = {"b": [1.5, 1e21, 1e20, 1e-7, 2**63, -0.0, 3], "a": "<&>\u2028\x01\b\ud800é", "c": GoStruct(z=1, a=None)}
    assert render_go_json(value) == ('{"a":"\\u003c\\u0026\\u003e\\u2028\\u0001\\b\ufffdé","b":[1.5,1e+21,'
                                     '100000000000000000000,1e-7,9223372036854776000,-0,3],"c":{"z":1,"a":null}}'
                                     ).encode()


# ---- bad input ------------------------------------------------------------------------------------


def test_subnet_env_missing_keys_are_named_and_retryable():
    with pytest.raises(CniError) as err:
        env_of("foo=bar\n")
    assert err.value.code == 11
    assert "subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, " \
           "FLANNEL_MTU, FLANNEL_IPMASQ. Check the flannel pod log for this node." in err.value.msg
    with pytest.raises(CniError, match=r"subnet\.env is missing FLANNEL_MTU, FLANNEL_IPMASQ\. Check"):
        env_of("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n")  # half-written


@pytest.mark.parametrize("text", ["FLANNEL_MTU=-1", "FLANNEL_MTU=99999999999", "FLANNEL_NETWORK=10.1.0.0",
                                  "FLANNEL_SUBNET=10.1.17.1/33", "FLANNEL_NETWORK=10.1.0.0/16,", "FLANNEL_SUB"])
def test_subnet_env_bad_values(tmp_path: Path, text: str):
    (tmp_path / "bad.env").write_text(V4 + text + "\n")
    out = run(tmp_path, "ADD", {"name": "n", "subnetFile": str(tmp_path / "bad.env")})
    assert out["code"] == 11 and "failed to load flannel 'subnet.env' file" in out["msg"]


@pytest.mark.parametrize(("delegate_conf", "code", "msg"), [
    ({"name": "x"}, 7, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
    ({"ipam": {}}, 7, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ({"type": 5}, 7, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ({"type": "no-such-plugin"}, 7, 'failed to find plugin "no-such-plugin" in path ['),
    ({"type": "../../bin/sh"}, 7, "invalid delegate plugin type '../../bin/sh'"),
])
def test_bad_delegate(tmp_path: Path, delegate_conf: dict[str, Any], code: int, msg: str):
    out = run(tmp_path, "ADD", {"name": "n", "cniVersion": "1.0.0", "delegate": delegate_conf})
    assert out["code"] == code and out["msg"].startswith(msg) and out["cniVersion"] == "1.0.0"
    assert not (tmp_path / "data").exists()


def test_missing_subnet_env(tmp_path: Path):
    out = run(tmp_path, "ADD", {"name": "n", "subnetFile": str(tmp_path / "nope")})
    assert out["code"] == 11 and f"open {tmp_path}/nope: no such file or directory" in out["msg"]


@pytest.mark.parametrize(("stdin", "code"), [(b"", 6), (b"[]", 6), (b'{"name": 1}', 7), (b"{}", 7),
                                             (b'{"name":"a b"}', 7), (b'{"name":"n","delegate":[]}', 7),
                                             (b'{"name":"n","x":NaN}', 6), (b"[" * 5000, 6)])
def test_bad_netconf(tmp_path: Path, stdin: bytes, code: int):
    assert run(tmp_path, "ADD", stdin=stdin)["code"] == code


@pytest.mark.parametrize(("env", "code", "msg"), [
    ({"CNI_COMMAND": "FOO"}, 4, "unknown CNI_COMMAND: FOO"),
    ({"CNI_COMMAND": "ADD"}, 4, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "../x", "CNI_IFNAME": "eth0", "CNI_PATH": "/"}, 4,
     "invalid characters in containerID"),
])
def test_bad_environment(env: dict[str, str], code: int, msg: str):
    out = io.BytesIO()
    assert main(env, io.BytesIO(b'{"name":"n"}'), out, lambda _: None) == 1
    assert json.loads(out.getvalue())["code"] == code and json.loads(out.getvalue())["msg"] == msg


# ---- versions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "version", "code"), [
    ("ADD", "", None), ("ADD", "0.3.1", None), ("DEL", "1.1.0", None), ("ADD", "2.0.0", 1), ("ADD", "1.0", 1),
    ("CHECK", "0.3.1", 1), ("CHECK", "0.4.0", None), ("GC", "1.0.0", 1), ("STATUS", "1.1.0", None),
    ("CHECK", "x.y", 6), ("GC", "1.2.3.4", 6)])
def test_version_negotiation(command: str, version: str, code: int | None):
    if code is None:
        check_version(command, version)
    else:
        with pytest.raises(CniError) as err:
            check_version(command, version)
        assert err.value.code == code


def test_version_command():
    out = io.BytesIO()
    assert main({"CNI_COMMAND": "VERSION"}, io.BytesIO(b'{"cniVersion":"0.4.0"}'), out) == 0
    assert json.loads(out.getvalue()) == {"cniVersion": "0.4.0", "supportedVersions": [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert json.loads(render_version_info("9.9.9"))["cniVersion"] == "1.1.0"
    logged: list[str] = []
    assert main({}, io.BytesIO(), io.BytesIO(), logged.append) == 0 and "flannel" in logged[0]


# ---- the command flow, with a fake delegate ---------------------------------------------------------

FAKE = """#!{python}
import json, os, sys
body = sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"cmd": os.environ["CNI_COMMAND"], "id": os.environ.get("CNI_CONTAINERID"), "stdin": body}})
            + "\\n")
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "fail":
    print(json.dumps({{"code": 7, "msg": "bridge says no", "details": "because"}})); sys.exit(1)
if mode == "v1.1" and os.environ["CNI_COMMAND"] == "VERSION":
    print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}}))
if mode == "garbage":
    print("panic: oops", file=sys.stderr); sys.exit(2)
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({{"cniVersion": "1.0.0", "ips": [{{"address": "10.1.17.2/24"}}]}}))
"""


def run(tmp: Path, command: str, conf: dict[str, Any] | None = None, stdin: bytes | None = None,
        mode: str = "ok", cid: str = "c1") -> Any:
    """One plugin run in-process; the parsed stdout (None if empty)."""
    plugins = tmp / "plugins"
    if not plugins.exists():
        plugins.mkdir()
        (plugins / "bridge").write_text(FAKE.format(python=sys.executable))
        (plugins / "bridge").chmod(0o755)
        (tmp / "subnet.env").write_text(V4)
    conf = {"subnetFile": str(tmp / "subnet.env"), "dataDir": str(tmp / "data"), **(conf or {})}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": f"/nonexistent:{plugins}", "FAKE_LOG": str(tmp / "calls"), "FAKE_MODE": mode}
    out = io.BytesIO()
    rc = main(env, io.BytesIO(json.dumps(conf).encode() if stdin is None else stdin), out, lambda _: None)
    parsed = json.loads(out.getvalue()) if out.getvalue() else None
    assert (rc == 1) == (isinstance(parsed, dict) and "code" in parsed)
    return parsed


def calls(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


CONF = {"name": "cni-flannel", "cniVersion": "1.0.0"}


def test_add_saves_the_delegate_and_returns_its_result(tmp_path: Path):
    assert run(tmp_path, "ADD", CONF) == {"cniVersion": "1.0.0", "ips": [{"address": "10.1.17.2/24"}]}
    saved = tmp_path / "data" / "c1"
    assert saved.read_bytes() == delegate(V4, cniVersion="1.0.0")
    assert calls(tmp_path) == [{"cmd": "ADD", "id": "c1", "stdin": saved.read_text()}]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(saved.parent.stat().st_mode) == 0o700


def test_del_replays_the_saved_delegate_and_is_idempotent(tmp_path: Path):
    run(tmp_path, "ADD", CONF)
    saved = (tmp_path / "data" / "c1").read_text()
    assert run(tmp_path, "DEL", CONF) is None and run(tmp_path, "DEL", CONF) is None
    assert [c["cmd"] for c in calls(tmp_path)] == ["ADD", "DEL"] and calls(tmp_path)[1]["stdin"] == saved
    assert not (tmp_path / "data" / "c1").exists()
    assert run(tmp_path, "DEL", CONF, cid="never-added") is None


def test_failed_del_keeps_the_scratch_file_for_a_retry(tmp_path: Path):
    run(tmp_path, "ADD", CONF)
    assert run(tmp_path, "DEL", CONF, mode="fail") == {
        "cniVersion": "1.0.0", "code": 7, "msg": "bridge says no", "details": "because"}
    out = run(tmp_path, "DEL", CONF, mode="garbage")
    assert out["code"] == 999 and "exit status 2" in out["msg"] and "panic: oops" in out["details"]
    assert (tmp_path / "data" / "c1").exists()
    assert run(tmp_path, "DEL", CONF) is None and not (tmp_path / "data" / "c1").exists()


def test_del_of_an_unreadable_scratch_file_succeeds_and_keeps_it(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c1").write_text("{not json")
    assert run(tmp_path, "DEL", CONF) is None and (tmp_path / "data" / "c1").exists()


def test_check_delegates_with_prev_result(tmp_path: Path):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.17.2/24", "gateway": "10.1.17.1"}],
            "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]}
    assert run(tmp_path, "CHECK", {**CONF, "prevResult": prev})["code"] == 3  # never added
    run(tmp_path, "ADD", CONF)
    assert run(tmp_path, "CHECK", {**CONF, "prevResult": prev}) is None
    sent = json.loads(calls(tmp_path)[-1]["stdin"])
    assert sent["prevResult"]["routes"] == [{"dst": "10.1.0.0/16", "gw": "10.1.17.1"}, {"dst": "fc00::/48"}]
    os.remove(tmp_path / "subnet.env")
    assert run(tmp_path, "CHECK", {**CONF, "prevResult": prev})["code"] == 11
    assert run(tmp_path, "CHECK", {**CONF, "cniVersion": "0.3.1"})["code"] == 1


def test_gc_and_status(tmp_path: Path):
    new = {**CONF, "cniVersion": "1.1.0"}
    assert run(tmp_path, "GC", new) is None and run(tmp_path, "STATUS", new) is None
    assert [c["cmd"] for c in calls(tmp_path)] == ["VERSION"]  # the fake speaks no CNI 1.1.0: STATUS not sent
    assert run(tmp_path, "STATUS", new, mode="v1.1") is None
    assert [c["cmd"] for c in calls(tmp_path)][1:] == ["VERSION", "STATUS"]
    assert run(tmp_path, "STATUS", {**new, "delegate": {"type": "nope"}})["code"] == 50
    os.remove(tmp_path / "subnet.env")
    assert run(tmp_path, "STATUS", new)["code"] == 50


# ---- properties -----------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8), lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
FIELDS = st.sampled_from(["name", "Name", "cniVersion", "type", "subnetFile", "dataDir", "ipam", "delegate",
                          "runtimeConfig", "prevResult", "dns", "capabilities", "other"])
IPAM = st.fixed_dictionaries({}, optional={"type": JSON, "routes": st.lists(
    st.dictionaries(st.sampled_from(["dst", "gw", "mtu", "table", "DST"]), JSON | st.sampled_from(
        ["10.2.0.0/16", "fc00::1/64", "10.1.17.20", "::1"]), max_size=3), max_size=3) | JSON})


@settings(max_examples=300)
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | st.dictionaries(FIELDS, JSON | IPAM, max_size=6).map(lambda v: json.dumps(v).encode()))
def test_any_stdin_is_a_netconf_or_a_cni_error(data: bytes):
    try:
        conf = parse_netconf(data)
    except CniError as err:
        assert isinstance(err, FlannelError) and err.code in (6, 7) and err.msg
        return
    try:
        rendered = render_go_json(render_delegate(conf, env_of(DUAL)))
    except CniError as err:
        assert err.code == 7
        return
    assert json.loads(rendered)["name"] == conf.name


@given(st.dictionaries(st.sampled_from(["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                                        "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]),
                       st.text(max_size=20) | st.sampled_from(["10.0.0.0/8", "fc00::1/64", "1472", "true"])))
def test_any_subnet_env_values_are_an_env_or_a_retryable_error(values: dict[str, str]):
    try:
        parse_flannel_env(values)
    except CniError as err:
        assert err.code == 11


@example({"": [{}, {"gateway": 5}, {"gateway": "::1"}, []]})
@given(JSON)
def test_go_json_round_trips_and_route_gateways_never_crash(value: Any):
    def numbers_as_floats(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int | float):
            return float(v)
        return [numbers_as_floats(x) for x in v] if isinstance(v, list) else {
            k: numbers_as_floats(x) for k, x in v.items()}
    if not any("\ud800" <= c <= "\udfff" for c in json.dumps(value, ensure_ascii=False)):
        back = json.loads(render_go_json(value))
        assert numbers_as_floats(back) == numbers_as_floats(value)
    if isinstance(value, dict):
        with_route_gateways(value)
        with_route_gateways({"ips": value.get(""), "routes": [value, {"dst": "10.0.0.0/8"}]})
