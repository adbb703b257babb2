"""Go encoding/json key matching (core/gojson.py): exact field first, else Go's case folding; last key wins."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core import gojson


def test_fold_ascii_is_upper_case() -> None:
    assert gojson.fold("PublicIPv6") == gojson.fold("publicipV6") == "PUBLICIPV6"
    assert gojson.fold("") == ""
    assert gojson.fold("a-b_c 1") == "A-B_C 1"


def test_fold_follows_go_simple_case_mappings() -> None:
    # Go: unicode.ToUpper(unicode.ToLower(r)) for every rune that is not ASCII
    assert gojson.fold("\u212a") == "K"  # Kelvin sign
    assert gojson.fold("\u017f") == "S"  # long s
    assert gojson.fold("\u0130") == "I"  # I with dot above: simple lowercase is "i"
    assert gojson.fold("\u0131") == "I"  # dotless i: simple uppercase is "I"
    assert gojson.fold("\u00df") == "\u00df"  # sharp s has no simple uppercase: never "SS"
    assert gojson.fold("\u1f80") == gojson.fold("\u1f88") == "\u1f88"  # ypogegrammeni: one rune, not two
    assert gojson.fold("\u00e9t\u00c9") == "\u00c9T\u00c9"


@given(st.text(max_size=12))
def test_fold_is_idempotent_and_keeps_rune_count(text: str) -> None:
    once = gojson.fold(text)
    assert gojson.fold(once) == once
    assert len(once) == len(text)  # Go folds rune by rune; a rune never becomes two


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=12),
       st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
def test_ascii_keys_match_iff_equal_ignoring_case(a: str, b: str) -> None:
    assert (gojson.fold(a) == gojson.fold(b)) == (a.lower() == b.lower())


def test_fields_prefer_the_exact_spelling() -> None:
    fields = gojson.Fields(["name", "Name", "Type"])
    assert fields.match("Name") == "Name"
    assert fields.match("name") == "name"
    assert fields.match("NAME") == "name"  # no exact field: the first one with that fold
    assert fields.match("type") == "Type"
    assert fields.match("\u017fubnet") is None
    assert fields.match("nam") is None
    assert fields.names == ("name", "Name", "Type")


def test_fields_match_folded_unicode_keys() -> None:
    fields = gojson.Fields(["SubnetLen", "Kind"])
    assert fields.match("\u017fubnetlen") == "SubnetLen"
    assert fields.match("\u212aIND") == "Kind"
    assert fields.match("\u0131NDex") is None


def test_lookup_last_matching_key_wins() -> None:
    obj = {"PublicIP": "1.2.3.4", "publicip": "5.6.7.8", "Other": 1}
    assert gojson.lookup(obj, "PublicIP") == "5.6.7.8"
    assert gojson.lookup(obj, "BackendType") is None
    assert gojson.lookup(obj, "BackendType", "") == ""


def test_lookup_on_pairs_keeps_duplicate_keys_in_order() -> None:
    pairs = [("Port", 1), ("port", 2), ("PORT", 3), ("VNI", 4)]
    assert gojson.lookup(pairs, "Port") == 3
    assert gojson.lookup(list(reversed(pairs)), "Port") == 1


def test_lookup_null() -> None:
    obj = [("Port", 7890), ("port", None)]
    assert gojson.lookup(obj, "Port") is None  # a pointer/map/interface field: null sets nil
    assert gojson.lookup(obj, "Port", 8285, null_is_noop=True) == 7890  # a number field: unchanged
    assert gojson.lookup([("Port", None)], "Port", 8285, null_is_noop=True) == 8285
