"""The backend registry as data: name → the class that implements it (imported only when asked for, by
:func:`edgevit.backends.get_backend`). Target profiles check their ``backend`` against it without importing any."""

BACKENDS = {
    "openvino": "edgevit.backends.openvino.backend:OpenVINOBackend",
    "onnxruntime": "edgevit.backends.onnxruntime:ONNXRuntimeBackend",
    "tensorrt": "edgevit.backends.tensorrt.backend:TensorRTBackend",
}
