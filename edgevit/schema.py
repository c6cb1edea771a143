"""Field checks for every reader of outside JSON (bundle manifests, Hugging Face configs, a device's answers, history
rows): each reader makes one :class:`Fields` with its own error, so every violation is that reader's one error naming
the field. Values are checked before any work uses them: types (a boolean is never an integer), ranges, finite
numbers, names from a closed set, and text that is one printable line (no control characters or line separators,
which would break ``labels.txt``, a shell line or a report row)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable

from edgevit.errors import EdgevitError

TENSORRT_VERSION = re.compile(r"\d+(\.\d+){0,3}")  # what a TensorRT version looks like: 10, 10.3, 8.5.2.2

_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean"}
# Unicode categories a one-line name may not hold: controls (\n, \f, \x1c...), line/paragraph separators (U+2028/9)
# that str.splitlines() splits on, unpaired surrogates (undecodable file names), unassigned code points.
_BAD_CATEGORIES = {"Cc", "Zl", "Zp", "Cs", "Cn"}


def bad_char(text: str) -> str | None:
    """The first character of ``text`` that a one-line name may not hold (see ``_BAD_CATEGORIES``), else None."""
    for c in text:
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return c
    return None


def kind_name(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(_KIND_NAMES.get(k, k.__name__) for k in kinds))


class Fields:
    """Typed reads of a parsed JSON object; ``fail(field, why)`` makes the reader's one error."""

    def __init__(self, fail: Callable[[str, str], EdgevitError]) -> None:
        self.fail = fail

    def get(self, d: dict, key: str, where: str, kinds, optional: bool = False):
        field = f"{where}.{key}" if where else key
        if not isinstance(d, dict):
            raise self.fail(where or "(top level)", f"must be an object, not {type(d).__name__}")
        if key not in d:
            if optional:
                return None
            raise self.fail(field, "is missing")
        v = d[key]
        if optional and v is None:
            return None
        if isinstance(v, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise self.fail(field, f"must be {kind_name(kinds)}, not a boolean")
        if not isinstance(v, kinds):
            raise self.fail(field, f"must be {kind_name(kinds)}, not {type(v).__name__}")
        return v

    def int(self, d: dict, key: str, where: str, lo: int, hi: int, optional: bool = False):
        v = self.get(d, key, where, int, optional)
        if v is not None and not lo <= v <= hi:
            raise self.fail(f"{where}.{key}" if where else key, f"is {v}, outside {lo}..{hi}")
        return v

    def number(self, d: dict, key: str, where: str, lo: float = -math.inf, hi: float = math.inf,
               optional: bool = False, above: bool = False):
        """A finite number in ``lo..hi`` (``above``: strictly above ``lo``)."""
        v = self.get(d, key, where, (int, float), optional)
        if v is not None and (not math.isfinite(v) or v > hi or v < lo or (above and v == lo)):
            raise self.fail(f"{where}.{key}" if where else key,
                            f"is {v!r}, not a finite number {'above' if above else 'in'} {lo:g}..{hi:g}"
                            if math.isfinite(lo) else f"is {v!r}, not a finite number up to {hi:g}")
        return v

    def numbers(self, d: dict, key: str, where: str, n: int, positive: bool = False,
                optional: bool = False) -> list | None:
        v = self.get(d, key, where, list, optional)
        if v is None:
            return None
        ok = len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                 and (x > 0 or not positive) for x in v)
        if not ok:
            raise self.fail(f"{where}.{key}" if where else key,
                            f"must be {n} finite{' positive' if positive else ''} numbers, got {v!r}"[:200])
        return v

    def choice(self, d: dict, key: str, where: str, choices, optional: bool = False):
        v = self.get(d, key, where, str, optional)
        if v is not None and v not in choices:
            raise self.fail(f"{where}.{key}" if where else key, f"is {v[:80]!r}, not one of {', '.join(choices)}")
        return v

    def text(self, d: dict, key: str, where: str, optional: bool = False, max_len: int = 1000):
        """A non-empty one-line string without control characters (see :func:`bad_char`)."""
        v = self.get(d, key, where, str, optional)
        if v is not None:
            self.check_text(v, f"{where}.{key}" if where else key, max_len)
        return v

    def check_text(self, v: str, field: str, max_len: int = 1000) -> str:
        c = bad_char(v) if isinstance(v, str) else None
        if not isinstance(v, str) or not v or len(v) > max_len or c is not None:
            why = (f"holds the control character U+{ord(c):04X}" if c is not None else
                   f"must be a non-empty string of at most {max_len} characters")
            raise self.fail(field, why)
        return v
