"""The ``edgevit`` command: a thin shell that parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgevit.cli_args import parser, parser_default, with_config
from edgevit.errors import BackendUnavailableError, EdgevitError
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
              resume=a.resume, seed=a.seed, limit=a.limit, workers=a.workers, amp=not a.no_amp)
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
              keep_failed=a.keep_failed, qat=qat, ignore_trt_rules=a.ignore_trt_rules,
              speed_search=not a.no_speed_search, measure=a.measure, force=a.force, profile=a.profile,
              calib_data=a.calib_data, workers=a.workers, token_search=a.token_search, token_finetune=a.token_finetune,
              latency_budget=a.latency_budget)
    if r is None:  # a torchrun follower of a data-parallel QAT build: rank 0 reports
        return 0
    if a.json:  # machine-readable on stdout, the human summary on stderr
        from edgevit.outputs import dumps

        print(summary(r), file=sys.stderr)
        print(dumps({"bundle": str(r.bundle), "manifest": r.manifest.data}, indent=None))
    else:
        print(summary(r))
    profile = r.manifest.section("profile")
    if a.profile and profile:
        from edgevit.runtime.timing import profile_table

        print("\n" + profile_table(r.bundle.name, profile), file=sys.stderr if a.json else sys.stdout)
    return 0


def _cmd_compile(a) -> int:
    from edgevit.backends.tensorrt.compile import compile_bundle

    m = compile_bundle(a.bundle, log=lambda s: print(s, file=sys.stderr))
    e, lat = m.backend.engine, m.latency
    print(f"engine    {a.bundle}: TensorRT {e['tensorrt']} on {e['device_name']} (sm {e['compute_capability']}), "
          f"built in {e['build_seconds']} s; layers by precision {e['layers']['by_precision']}, by device "
          f"{e['layers']['by_device']}")
    c = e["check"]
    print(f"check     on the bundle's {c['samples']} validation images vs FP32 PyTorch: top-1 agreement "
          f"{c['top1_agreement']}% (bound >= {c['bounds']['min_top1_agreement']}%), max |logit diff| "
          f"{c['max_abs_logit_diff']} (bound <= {c['bounds']['max_abs_logit_diff']})")
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

    out, found = report(a.db or ["benchmarks/results/history.sqlite"], a.out, suite=a.suite, force=a.force)
    print(f"report: {out / 'report.html'} and {out / 'summary.md'}")
    for f in found:
        print(f"REGRESSION {f['cell']} ({f['kind']}): {f['message']}")
    return 3 if found else 0


def _cmd_predict(a) -> int:
    from edgevit.outputs import dumps
    from edgevit.runtime.predict import Predictor

    preds = Predictor(a.bundle, threads=a.threads).predict_files(a.images, k=a.top_k)
    for p in preds:
        if a.json:
            print(dumps({"image": p.source, "top": [{"label": lb, "score": round(s, 5)} for lb, s in p.top]}))
        else:
            print(p.source + ":  " + "  ".join(f"{lb} {s:.3f}" for lb, s in p.top))
    return 0


def _cmd_demo(a) -> int:
    from edgevit.runtime.demo import run_demo

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
    from edgevit.runtime.predict import time_bundle

    if len(a.bundles) > 1 or a.profile or a.batch or a.duration != 2.0 or a.hint or a.streams or \
            not Path(a.bundles[0]).is_dir():
        from edgevit.runtime.timing import table, time_items

        records = time_items(a.bundles, batch=a.batch, threads=a.threads, duration=a.duration, profile=a.profile,
                             throughput_batch=a.throughput_batch, hint=a.hint, streams=a.streams)
        print(dumps(records if len(records) > 1 else records[0], indent=None) if a.json else table(records))
        return 0
    r = time_bundle(a.bundles[0], throughput_batch=a.throughput_batch, threads=a.threads)
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

    from edgevit.backends.tensorrt.engine import board_model, engine_support
    from edgevit.runtime.measure import host_info, library_versions

    versions = library_versions(("edgevit", "torch", "timm", "nncf", "openvino", "onnxruntime", "onnx",
                                 "opencv-python-headless", "tensorrt", "cuda-python"))
    ok, why = engine_support()
    return {"host": host_info(), "python": platform.python_version(), "versions": versions,
            "gpus": _gpus(), "trains_here": versions.get("torch") is not None,
            "tensorrt_engine": {"available": ok, "detail": why}, "board": board_model()}


def _gpus() -> list[dict]:
    """The GPUs torch sees where the build side is installed; on a board's lean runtime (no torch), those CUDA's
    runtime reports through cuda-python; none where neither can tell."""
    try:
        from edgevit.parallel import cuda_devices

        return cuda_devices()
    except ImportError:
        pass
    from edgevit.backends.tensorrt.engine import cuda_devices as runtime_devices

    try:
        return runtime_devices()
    except Exception:  # no cuda-python or no usable driver: the tensorrt line says which
        return []


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
    for g in r["gpus"]:
        print(f"gpu       cuda:{g['index']} {g['name']} (compute {g['capability']}, {g['memory_gib']} GiB"
              f"{', bf16' if g.get('bf16') else ''})"
              + (": train and QAT run here" if r["trains_here"] else ": engines run here (device runtime)"))
    if not r["gpus"]:
        print("gpu       none that torch sees: train and QAT run on the CPU" if r["trains_here"]
              else "gpu       none that CUDA's runtime reports")
    if not r["trains_here"]:
        print("build     not installed here (device runtime): build, train and bench run on a workstation with "
              "pip install 'edgevit[build]'")
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
    from edgevit.runtime.bundle import read_manifest

    m = read_manifest(a.bundle)
    loaded = _load_check(a.bundle, m)
    if a.json:
        from edgevit.outputs import dumps

        print(dumps({"bundle": str(a.bundle), "ok": True, "files_verified": len(m.files), "model": m.model.alias,
                     "precision": m.precision, "target": m.target_name, "status": m.status, "loaded": loaded},
                    indent=None))
        return 0
    print(f"{a.bundle}: ok ({len(m.files)} files verified; {m.model.alias} {m.precision} for {m.target_name}; "
          f"{loaded})")
    return 0


def _load_check(bundle, m) -> str:
    """verify's last check: the artifact loads through its own runtime and answers one image of the manifest's
    input size with one row of its classes, where that runtime is installed here (a damaged bundle is refused)."""
    from edgevit.backends import get_backend
    from edgevit.runtime.predict import load_checked

    backend = get_backend(m.backend.name)
    if backend.capabilities.engine_on_device:
        return "not loaded here: its engine is built and checked on the device (edgevit compile)"
    ok, why = backend.available()
    if not ok:
        return f"not loaded here: {why}"
    load_checked(backend, Path(bundle), m, threads=1)
    return f"loads and runs in {m.backend.name}"


RUN = {"models": _cmd_models, "targets": _cmd_targets, "train": _cmd_train, "build": _cmd_build,
       "bench": _cmd_bench, "report": _cmd_report, "compile": _cmd_compile, "predict": _cmd_predict,
       "demo": _cmd_demo, "inspect": _cmd_inspect, "time": _cmd_time, "env": _cmd_env, "samples": _cmd_samples,
       "verify": _cmd_verify}


def main(argv: list[str] | None = None) -> int:
    import signal

    from edgevit.errors import raise_terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return _main(argv)
    finally:  # once the command is over, SIGTERM is SIGTERM again (not an exception in interpreter shutdown)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    import shlex
    import signal

    if argv is None and hasattr(signal, "SIGPIPE"):  # `edgevit models | head`: stop quietly, like a Unix tool
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(with_config(argv))
    except EdgevitUsage as e:
        print(f"edgevit: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    if getattr(args, "verbosity", None) is not None:
        from edgevit._progress import set_verbosity

        set_verbosity(args.verbosity)
    os.environ["EDGEVIT_COMMAND"] = shlex.join(["edgevit", *argv])
    from edgevit._boundary import (
        BUILD_COMMANDS,
        BUILD_PYTHON,
        BUILD_SIDE,
        CPU_RUNTIMES,
        RUNTIME_COMMANDS,
        missing_build_side,
        needs_build_side,
    )

    if args.command in BUILD_COMMANDS:  # before any work: a board's runtime install says what it lacks
        missing = missing_build_side()
        if missing or sys.version_info[:2] < BUILD_PYTHON:
            print(f"edgevit: error: {needs_build_side(args.command, missing)}", file=sys.stderr)
            return BackendUnavailableError.exit_code
    from edgevit.failure import stage

    try:
        with stage(args.command):
            return RUN[args.command](args)
    except ModuleNotFoundError as e:  # the install lacks a package this command needs: say which extra brings it
        root = (e.name or "").split(".")[0]
        if root in BUILD_SIDE or (root in CPU_RUNTIMES and args.command not in RUNTIME_COMMANDS):
            print(f"edgevit: error: {needs_build_side(args.command, root)}", file=sys.stderr)
        elif root in CPU_RUNTIMES:
            print(f"edgevit: error: this bundle runs on {root}, which is not installed: pip install 'edgevit[cpu]'",
                  file=sys.stderr)
        else:
            return _fail(e, args.command)
        return BackendUnavailableError.exit_code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)
        print("edgevit: stopped by " + (f"signal {signum}" if signum else "Ctrl-C"), file=sys.stderr)
        return 128 + (signum or 2)
    except Exception as e:  # the one failure boundary (edgevit.failure): one line, the exit code, a log file
        return _fail(e, args.command)


def _fail(e: BaseException, command: str) -> int:
    """The failure boundary's one line. A SIGTERM that arrives meanwhile does not cut it short: under torchrun the
    launcher stops the surviving ranks right after one dies, while they are saying why they failed."""
    import signal

    from edgevit._progress import verbose
    from edgevit.failure import report

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the process is ending with this error anyway
    try:
        line, code = report(e, command, verbose())
        print(f"edgevit: error: {line.strip()}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
