"""The backend registry: name → the class that implements it, imported only when :func:`get_backend` asks for it
(backends plug in here, as entry points would). Target profiles check their ``backend`` against it without
importing any, and the bundle verifier asks a bundle's backend which files it loads without depending on the
backends' package."""

from __future__ import annotations

import importlib

BACKENDS = {
    "openvino": "edgevit.backends.openvino.backend:OpenVINOBackend",
    "onnxruntime": "edgevit.backends.onnxruntime:ONNXRuntimeBackend",
    "tensorrt": "edgevit.backends.tensorrt.backend:TensorRTBackend",
}


def get_backend(name: str):
    """The registered backend ``name`` (an :class:`edgevit.backends.Backend`), or one line naming the known ones."""
    if name not in BACKENDS:
        from edgevit.errors import UnknownNameError

        raise UnknownNameError("backend", name, BACKENDS)
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def require(backend) -> None:
    """One line where ``backend``'s library cannot run here."""
    ok, why = backend.available()
    if not ok:
        from edgevit.errors import BackendUnavailableError

        raise BackendUnavailableError(f"backend {backend.name} cannot run here: {why}")
