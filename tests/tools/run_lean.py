"""Run the edgevit CLI as a board's lean runtime would: any import of a build-side module (torch, NNCF, timm, onnx,
OpenVINO, ONNX Runtime, ...) made by edgevit's own code fails, as it would where those are not installed; the
stand-ins of tests/standins may import what they like. Every blocked import is also written to the file named by
EDGEVIT_TEST_BLOCKED_LOG (the test asserts that none was tried: a caught ImportError must not hide one).

usage: python run_lean.py MODULE[,MODULE...] edgevit-args..."""

import importlib.abc
import os
import sys


class BuildSideBlocker(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: set) -> None:
        self.blocked = blocked

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in self.blocked:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer == "edgevit" or importer.startswith("edgevit."):
            log = os.environ.get("EDGEVIT_TEST_BLOCKED_LOG")
            if log:
                with open(log, "a") as f:
                    f.write(f"{importer} imported {name}\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: build side)", name=name)
        return None


def _record_modules() -> None:
    log = os.environ.get("EDGEVIT_TEST_MODULES_LOG")
    if log:
        with open(log, "a") as f:
            f.write("".join(f"{m}\n" for m in sorted(sys.modules) if m == "edgevit" or m.startswith("edgevit.")))


if __name__ == "__main__":
    import atexit

    sys.meta_path.insert(0, BuildSideBlocker(set(sys.argv[1].split(","))))
    atexit.register(_record_modules)
    from edgevit.cli import main

    sys.exit(main(sys.argv[2:]))
