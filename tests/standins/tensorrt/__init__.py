"""Stand-in for TensorRT's Python bindings (tests only; see tests/standins/README.md).

The classes and members edgevit calls, with the real bindings' behaviour where it matters: the default ``Logger``
prints to stdout, ``create_timing_cache`` may return None, ``set_input_shape`` returns False outside the profile,
``build_serialized_network`` returns None when the parser saw nothing. The "engine" runs the ONNX with ONNX Runtime
on the CPU, or returns noise with ``STANDIN_TRT_ENGINE=broken``."""

import ctypes
import enum
import json
import os
import sys

import numpy as np

__version__ = os.environ.get("STANDIN_TRT_VERSION", "10.3.0")
_MAGIC = b"STANDIN-TENSORRT-ENGINE\n"


# --------------------------------------------------------------------------------------------------- logging
class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                      Severity.INFO, Severity.VERBOSE)

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:
        raise NotImplementedError


class Logger(ILogger):
    """The binding's default logger: like TensorRT's, it prints what passes its level to stdout."""

    def __init__(self, min_severity=ILogger.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity, msg) -> None:
        if severity <= self.min_severity:
            sys.stdout.write(f"[TRT] [W] {msg}\n")


def _warn(logger, msg: str) -> None:
    logger.log(ILogger.WARNING, msg)


# --------------------------------------------------------------------------------------------------- enums
class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 3
    OBEY_PRECISION_CONSTRAINTS = 10


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


float32 = "float32"


class IProfiler:
    def __init__(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------- builder
class _Layer:
    def __init__(self, name: str) -> None:
        self.name, self.precision, self.num_outputs, self.output_types = name, None, 1, {}

    def set_output_type(self, i: int, t) -> None:
        self.output_types[i] = t


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx, self.layers = flags, None, []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes) -> bool:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(bytes(model), providers=["CPUExecutionProvider"])
        except Exception as e:
            self.errors.append(f"ModelImporter: failed to parse the ONNX model ({str(e).splitlines()[0]})")
            return False
        self.network.onnx = bytes(model)
        try:
            import onnx

            names = [n.name for n in onnx.load_from_string(bytes(model)).graph.node]
        except ImportError:  # an old Python's venv with ONNX Runtime alone
            names = [f"node{i}" for i in range(len(session.get_inputs()) + 8)]
        self.network.layers = [_Layer(n) for n in names]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes[name] = (list(lo), list(opt), list(hi))


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags, self.profiles, self.cache = set(), [], None
        self.default_device_type, self.DLA_core, self.profiling_verbosity = DeviceType.GPU, -1, None

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.workspace = size

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes):
        if os.environ.get("STANDIN_TRT_TIMING_CACHE") == "none":
            return None  # the binding documents that this may be None
        return _TimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments (cache is None)")
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class Builder:
    def __init__(self, logger) -> None:
        self.logger = logger
        self.num_DLA_cores = int(os.environ.get("STANDIN_TRT_DLA_CORES", "2"))
        _warn(logger, "Builder: the CUDA lazy loading is not enabled (stand-in warning)")

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        if network.onnx is None or not config.profiles:
            return None
        (name, (lo, opt, hi)), = config.profiles[0].shapes.items()
        meta = {"input": name, "min": lo, "opt": opt, "max": hi,
                "layers": [lay.name for lay in network.layers][:64]}
        return _MAGIC + json.dumps(meta).encode() + b"\n" + network.onnx


# --------------------------------------------------------------------------------------------------- runtime
class Runtime:
    def __init__(self, logger) -> None:
        self.logger, self.DLA_core = logger, -1
        _warn(logger, "Runtime: using an engine plan file across different models of devices (stand-in warning)")

    def deserialize_cuda_engine(self, blob: bytes):
        blob = bytes(blob)
        if not blob.startswith(_MAGIC):
            return None
        header, onnx_bytes = blob[len(_MAGIC):].split(b"\n", 1)
        return ICudaEngine(json.loads(header), onnx_bytes)


class ICudaEngine:
    def __init__(self, meta: dict, onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        self.meta = meta
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name
        self.classes = int(self.session.get_outputs()[0].shape[1])

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return (self.meta["input"], self.output)[i]

    def get_tensor_mode(self, name: str):
        return TensorIOMode.INPUT if name == self.meta["input"] else TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name: str, profile: int):
        return self.meta["min"], self.meta["opt"], self.meta["max"]

    def create_execution_context(self):
        return IExecutionContext(self)

    def create_engine_inspector(self):
        return IEngineInspector(self)


class IEngineInspector:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine, self.execution_context = engine, None

    def get_engine_information(self, fmt) -> str:
        layers = [{"Name": n or f"layer{i}", "LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Int8"}]}
                  for i, n in enumerate(self.engine.meta["layers"])]
        return json.dumps({"Layers": layers, "Bindings": [self.engine.meta["input"], self.engine.output]})


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine, self.shape, self.addresses, self.profiler = engine, None, {}, None

    def set_input_shape(self, name: str, shape) -> bool:
        m = self.engine.meta
        shape = list(shape)
        if len(shape) != len(m["min"]) or any(not lo <= s <= hi for lo, s, hi in zip(m["min"], shape, m["max"])):
            return False  # as TensorRT does for a shape outside the profile
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str):
        if name == self.engine.meta["input"]:
            return tuple(self.shape)
        return (self.shape[0], self.engine.classes)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        count = int(np.prod(self.shape))
        x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses[self.engine.meta["input"]]))
        x = x.reshape(self.shape).copy()
        if os.environ.get("STANDIN_TRT_ENGINE") == "broken":
            y = np.random.default_rng(0).standard_normal((self.shape[0], self.engine.classes)).astype(np.float32) * 50
        else:
            y = self.engine.session.run(None, {self.engine.meta["input"]: x})[0].astype(np.float32)
        out = np.ctypeslib.as_array((ctypes.c_float * y.size).from_address(self.addresses[self.engine.output]))
        out[:] = y.reshape(-1)
        if self.profiler is not None:
            for name in self.engine.meta["layers"][:3]:
                self.profiler.report_layer_time(name, 0.0)
        return True
