"""Go ``encoding/json``'s rule for matching object keys to struct fields: the one copy of it.

Why it exists: operators and Go flannel nodes write JSON that Go decodes, and Go's decoder is
lenient about key case, so ``{"network": ...}``, ``{"publicip": ...}`` or ``{"SubnetFile": ...}``
must mean here what they mean to Go flannel (network config, lease values, CNI netconf). The rule:

- a key names the field spelled exactly like it, else the first field (in declaration order) whose
  name is equal under Go's case folding (``foldName``: ASCII letters upper-cased, any other rune
  through ``unicode.ToUpper(unicode.ToLower(r))`` with Unicode's *simple* one-rune mappings, so
  U+017F (long s) and U+212A (Kelvin sign) match ``s`` and ``k``, U+0131 (dotless i) and U+0130
  (I with dot) match ``i``, and U+00DF (sharp s) does not match ``ss``);
- every key of an object is decoded in order, so when several keys name one field the last wins;
- ``null`` into a string, bool or number field leaves it as it was (``null_is_noop``); into a
  pointer, map, slice or interface it sets nil (``None`` here).

Pure functions and one small immutable class; the callers keep their own type checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Fields", "fold", "lookup"]


def _fold_char(c: str) -> str:
    """One rune through Go's ``unicode.ToUpper(unicode.ToLower(r))`` (simple case mappings)."""
    lower = c.lower()
    if len(lower) != 1:  # only U+0130 "İ" has a longer full lowercase; its simple one is "i"
        lower = "i" if c == "\u0130" else c
    upper = lower.upper()
    if len(upper) == 1:
        return upper
    title = lower.title()  # Greek letters with ypogegrammeni: the simple uppercase is the titlecase
    return title if len(title) == 1 else lower  # e.g. "ß": no simple uppercase, Go keeps the rune


def fold(name: str) -> str:
    """Go's ``foldName``: two keys match case-insensitively iff their folds are equal."""
    if name.isascii():
        return name.upper()
    return "".join(c.upper() if c.isascii() else _fold_char(c) for c in name)


class Fields:
    """A Go struct's JSON field names, and which of them an object key decodes into."""

    __slots__ = ("_exact", "_folded", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._exact = frozenset(self.names)
        self._folded: dict[str, str] = {}
        for name in self.names:
            self._folded.setdefault(fold(name), name)  # Go: the first field with that fold

    def match(self, key: str) -> str | None:
        """The field Go's decoder stores ``key``'s value in: exact match, else case-insensitive."""
        if key in self._exact:
            return key
        return self._folded.get(fold(key))


def lookup(
    obj: Mapping[str, Any] | Iterable[tuple[str, Any]],
    name: str,
    default: Any = None,
    *,
    null_is_noop: bool = False,
) -> Any:
    """The value Go decodes into field ``name`` of a struct whose other fields fold differently.

    ``obj`` is a decoded JSON object (a dict, or its (key, value) pairs when duplicate keys must
    keep their order). Every key matching ``name`` is applied in order, so the last one wins;
    ``default`` when none does. With ``null_is_noop`` a ``null`` value is skipped, as Go does for
    string, bool and number fields.
    """
    items = obj.items() if isinstance(obj, Mapping) else obj
    folded, found = fold(name), default
    for key, value in items:
        if (key == name or fold(key) == folded) and not (null_is_noop and value is None):
            found = value
    return found
