"""Stand-in for cuda-python's ``cuda.bindings.runtime`` (tests only; see tests/standins/README.md). Calls return
``(cudaError_t, *values)`` as the real bindings do; "device" memory is host memory."""

import ctypes
import enum
import os


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


_ALLOCATED = {}  # address -> ctypes buffer


def _driver() -> int:
    return int(os.environ.get("STANDIN_CUDA_DRIVER", "13000"))


def _runtime() -> int:
    return int(os.environ.get("STANDIN_CUDA_RUNTIME", "13000"))


def _ok():
    return _driver() >= _runtime() // 1000 * 1000


def cudaGetErrorName(err):
    return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()


def cudaDriverGetVersion():
    return cudaError_t.cudaSuccess, _driver()


def cudaRuntimeGetVersion():
    return cudaError_t.cudaSuccess, _runtime()


def cudaGetDeviceCount():
    if not _ok():
        return cudaError_t.cudaErrorInsufficientDriver, 0
    return cudaError_t.cudaSuccess, int(os.environ.get("STANDIN_CUDA_DEVICES", "1"))


class cudaDeviceProp:
    def __init__(self) -> None:
        self.name = os.environ.get("STANDIN_CUDA_NAME", "Orin").encode() + b"\x00" * 8
        self.major, self.minor = (int(v) for v in os.environ.get("STANDIN_CUDA_CC", "8.7").split("."))
        self.multiProcessorCount = int(os.environ.get("STANDIN_CUDA_SMS", "16"))
        self.totalGlobalMem = int(float(os.environ.get("STANDIN_CUDA_GIB", "61.4")) * 2**30)


def cudaGetDeviceProperties(index):
    if not _ok():
        return cudaError_t.cudaErrorInsufficientDriver, None
    return cudaError_t.cudaSuccess, cudaDeviceProp()


def cudaStreamCreate():
    return cudaError_t.cudaSuccess, 1


def _alloc(nbytes):
    buf = ctypes.create_string_buffer(max(1, int(nbytes)))
    _ALLOCATED[ctypes.addressof(buf)] = buf
    return cudaError_t.cudaSuccess, ctypes.addressof(buf)


def cudaMallocHost(nbytes):
    return _alloc(nbytes)


def cudaMalloc(nbytes):
    return _alloc(nbytes)


def cudaFree(ptr):
    _ALLOCATED.pop(int(ptr), None)
    return (cudaError_t.cudaSuccess,)


cudaFreeHost = cudaFree


def cudaMemcpyAsync(dst, src, nbytes, kind, stream):
    ctypes.memmove(int(dst), int(src), int(nbytes))
    return (cudaError_t.cudaSuccess,)


def cudaStreamSynchronize(stream):
    return (cudaError_t.cudaSuccess,)
