"""edgevit: Vision Transformers from PyTorch to validated INT8 on edge devices.

The library API (the CLI is a thin shell over the same functions)::

    import edgevit
    result = edgevit.build("vit-tiny-fmnist", data="fashion-mnist", weights="runs/vit/best.pt")
    model = edgevit.load(result.bundle)          # verified, through the bundle's own runtime
    model(pil_image_or_uint8_array, k=3)          # [Prediction(source, [(label, probability), ...])]

Names load on first use, so ``import edgevit`` on a device imports nothing of the build side (torch, NNCF, timm)."""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "build": "edgevit.build", "BuildResult": "edgevit.stages", "QATOptions": "edgevit.qat",
    "train": "edgevit.train", "TrainResult": "edgevit.train",
    "load": "edgevit.runtime.predict", "Predictor": "edgevit.runtime.predict", "Prediction": "edgevit.runtime.predict",
    "time_bundle": "edgevit.runtime.predict", "read_manifest": "edgevit.runtime.bundle",
    "EdgevitError": "edgevit.errors", "UsageError": "edgevit.errors", "BundleError": "edgevit.errors",
    "ValidationFailedError": "edgevit.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgevit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """``edgevit.build`` and ``edgevit.train`` are the functions even after their modules were imported: importing a
    submodule sets it as an attribute of the package, which would hide the function of the same name. The modules
    stay ``sys.modules["edgevit.build"]`` (``from edgevit.build import X`` works as ever; ``import edgevit.train as
    t`` gives the function: use ``importlib.import_module("edgevit.train")`` for the module)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable as sys.modules["edgevit.NAME"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
