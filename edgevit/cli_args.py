"""The command line's grammar: every command's arguments, help text and examples, checked before any work starts;
``build --config FILE.toml`` goes through the same parser. :mod:`edgevit.cli` runs what it parses."""

from __future__ import annotations

import argparse

from edgevit import __version__
from edgevit.errors import UsageError


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
              ["edgevit bench --suite quick", "edgevit bench --suite fashion-mnist --train-missing",
               "edgevit bench --suite my-suite.toml"]),
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
    "time": ("Bundles' latency and throughput on this host, through their own runtime, side by side.",
             ["edgevit time build/BUNDLE", "edgevit time build/A build/B --profile",
              "edgevit time build/A nncf_int8.xml --duration 5 --json"]),
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



def _add_models(sub) -> None:
    sub.add_parser("models", help="list the model zoo")


def _add_targets(sub) -> None:
    s = sub.add_parser("targets", help="list device profiles and whether this host can build/run them")
    s.add_argument("--json", action="store_true", help="one JSON list on stdout")


def _add_train(sub) -> None:
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
    s.add_argument("--no-amp", action="store_true",
                   help="train in FP32 on a GPU (default there: bf16 mixed precision where the GPU has it; the CPU "
                        "always trains in FP32)")


def _add_build(sub) -> None:
    from edgevit.validate import DEFAULT_MAX_DROP

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
    s.add_argument("--calibration", help="calibration recipe name or .toml (default: the recipe measured fastest for "
                                         "this model family on this kind of CPU, calibration/_defaults.toml; the "
                                         "build says which and why)")
    s.add_argument("--calib-samples", type=COUNT, help="override the recipe's sample count")
    s.add_argument("--calib-data", help="calibrate on these unlabelled images instead (a folder, e.g. frames from the "
                                        "device's camera, or a .npy of uint8 images); --data still validates")
    s.add_argument("--val-samples", type=COUNT, help="validation images (default: the whole held-out split)")
    s.add_argument("--input-size", type=INPUT_SIZE, help="input resolution (position embeddings are resampled)")
    s.add_argument("--threads", type=THREADS, help="inference threads (default: the target's; where it leaves them "
                                                   "open, the count measured fastest here, recorded in the bundle)")
    s.add_argument("--max-drop", type=_float_in(0, 100), default=DEFAULT_MAX_DROP,
                   help=f"accuracy gate: top-1 points INT8 may lose vs FP32 (default {DEFAULT_MAX_DROP}); over it, "
                        "accuracy-aware PTQ is tried (or QAT, with --qat-epochs), then the build fails")
    s.add_argument("--keep-failed", action="store_true", help="write a bundle marked failed instead of none")
    s.add_argument("--token-search", action="store_true",
                   help="INT8 ViT/hybrid/MaxViT with trained --weights and labelled --data: also try smaller inputs "
                        "(fewer tokens), each judged against the full-size FP32 model by --max-drop, and ship the "
                        "fastest")
    s.add_argument("--token-finetune", type=_int_in(0, 100), default=0, metavar="EPOCHS",
                   help="with --token-search: fine-tune the model at each smaller input for EPOCHS on the training "
                        "split (at most 20,000 images an epoch, the hold-out never among them) before quantizing it")
    s.add_argument("--latency-budget", type=_float_in(0, 1e6, lo_open=True), metavar="MS",
                   help="among the candidates that pass the gate (recipes, and sizes with --token-search), ship the "
                        "most accurate whose p50 here is within MS milliseconds, not the fastest")
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
    s.add_argument("--no-speed-search", action="store_true",
                   help="INT8 on OpenVINO: keep every quantized layer in INT8 even where the host precision runs it "
                        "faster on this CPU (by default such layers go back to it when the model gets faster)")
    s.add_argument("--measure", choices=("quick", "full"), default="full",
                   help="full (default): speed search, thread and host-precision sweeps, full timing; quick: none of "
                        "them and a third of the timing, for a first look")
    s.add_argument("--profile", action="store_true",
                   help="per-layer time and executed precision from the runtime's profiler, into the manifest")
    s.add_argument("--workers", type=WORKERS, help=WORKERS_HELP)
    s.add_argument("--config", metavar="FILE", help="a TOML file of these options (model = \"vit-tiny\", "
                                                    "qat_epochs = 2, ...); the command line wins")
    s.add_argument("--json", action="store_true", help="the bundle and its manifest as one JSON object on stdout "
                                                       "(the summary goes to stderr)")


def _add_bench(sub) -> None:
    s = sub.add_parser("bench", help="benchmark a suite of models × targets × precisions into the history database")
    s.add_argument("--suite", required=True,
                   help="a shipped suite by name (quick, fashion-mnist, imagenet-shape, jetson) or a suite .toml")
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


def _add_report(sub) -> None:
    s = sub.add_parser("report", help="HTML + Markdown report of the benchmark history; exit 3 on a regression")
    s.add_argument("--db", action="append",
                   help="history database (default benchmarks/results/history.sqlite); repeat it to merge the "
                        "histories of several hosts into one page, a section per device")
    s.add_argument("--out", default="benchmarks/results/report", help="directory for report.html and summary.md")
    s.add_argument("--suite", help="report this suite (default: the latest run's)")
    s.add_argument("--force", action="store_true",
                   help="replace OUT even if it is not an edgevit report (never /, ~ or the working directory)")


def _add_compile(sub) -> None:
    s = sub.add_parser("compile", help="on a Jetson / NVIDIA GPU: build the TensorRT engine of a bundle")
    s.add_argument("bundle", help="a bundle written by 'edgevit build --target jetson-...' (or nvidia-gpu)")


def _add_predict(sub) -> None:
    s = sub.add_parser("predict", help="classify images with a bundle")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+")
    s.add_argument("-k", "--top-k", type=_int_in(1, 1000), default=3)
    s.add_argument("--json", action="store_true", help="one JSON line per image")
    s.add_argument("--threads", type=THREADS, help="inference threads (default: the bundle's recorded count)")


def _add_demo(sub) -> None:
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
    s.add_argument("--threads", type=THREADS, help="inference threads (default: the bundle's recorded count)")
    s.add_argument("--force", action="store_true", help="replace existing --output/--jsonl files")


def _add_inspect(sub) -> None:
    s = sub.add_parser("inspect", help="figures of what a ViT learned and where INT8 hurts it")
    s.add_argument("--model", required=True)
    s.add_argument("--weights", help="the trained weights (omitted: random init)")
    s.add_argument("--bundle", help="an INT8 OpenVINO bundle of these weights (omitted: quantize on the fly)")
    s.add_argument("--data", help="real images for attention distance and SQNR (default: the bundle's dataset)")
    s.add_argument("--images", type=_int_in(1, 100_000), default=64, help="validation images to average over")
    s.add_argument("--out", required=True, help="directory for the PNG figures and index.html")
    s.add_argument("--force", action="store_true",
                   help="replace OUT even if it is not an edgevit inspect page (never /, ~ or the working directory)")


def _add_time(sub) -> None:
    s = sub.add_parser("time", help="measure bundles' latency and throughput on this host through their own runtime, "
                                    "side by side")
    s.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="bundle directories, or plain OpenVINO .xml / .onnx files; several are timed interleaved, "
                        "each in its own process")
    s.add_argument("--throughput-batch", type=_int_in(1, 4096), default=16, help="batch for the throughput figure")
    s.add_argument("--threads", type=THREADS, help="inference threads (default: each bundle's recorded count)")
    s.add_argument("--batch", type=_int_in(1, 4096), help="latency batch (default: each bundle's target batch)")
    s.add_argument("--duration", type=_float_in(0.1, 600), default=2.0,
                   help="seconds of timed calls per item at least (default 2)")
    s.add_argument("--profile", action="store_true",
                   help="per-layer table (layer, type, kernel, precision, median ms, share) beside the p50")
    s.add_argument("--hint", choices=("latency", "throughput"),
                   help="OpenVINO's PERFORMANCE_HINT for every item (default: each bundle's own configuration); "
                        "throughput also measures images/s through OpenVINO's async queue")
    s.add_argument("--streams", type=_int_in(1, 256),
                   help="OpenVINO's NUM_STREAMS for every item (default: what the hint or the bundle chose)")
    s.add_argument("--json", action="store_true", help="JSON on stdout: an object for one bundle, else a list")


def _add_env(sub) -> None:
    s = sub.add_parser("env", help="this host, its CPU features, GPU/TensorRT and the library versions edgevit uses")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _add_samples(sub) -> None:
    s = sub.add_parser("samples", help="write real labelled test images (PNG) to try predict and the demo on")
    s.add_argument("--data", default="fashion-mnist", help="dataset whose validation/test images to write")
    s.add_argument("--out", default="samples", help="directory for the images")
    s.add_argument("-n", type=_int_in(1, 10000), default=10, help="how many (balanced over the classes)")
    s.add_argument("--force", action="store_true", help="replace OUT even if edgevit did not write it")


def _add_verify(sub) -> None:
    s = sub.add_parser("verify", help="check a bundle's manifest and file checksums")
    s.add_argument("bundle")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")


# every command, in the order --help lists them
COMMANDS = {
    "models": _add_models,
    "targets": _add_targets,
    "train": _add_train,
    "build": _add_build,
    "bench": _add_bench,
    "report": _add_report,
    "compile": _add_compile,
    "predict": _add_predict,
    "demo": _add_demo,
    "inspect": _add_inspect,
    "time": _add_time,
    "env": _add_env,
    "samples": _add_samples,
    "verify": _add_verify,
}


def parser() -> argparse.ArgumentParser:
    """The whole command line: every command's arguments, help and examples."""
    p = _Parser(prog="edgevit", description="Vision Transformers from PyTorch to validated INT8 "
                                "on edge devices.")
    p.add_argument("--version", action="version", version=f"edgevit {__version__}")
    p.add_argument("--completion", choices=("bash", "zsh"), action=_Completion,
                   help="print a shell completion script: eval \"$(edgevit --completion bash)\" in ~/.bashrc")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, add in COMMANDS.items():
        add(sub)
        sub.choices[name].set_defaults(command=name)
    return p


class _Completion(argparse.Action):
    """``--completion SHELL``: print the script and exit, like ``--version``."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(completion_script(values), end="")
        parser.exit()


def completion_script(shell: str = "bash") -> str:
    """A bash (or zsh, through bashcompinit) completion script made from the parser itself: commands, each
    command's options, and the choices of options that have them; files and directories elsewhere."""
    import shlex

    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, cp in sub.choices.items():
        opts = sorted(o for a in cp._actions for o in a.option_strings if o.startswith("-"))
        choices = [(o, list(a.choices)) for a in cp._actions if a.choices for o in a.option_strings]
        lines = [f"        {name})"]
        for o, ch in choices:
            lines.append(f"            if [ \"$prev\" = {shlex.quote(o)} ]; then COMPREPLY=($(compgen -W "
                         f"{shlex.quote(' '.join(map(str, ch)))} -- \"$cur\")); return; fi")
        lines.append(f"            if [[ \"$cur\" == -* ]]; then COMPREPLY=($(compgen -W {shlex.quote(' '.join(opts))} "
                     "-- \"$cur\")); else COMPREPLY=($(compgen -f -- \"$cur\")); fi ;;")
        cases.append("\n".join(lines))
    head = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return head + f"""_edgevit() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do case "$w" in -*) ;; *) cmd="$w"; break ;; esac; done
    if [ -z "$cmd" ]; then COMPREPLY=($(compgen -W {shlex.quote(' '.join(sub.choices))} -- "$cur")); return; fi
    case "$cmd" in
{chr(10).join(cases)}
    esac
}}
complete -o filenames -F _edgevit edgevit
"""


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command: the same one the command line goes through."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def parser_default(command: str, dest: str):
    """The default of a command's option, as its parser declares it (one place for it)."""
    return command_parser(command).get_default(dest)


def with_config(argv: list[str]) -> list[str]:
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
    from edgevit._config import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file; pass a TOML file of build options") from None
    except Exception as e:  # a reader's one boundary (edgevit.errors.reading)
        raise UsageError(f"--config {path} is not valid TOML ({type(e).__name__}: {e})") from None
    options = {o: act for act in command_parser("build")._actions for o in act.option_strings if o.startswith("--")}
    extra: list[str] = []
    for key, value in cfg.items():
        opt = "--" + str(key).replace("_", "-")
        act = options.get(opt)
        if act is None or opt in ("--config", "--help"):
            known = ", ".join(sorted(o[2:].replace("-", "_") for o in options if o not in ("--config", "--help")))
            raise UsageError(f"--config {path}: unknown option {key!r}; the keys are build's options: {known}")
        if act.nargs == 0:  # a flag
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: {key} must be true or false, not {value!r}")
            extra += [opt] if value else []
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            extra += [opt, str(value)]
        else:
            raise UsageError(f"--config {path}: {key} must be a string or a number, not {value!r}")
    return [*argv[:at + 1], *extra, *rest]
