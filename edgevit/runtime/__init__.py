"""The device runtime: what a board installs and runs (verify, compile, predict, time, demo, env), beside the
backends' runtimes (:mod:`edgevit.backends`) and the shared ground (errors, outputs, targets, schema, the CLI).
Nothing here imports a build-side module (torch, NNCF, timm, onnx); :mod:`edgevit._boundary` lists the modules and
the tests hold them to it under Python 3.8."""
