"""Strict TOML loading for the declarative files (targets, calibration recipes): unknown keys and wrong types are
errors that name the file and the key, never silently ignored."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from pathlib import Path

from edgevit.errors import TargetError


def load_toml_dataclass(cls, file: Path, error=TargetError, **extra):
    path = file
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise error(f"cannot read {path}: {e}") from None
    raw.update(extra)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise error(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        want = typing.get_origin(hints[key]) or hints[key]
        if want is float and isinstance(value, int):
            raw[key] = float(value)
        elif want in (list, tuple) and isinstance(value, list):
            raw[key] = tuple(value) if want is tuple else value
        elif isinstance(want, type) and not isinstance(value, want):
            raise error(f"{path}: {key} must be {want.__name__}, got {value!r}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{path}: missing required key(s) {', '.join(missing)}")
    return cls(**raw)
