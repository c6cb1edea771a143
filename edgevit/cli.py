"""The ``edgevit`` command: a thin shell that parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import argparse
import os
import sys

from edgevit import __version__
from edgevit.errors import EdgevitError
from edgevit.errors import UsageError as EdgevitUsage


def _cmd_models(a) -> int:
    import textwrap

    from edgevit.models import ZOO

    print(f"{'alias':19} {'family':9} {'input':>5} {'timm architecture':24} description")
    for s in ZOO.values():
        arch = s.timm_name + ("*" if s.kwargs else "")
        lines = textwrap.wrap(s.description, 100 - 61, break_on_hyphens=False) or [""]
        print(f"{s.alias:19} {s.family:9} {s.input_size:>5} {arch:24} {lines[0]}")
        for more in lines[1:]:
            print(" " * 61 + more)
    print("\n* the architecture with the alias's own sizes (its description says which), not timm's\n"
          "  pretrained model. Any other timm model name works too (e.g. --model deit_tiny_patch16_224).")
    return 0


def _cmd_targets(a) -> int:
    from edgevit.backends import host_support, prepare_support
    from edgevit.targets import list_targets, load_target

    if a.json:
        from edgevit.outputs import dumps

        rows = []
        for name in list_targets():
            t = load_target(name)
            ok, why = host_support(t)
            prep, prep_why = prepare_support(t)
            rows.append({**t.to_dict(), "runs_here": ok, "prepares_here": prep, "why": why if not ok else prep_why})
        print(dumps(rows, indent=None))
        return 0
    import textwrap

    default = parser_default("build", "target")
    print(f"{'target':18} {'backend':11} {'precisions':14} {'here':9} description")
    notes: dict[str, int] = {}
    for name in list_targets():
        t = load_target(name)
        ok, why = host_support(t)
        prep, prep_why = prepare_support(t)
        can = "yes" if ok else ("prepare" if prep else "no")
        if not ok:  # why not: one footnote per distinct reason, not the same sentence on every row
            can += f" {notes.setdefault(why if prep else prep_why, len(notes) + 1)}"
        desc = ("(default) " if t.name == default else "") + t.description
        lines = textwrap.wrap(desc, 100 - 56, break_on_hyphens=False) or [""]
        print(f"{t.name:18} {t.backend:11} {','.join(t.precisions):14} {can:9} {lines[0]}")
        for more in lines[1:]:
            print(" " * 56 + more)
    for why, n in notes.items():
        print(textwrap.fill(f"{n}: {why}", 100, subsequent_indent="   ", break_on_hyphens=False))
    from edgevit.detect import detect_target

    try:
        auto, why = detect_target()
        print("\n" + textwrap.fill(f"auto (--target auto) on this host: {auto}, because {why}", 100,
                                   break_on_hyphens=False))
    except EdgevitError as e:
        print(f"\nauto (--target auto) on this host: none ({e})")
    print()
    print(textwrap.fill("yes: builds and runs here. prepare: builds the checked bundle here (Q/DQ ONNX, its "
                        "accuracy, the engine plan); run `edgevit compile BUNDLE` on the device to build the "
                        "engine.", 100))
    return 0


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command: the same one the command line goes through."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def parser_default(command: str, dest: str):
    """The default of a command's option, as its parser declares it (one place for it)."""
    return command_parser(command).get_default(dest)


def _weights_arg(a) -> str | None:
    """--weights, or the Hub repository --pretrained means for --model."""
    if not a.pretrained:
        return a.weights
    if a.weights:
        raise EdgevitUsage("pass either --weights or --pretrained, not both")
    from edgevit.hub import default_repo
    from edgevit.models import resolve_spec

    return default_repo(resolve_spec(a.model).timm_name)


def _cmd_train(a) -> int:
    from edgevit.train import train

    r = train(a.model, a.data, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weights=_weights_arg(a),
              resume=a.resume, seed=a.seed, limit=a.limit, workers=a.workers)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(f"trained {a.model} for {r.epochs} epochs in {r.seconds / 60:.1f} min; best held-out top-1 "
          f"{r.best_top1:.2f}%; checkpoints: {r.best_path}, {r.last_path}")
    return 0


def _cmd_build(a) -> int:
    from edgevit.build import QATOptions, build
    from edgevit.summary import summary

    qat = QATOptions(epochs=a.qat_epochs, distill=a.distill, lr=a.qat_lr, samples=a.qat_samples)
    r = build(a.model, target=a.target, precision=a.precision, data=a.data, weights=_weights_arg(a), out=a.out,
              calibration=a.calibration, calib_samples=a.calib_samples, val_samples=a.val_samples,
              input_size=a.input_size, threads=a.threads, name=a.name, max_drop=a.max_drop,
              keep_failed=a.keep_failed, qat=qat, ignore_trt_rules=a.ignore_trt_rules, force=a.force, profile=a.profile,
              calib_data=a.calib_data, workers=a.workers)
    if r is None:  # a torchrun follower of a data-parallel QAT build: rank 0 reports
        return 0
    if a.json:  # machine-readable on stdout, the human summary on stderr
        from edgevit.outputs import dumps

        print(summary(r), file=sys.stderr)
        print(dumps({"bundle": str(r.bundle), "manifest": r.manifest}, indent=None))
    else:
        print(summary(r))
    return 0


def _cmd_compile(a) -> int:
    from edgevit.compile import compile_bundle

    m = compile_bundle(a.bundle, log=lambda s: print(s, file=sys.stderr))
    e, lat = m["backend"]["engine"], m["latency_ms"]
    print(f"engine    {a.bundle}: TensorRT {e['tensorrt']} on {e['device_name']} (sm {e['compute_capability']}), "
          f"built in {e['build_seconds']} s; layers by precision {e['layers']['by_precision']}, by device "
          f"{e['layers']['by_device']}")
    c = e["check_vs_onnxruntime"]
    print(f"check     vs the same ONNX on ONNX Runtime: argmax agreement {c['argmax_agreement']}%, max |logit diff| "
          f"{c['max_abs_logit_diff']}")
    print(f"latency   p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms at batch 1 on {e['device_name']}")
    return 0


def _cmd_bench(a) -> int:
    from edgevit.bench import bench

    run, cells = bench(a.suite, db_path=a.db, train=a.train_missing, only=a.only, remote=a.remote,
                       crosscheck=a.crosscheck)
    ok = sum(c["status"] == "passed" for c in cells)
    out = sys.stdout
    if a.json:
        from edgevit.outputs import dumps

        print(dumps({"run": run, "cells": [{k: v for k, v in c.items() if k != "bundle"} for c in cells]},
                    indent=None))
        out = sys.stderr
    print(f"bench {run['suite']}: {len(cells)} cells ({ok} passed) in {run['seconds']:.0f} s; run {run['run_id']} "
          f"appended to {a.db}", file=out)
    for c in cells:
        print(f"  {c['model']:22} {c['target']:12} {c['precision']:5} {c['status']:17} "
              + (c.get("error") or f"top-1 {c.get('top1')}  p50 {c.get('p50')} ms  ({c.get('executed')})"), file=out)
    return 0


def _cmd_report(a) -> int:
    from edgevit.report import report

    out, found = report(a.db or ["benchmarks/results/history.sqlite"], a.out, a.suite, force=a.force)
    print(f"report: {out / 'report.html'} and {out / 'summary.md'}")
    for f in found:
        print(f"REGRESSION {f['cell']} ({f['kind']}): {f['message']}")
    return 3 if found else 0


def _cmd_predict(a) -> int:
    from edgevit.outputs import dumps
    from edgevit.predict import Predictor

    preds = Predictor(a.bundle, threads=a.threads).predict_files(a.images, k=a.top_k)
    for p in preds:
        if a.json:
            print(dumps({"image": p.source, "top": [{"label": lb, "score": round(s, 5)} for lb, s in p.top]}))
        else:
            print(p.source + ":  " + "  ".join(f"{lb} {s:.3f}" for lb, s in p.top))
    return 0


def _cmd_demo(a) -> int:
    from edgevit.demo import run_demo

    s = run_demo(a.bundle, a.source, output=a.output, jsonl=a.jsonl, headless=True if a.headless else None,
                 max_fps=a.max_fps, max_frames=a.max_frames, top_k=a.top_k, threads=a.threads, force=a.force)
    print(s.text())
    return 0


def _cmd_inspect(a) -> int:
    from edgevit.inspection import inspect_model

    r = inspect_model(a.model, a.weights, a.out, bundle=a.bundle, data=a.data, images=a.images, force=a.force)
    for key in ("filters", "position", "attention", "sqnr"):
        print(f"{key:10} {a.out}/{r.figures[key]}" if key in r.figures else f"{key:10} -- {r.notes[key]}")
    for e in r.worst_layers:
        print(f"worst      {e.name} ({e.kind}): {e.sqnr_db:.2f} dB")
    print(f"page       {a.out}/index.html")
    return 0


def _cmd_time(a) -> int:
    from edgevit.outputs import dumps
    from edgevit.predict import time_bundle

    r = time_bundle(a.bundle, throughput_batch=a.throughput_batch, threads=a.threads)
    if a.json:
        print(dumps(r, indent=None))
    else:
        lat = r["latency_ms"]
        print(f"{r['model']} {r['precision']} (ran {r['executed'] or r['precision']}) on {r['host']['cpu']}"
              + (f", {r['device']}" if r["device"] and r["device"] != "CPU" else "")
              + f": p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms at batch {lat['batch']}; "
              f"{r['throughput']:.0f} img/s at batch {r['throughput_batch']}")
    return 0


def environment_report() -> dict:
    """What this host is and which versions edgevit runs with (``edgevit env``; ``bench --remote`` asks the device)."""
    import platform

    from edgevit.backends.tensorrt import board_model, engine_support
    from edgevit.measure import host_info, library_versions

    versions = library_versions(("edgevit", "torch", "timm", "nncf", "openvino", "onnxruntime", "onnx",
                                 "opencv-python-headless", "tensorrt", "cuda-python"))
    ok, why = engine_support()
    return {"host": host_info(), "python": platform.python_version(), "versions": versions,
            "tensorrt_engine": {"available": ok, "detail": why}, "board": board_model()}


def _cmd_env(a) -> int:
    from edgevit.outputs import dumps

    r = environment_report()
    if a.json:
        print(dumps(r, indent=None))
        return 0
    h = r["host"]
    print(f"host      {h['cpu']} ({h['arch']}, {h['cores']} cores; ISA {','.join(h['isa']) or 'none of note'})"
          + (f"; board {r['board']}" if r["board"] else ""))
    print("versions  " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v))
    print(f"tensorrt  {'engines build and run here: ' if r['tensorrt_engine']['available'] else 'no engine here: '}"
          f"{r['tensorrt_engine']['detail']}")
    return 0


def _cmd_samples(a) -> int:
    from edgevit.data import write_samples

    paths = write_samples(a.data, a.out, n=a.n, force=a.force)
    print(f"wrote {len(paths)} labelled test images to {a.out}/ (the label is in each name), e.g.\n"
          f"  edgevit predict BUNDLE {paths[0]}")
    return 0


def _cmd_verify(a) -> int:
    from edgevit.bundle import read_manifest

    m = read_manifest(a.bundle)
    if a.json:
        from edgevit.outputs import dumps

        print(dumps({"bundle": str(a.bundle), "ok": True, "files_verified": len(m["files"]),
                     "model": m["model"]["alias"], "precision": m["precision"], "target": m["target"]["name"],
                     "status": m.get("status", "ok")}, indent=None))
        return 0
    print(f"{a.bundle}: ok ({len(m['files'])} files verified; {m['model']['alias']} {m['precision']} for "
          f"{m['target']['name']})")
    return 0


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi, checked before any work starts."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range {lo}..{hi}")
        return v
    parse.__name__ = "integer"
    return parse


def _float_in(lo: float, hi: float, lo_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    def parse(text: str) -> float:
        import math

        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a finite number "
                                             f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
        return v
    parse.__name__ = "number"
    return parse


THREADS = _int_in(1, 1024)
INPUT_SIZE = _int_in(8, 1024)  # a ViT at 1024 px already has 4096 tokens of 16 px
COUNT = _int_in(1, 100_000_000)
EPOCHS = _int_in(1, 100_000)
WORKERS = _int_in(0, 256)
WORKERS_HELP = ("processes that decode images while the model computes (default: all cores but one for image "
                "files, none for in-memory Fashion-MNIST; 0: decode in this process)")


# What each command is for, and how it is used: shown by `edgevit COMMAND --help`.
ABOUT = {
    "models": ("The model zoo: ViTs, hybrids (CNN stem + ViT), MaxViT and the CNN baselines, with their input size. "
               "Any other timm model name works too.", ["edgevit models"]),
    "targets": ("Device profiles (targets/*.toml): backend, precisions, and whether this host can build and run "
                "each one.", ["edgevit targets", "edgevit targets --json"]),
    "train": ("Train or fine-tune a model on a dataset; writes best.pt and last.pt. Runs data-parallel under "
              "torchrun.", ["edgevit train --model vit-tiny-fmnist --data fashion-mnist --out runs/vit",
                            "edgevit train --model vit-tiny --pretrained --data imagefolder:photos/ --out runs/ft",
                            "torchrun --standalone --nproc_per_node 4 -m edgevit train --model vit-tiny --data DIR "
                            "--out runs/ddp"]),
    "build": ("Quantize (or keep fp32/bf16), compile for a target, validate against FP32 and write a verified "
              "bundle.", ["edgevit build --model vit-tiny-fmnist --weights runs/vit/best.pt --data fashion-mnist",
                          "edgevit build --model vit-tiny --pretrained --target jetson-orin --precision int8 "
                          "--data DIR",
                          "edgevit build --config build.toml"]),
    "bench": ("Benchmark a suite of models x targets x precisions into the history database.",
              ["edgevit bench --suite benchmarks/quick.toml", "edgevit bench --suite fashion-mnist --train-missing"]),
    "report": ("HTML and Markdown report of the benchmark history, with trends and regressions (exit 3 on a "
               "regression).", ["edgevit report", "edgevit report --db jetson.sqlite --db cpu.sqlite --out report"]),
    "compile": ("On a Jetson or NVIDIA GPU: build a bundle's TensorRT engine and measure it.",
                ["edgevit compile build/vit-tiny-jetson-orin-int8"]),
    "predict": ("Classify image files with a bundle.", ["edgevit predict build/BUNDLE samples/*.png"]),
    "demo": ("Live classification with predictions and FPS on screen, from a camera, stream, video or image folder.",
             ["edgevit demo build/BUNDLE --source 0", "edgevit demo build/BUNDLE --source clip.mp4 --output out.mp4",
              "edgevit demo build/BUNDLE --source samples/ --output demo.mp4"]),
    "inspect": ("Figures of what a ViT learned (attention, position embeddings) and where INT8 hurts it.",
                ["edgevit inspect --model vit-tiny-fmnist --weights runs/vit/best.pt --data fashion-mnist "
                 "--out inspect"]),
    "time": ("A bundle's latency and throughput on this host, through its own runtime.", ["edgevit time build/BUNDLE"]),
    "env": ("This host: CPU features, GPU, TensorRT and the versions of the libraries edgevit uses.",
            ["edgevit env", "edgevit env --json"]),
    "samples": ("Write real labelled test images (PNG) to try predict and the demo on.",
                ["edgevit samples --data fashion-mnist --out samples -n 10"]),
    "verify": ("Check a bundle: manifest schema, files and checksums.", ["edgevit verify build/BUNDLE"]),
}


class _Help(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default where it has one that says something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text \
                and action.option_strings:
            text += f" (default: {action.default})"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2) that points at --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Help)
        name = kwargs.get("prog", "").split()[-1] if kwargs.get("prog") else None
        if name in ABOUT and "description" not in kwargs:
            about, examples = ABOUT[name]
            kwargs["description"] = about
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        super().__init__(*args, **kwargs)
        if name in ABOUT or kwargs.get("prog") == "edgevit":
            g = self.add_mutually_exclusive_group()
            g.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                           default=argparse.SUPPRESS, help="only results and errors")
            g.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                           default=argparse.SUPPRESS,
                           help="also the libraries' own progress bars, logs and warnings (NNCF, OpenVINO, torch)")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parser() -> argparse.ArgumentParser:
    from edgevit.build import DEFAULT_MAX_DROP

    p = _Parser(prog="edgevit", description="Vision Transformers from PyTorch to validated INT8 "
                                "on edge devices.")
    p.add_argument("--version", action="version", version=f"edgevit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("models", help="list the model zoo")
    s.set_defaults(fn=_cmd_models)
    s = sub.add_parser("targets", help="list device profiles and whether this host can build/run them")
    s.add_argument("--json", action="store_true", help="one JSON list on stdout")
    s.set_defaults(fn=_cmd_targets)

    s = sub.add_parser("train", help="train or fine-tune a model")
    s.add_argument("--model", required=True, help="zoo alias or timm name")
    s.add_argument("--data", required=True, help="fashion-mnist[:DIR] | imagefolder:DIR | DIR | synthetic")
    s.add_argument("--out", required=True, help="directory for best.pt / last.pt")
    s.add_argument("--epochs", type=EPOCHS, help="default: the model's recipe")
    s.add_argument("--batch-size", type=_int_in(1, 65536))
    s.add_argument("--lr", type=_float_in(0, 10, lo_open=True))
    s.add_argument("--weights", help="initial weights to fine-tune from (a file or hf-hub:OWNER/NAME[@REV]); a "
                                     "classifier of another class count is replaced")
    s.add_argument("--pretrained", action="store_true",
                   help="fine-tune from timm's default pretrained weights (Hugging Face Hub or its cache)")
    s.add_argument("--resume", help="last.pt of an interrupted run")
    s.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    s.add_argument("--limit", type=COUNT,
                   help="train on the first N images of the train split (held-out set: N/5); for slow models")
    s.add_argument("--workers", type=WORKERS, help=WORKERS_HELP)
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("build", help="quantize, compile, validate and bundle a model for a target")
    s.add_argument("--model", required=True, help="zoo alias or timm name")
    s.add_argument("--target", default="cpu-x86",
                   help="profile name from 'edgevit targets', a .toml path, or auto: detect this host's board/GPU/CPU")
    s.add_argument("--precision", default="int8",
                   help="fp32 | bf16 | int8 (as the target allows) | best: the fastest measured that passes the gate")
    s.add_argument("--data", help="calibration and validation images: fashion-mnist[:DIR] | imagefolder:DIR | DIR | "
                                  "synthetic (int8, the default precision, needs them)")
    s.add_argument("--weights", help="safetensors, state dict, timm or edgevit checkpoint, or hf-hub:OWNER/NAME[@REV] "
                                     "(Hugging Face Hub, its cache honoured); omitted: random init")
    s.add_argument("--pretrained", action="store_true",
                   help="timm's default pretrained weights for the model, from the Hugging Face Hub (or its cache)")
    s.add_argument("--out", default="build", help="directory the bundle is written into")
    s.add_argument("--name", help="bundle directory name (default MODEL-TARGET-PRECISION)")
    s.add_argument("--calibration", help="calibration recipe name or .toml (default: calibration/default.toml)")
    s.add_argument("--calib-samples", type=COUNT, help="override the recipe's sample count")
    s.add_argument("--calib-data", help="calibrate on these unlabelled images instead (a folder, e.g. frames from the "
                                        "device's camera, or a .npy of uint8 images); --data still validates")
    s.add_argument("--val-samples", type=COUNT, help="validation images (default: the whole held-out split)")
    s.add_argument("--input-size", type=INPUT_SIZE, help="input resolution (position embeddings are resampled)")
    s.add_argument("--threads", type=THREADS, help="inference threads (default: the target's)")
    s.add_argument("--max-drop", type=_float_in(0, 100), default=DEFAULT_MAX_DROP,
                   help=f"accuracy gate: top-1 points INT8 may lose vs FP32 (default {DEFAULT_MAX_DROP}); over it, "
                        "accuracy-aware PTQ is tried (or QAT, with --qat-epochs), then the build fails")
    s.add_argument("--keep-failed", action="store_true", help="write a bundle marked failed instead of none")
    s.add_argument("--qat-epochs", type=_int_in(0, 100_000), default=0,
                   help="quantization-aware training epochs from the PTQ initialisation (int8); the checkpoint is "
                        "written to OUT/NAME.qat.pt, and --weights NAME.qat.pt rebuilds or resumes it")
    s.add_argument("--distill", action="store_true", help="QAT distils from the FP32 model")
    s.add_argument("--qat-lr", type=_float_in(0, 10, lo_open=True),
                   help="QAT peak learning rate (default: 2%% of the model's training lr)")
    s.add_argument("--qat-samples", type=COUNT, help="QAT training images per epoch (default: the whole train split)")
    s.add_argument("--ignore-trt-rules", action="store_true",
                   help="TensorRT targets: write the bundle even if the Q/DQ ONNX breaks TensorRT's rules")
    s.add_argument("--force", action="store_true",
                   help="replace OUT even if it is not an edgevit bundle (never /, ~ or the working directory)")
    s.add_argument("--profile", action="store_true",
                   help="per-layer time and executed precision from the runtime's profiler, into the manifest")
    s.add_argument("--workers", type=WORKERS, help=WORKERS_HELP)
    s.add_argument("--config", metavar="FILE", help="a TOML file of these options (model = \"vit-tiny\", "
                                                    "qat_epochs = 2, ...); the command line wins")
    s.add_argument("--json", action="store_true", help="the bundle and its manifest as one JSON object on stdout "
                                                       "(the summary goes to stderr)")
    s.set_defaults(fn=_cmd_build)

    s = sub.add_parser("bench", help="benchmark a suite of models × targets × precisions into the history database")
    s.add_argument("--suite", required=True, help="suite .toml (benchmarks/quick.toml, benchmarks/fashion-mnist.toml)")
    s.add_argument("--db", default="benchmarks/results/history.sqlite", help="SQLite history the run is appended to")
    s.add_argument("--train-missing", action="store_true", help="train models whose weights file does not exist")
    s.add_argument("--only", help="only the models whose name contains this")
    s.add_argument("--remote", metavar="USER@HOST",
                   help="time each bundle on this device over ssh/scp (your keys and ~/.ssh/config): copies it, runs "
                        "edgevit compile (TensorRT) and edgevit time there; results are labelled with the device")
    s.add_argument("--crosscheck", action="store_true",
                   help="also run OpenVINO's benchmark_app on each OpenVINO cell (latency and throughput hints, same "
                        "threads and precision) and record how far our figures are from its")
    s.add_argument("--json", action="store_true", help="the run and its cells as one JSON object on stdout")
    s.set_defaults(fn=_cmd_bench)

    s = sub.add_parser("report", help="HTML + Markdown report of the benchmark history; exit 3 on a regression")
    s.add_argument("--db", action="append",
                   help="history database (default benchmarks/results/history.sqlite); repeat it to merge the "
                        "histories of several hosts into one page, a section per device")
    s.add_argument("--out", default="benchmarks/results/report", help="directory for report.html and summary.md")
    s.add_argument("--suite", help="report this suite (default: the latest run's)")
    s.add_argument("--force", action="store_true",
                   help="replace OUT even if it is not an edgevit report (never /, ~ or the working directory)")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser("compile", help="on a Jetson / NVIDIA GPU: build the TensorRT engine of a bundle")
    s.add_argument("bundle", help="a bundle written by 'edgevit build --target jetson-...' (or nvidia-gpu)")
    s.set_defaults(fn=_cmd_compile)

    s = sub.add_parser("predict", help="classify images with a bundle")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+")
    s.add_argument("-k", "--top-k", type=_int_in(1, 1000), default=3)
    s.add_argument("--json", action="store_true", help="one JSON line per image")
    s.add_argument("--threads", type=THREADS)
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("demo", help="live classification from a camera, stream, video file or image directory")
    s.add_argument("bundle")
    s.add_argument("--source", required=True,
                   help="0 or /dev/video0 (V4L2), csi://0 (Jetson CSI), rtsp://… or http(s)://…, a video file, "
                        "or a directory of images")
    s.add_argument("--output", help="write the annotated video here (.mp4, .avi, .mkv, .mov)")
    s.add_argument("--jsonl", help="write one JSON line per frame here")
    s.add_argument("--headless", action="store_true", help="no window (chosen automatically without a display)")
    s.add_argument("--max-fps", type=_float_in(0, 1000, lo_open=True), help="read the source at most this often")
    s.add_argument("--max-frames", type=COUNT, help="stop after this many frames")
    s.add_argument("-k", "--top-k", type=_int_in(1, 1000), default=3)
    s.add_argument("--threads", type=THREADS)
    s.add_argument("--force", action="store_true", help="replace existing --output/--jsonl files")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("inspect", help="figures of what a ViT learned and where INT8 hurts it")
    s.add_argument("--model", required=True)
    s.add_argument("--weights", help="the trained weights (omitted: random init)")
    s.add_argument("--bundle", help="an INT8 OpenVINO bundle of these weights (omitted: quantize on the fly)")
    s.add_argument("--data", help="real images for attention distance and SQNR (default: the bundle's dataset)")
    s.add_argument("--images", type=_int_in(1, 100_000), default=64, help="validation images to average over")
    s.add_argument("--out", required=True, help="directory for the PNG figures and index.html")
    s.add_argument("--force", action="store_true",
                   help="replace OUT even if it is not an edgevit inspect page (never /, ~ or the working directory)")
    s.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("time", help="measure a bundle's latency and throughput on this host through its own runtime")
    s.add_argument("bundle")
    s.add_argument("--throughput-batch", type=_int_in(1, 4096), default=16, help="batch for the throughput figure")
    s.add_argument("--threads", type=THREADS)
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(fn=_cmd_time)

    s = sub.add_parser("env", help="this host, its CPU features, GPU/TensorRT and the library versions edgevit uses")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(fn=_cmd_env)

    s = sub.add_parser("samples", help="write real labelled test images (PNG) to try predict and the demo on")
    s.add_argument("--data", default="fashion-mnist", help="dataset whose validation/test images to write")
    s.add_argument("--out", default="samples", help="directory for the images")
    s.add_argument("-n", type=_int_in(1, 10000), default=10, help="how many (balanced over the classes)")
    s.add_argument("--force", action="store_true", help="replace OUT even if edgevit did not write it")
    s.set_defaults(fn=_cmd_samples)

    s = sub.add_parser("verify", help="check a bundle's manifest and file checksums")
    s.add_argument("bundle")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(fn=_cmd_verify)
    return p


def _terminate(signum, _frame):
    from edgevit.errors import Terminated

    raise Terminated(signum)  # unwinds like Ctrl-C: staging directories are removed, demo outputs finished


def main(argv: list[str] | None = None) -> int:
    import shlex
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    if argv is None and hasattr(signal, "SIGPIPE"):  # `edgevit models | head`: stop quietly, like a Unix tool
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(_with_config(argv))
    except EdgevitUsage as e:
        print(f"edgevit: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    if getattr(args, "verbosity", None) is not None:
        from edgevit._progress import set_verbosity

        set_verbosity(args.verbosity)
    os.environ["EDGEVIT_COMMAND"] = shlex.join(["edgevit", *argv])
    try:
        return args.fn(args)
    except EdgevitError as e:
        print(f"edgevit: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)
        print("edgevit: stopped by " + (f"signal {signum}" if signum else "Ctrl-C"), file=sys.stderr)
        return 128 + (signum or 2)
    except OSError as e:  # the file system said no: disk full, permission, read-only, ...
        where = f" {e.filename}:" if e.filename else ""
        fix = {28: "free some space or write elsewhere", 122: "free some space or write elsewhere",
               13: "check the permissions or write elsewhere", 30: "write elsewhere"}.get(e.errno, "")
        print(f"edgevit: error:{where} {e.strerror or e}" + (f"; {fix}" if fix else ""), file=sys.stderr)
        return 1


def _with_config(argv: list[str]) -> list[str]:
    """``build --config FILE``: the TOML file's keys are build's options without the dashes (``model =
    "vit-tiny"``, ``qat_epochs = 2``, ``distill = true``), checked by the same parser as the command line; options
    given on the command line win. Unknown keys are errors."""
    if "build" not in argv:
        return argv
    at = argv.index("build")
    rest = argv[at + 1:]
    path = None
    for i, a in enumerate(rest):
        if a == "--config" and i + 1 < len(rest):
            path = rest[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    if path is None:
        return argv
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise EdgevitUsage(f"--config {path}: no such file; pass a TOML file of build options") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise EdgevitUsage(f"--config {path} is not valid TOML ({e})") from None
    options = {o: act for act in command_parser("build")._actions for o in act.option_strings if o.startswith("--")}
    extra: list[str] = []
    for key, value in cfg.items():
        opt = "--" + str(key).replace("_", "-")
        act = options.get(opt)
        if act is None or opt in ("--config", "--help"):
            known = ", ".join(sorted(o[2:].replace("-", "_") for o in options if o not in ("--config", "--help")))
            raise EdgevitUsage(f"--config {path}: unknown option {key!r}; the keys are build's options: {known}")
        if act.nargs == 0:  # a flag
            if not isinstance(value, bool):
                raise EdgevitUsage(f"--config {path}: {key} must be true or false, not {value!r}")
            extra += [opt] if value else []
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            extra += [opt, str(value)]
        else:
            raise EdgevitUsage(f"--config {path}: {key} must be a string or a number, not {value!r}")
    return [*argv[:at + 1], *extra, *rest]


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
