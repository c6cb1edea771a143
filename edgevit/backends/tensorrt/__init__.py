"""TensorRT, for Jetson boards and NVIDIA GPUs: the backend (``backend``: Q/DQ ONNX and the engine plan at build
time), the builder settings a target implies (``plan``), the engine's build, runner and profiler on the device
(``engine``), the rules a Q/DQ graph must follow for TensorRT to fuse it (``rules``), and ``edgevit compile`` on the
device (``compile``). A board imports ``plan``, ``engine``, ``compile`` and ``backend``; ``rules`` is build side."""
