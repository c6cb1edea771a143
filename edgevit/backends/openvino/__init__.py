"""OpenVINO, for Intel and AMD CPUs: the backend (``backend``: NNCF quantization, the IR, its runner, profiler and
throughput) and the speed search that puts INT8 layers which run slower than the host precision back in it
(``speedmix``)."""
