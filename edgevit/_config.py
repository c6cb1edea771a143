"""Strict TOML loading for the declarative files (targets, calibration recipes): unknown keys and wrong types are
errors that name the file and the key, never silently ignored."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

from edgevit.errors import TargetError, reading

if sys.version_info >= (3, 11):
    import tomllib  # novermin
else:  # Python 3.8-3.10 (JetPack 5 and 6): the same parser, from PyPI
    import tomli as tomllib

__all__ = ["tomllib", "shipped_dir", "resolve_named", "load_toml_dataclass"]

# A field's annotation, as written (``from __future__ import annotations`` keeps it a string), names the type its
# TOML value must have. Read as text rather than evaluated: ``float | None`` and ``list[int]`` cannot be evaluated
# before Python 3.10 / 3.9, and the device runtime runs on 3.8.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple, "dict": dict}


def annotation_type(annotation) -> type | None:
    """The type a field's annotation asks for (``float | None`` → float, ``tuple[int, ...]`` → tuple), or None
    where it names none that TOML can hold (the dataclass's own checks then decide)."""
    if isinstance(annotation, type):
        return annotation
    parts = [a.strip() for a in str(annotation).split("|")]
    named = [a.split("[", 1)[0].strip() for a in parts if a not in ("None", "NoneType")]
    return _TYPES.get(named[0]) if len(named) == 1 else None


def shipped_dir(folder: str, error=TargetError, checkout: str | None = None) -> Path:
    """A folder of TOML files shipped with edgevit: ``<checkout or folder>/`` beside the package in a checkout (and
    editable installs), ``edgevit/_<folder>`` in a wheel."""
    here = Path(__file__).resolve().parent
    for d in (here.parent / (checkout or folder), here / f"_{folder}"):
        if d.is_dir() and any(d.glob("*.toml")):
            return d
    raise error(f"no {folder} files found beside {here}; the installation is incomplete, reinstall edgevit")


def resolve_named(folder: Path, name_or_path: str, kind: str) -> Path:
    """A shipped TOML by stem (``cpu-x86``) or a user's ``.toml`` path; an unknown name suggests the close ones."""
    from edgevit.errors import UnknownNameError

    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    known = {f.stem: f for f in folder.glob("*.toml") if not f.stem.startswith("_")}  # _*.toml: not a profile
    if name_or_path not in known:
        raise UnknownNameError(kind, name_or_path, known, hint="or a path to a .toml file")
    return known[name_or_path]


def load_toml_dataclass(cls, file: Path, error=TargetError, **extra):
    path = file
    with reading(str(path), error):
        raw = tomllib.loads(Path(path).read_text())
    raw.update(extra)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise error(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        want = annotation_type(fields[key].type)  # ``float | None``: TOML has no null, so the value's type
        if want is bool and not isinstance(value, bool) or want is int and isinstance(value, bool):
            raise error(f"{path}: {key} must be {want.__name__}, got {value!r}")
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
