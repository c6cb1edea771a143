"""The command line as a user meets it: subprocesses, exit codes, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = {**os.environ, "EDGEVIT_QUIET": "1"}
    p = subprocess.run([sys.executable, "-m", "edgevit", *args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=600)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_help_and_listings():
    assert run("--help").returncode == 0
    p = run("models")
    assert p.returncode == 0
    for alias in ("vit-tiny-fmnist", "hybrid-tiny", "maxvit-pico", "mobilenetv3-large", "resnet50"):
        assert alias in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 100
    p = run("targets")
    assert p.returncode == 0 and "cpu-x86" in p.stdout and "openvino" in p.stdout
    orin = next(line for line in p.stdout.splitlines() if line.startswith("jetson-orin "))
    if "x86_64" in os.uname().machine:  # an x86 workstation prepares Jetson bundles; the board builds the engine
        assert " prepare " in orin and "needs an aarch64 host, this is x86_64" in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 100  # fits a terminal
    assert "(default)" in next(line for line in p.stdout.splitlines() if line.startswith("cpu-x86 "))


@pytest.mark.parametrize("command", ["models", "targets", "train", "build", "bench", "report", "compile", "predict",
                                     "demo", "inspect", "time", "env", "samples", "verify"])
def test_every_command_says_what_it_is_for_with_examples(command):
    from edgevit.cli_args import command_parser

    text = command_parser(command).format_help()
    desc = text.split("\n\n")[1]
    assert len(desc.split()) >= 5 and not desc.startswith(("usage", "options"))  # a description, not just usage
    examples = text.split("examples:\n")[1].splitlines()
    assert examples and all(e.strip().startswith(("edgevit ", "torchrun ")) and command in e for e in examples)
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_build_config_file_is_the_same_options(tmp_path, capsys):
    from edgevit.cli import main
    from edgevit.cli_args import parser, with_config

    cfg = tmp_path / "build.toml"
    cfg.write_text('model = "vit-tiny-fmnist"\nprecision = "fp32"\nqat_epochs = 0\nkeep_failed = true\n'
                   'threads = 2\n')
    a = parser().parse_args(with_config(["build", "--config", str(cfg), "--threads", "1"]))
    assert (a.model, a.precision, a.keep_failed, a.threads) == ("vit-tiny-fmnist", "fp32", True, 1)  # CLI wins
    cfg.write_text('model = "vit-tiny-fmnist"\nthreads = 0\n')  # checked by the same validators as the CLI
    with pytest.raises(SystemExit) as e:
        main(["build", "--config", str(cfg)])
    assert e.value.code == 2 and "--threads: 0 is out of range" in capsys.readouterr().err
    for text, says in [('model = "x"\nmodle = "y"\n', "unknown option 'modle'"),
                       ('distill = "yes"\n', "distill must be true or false"),
                       ("model = [\n", "is not valid TOML")]:
        cfg.write_text(text)
        assert main(["build", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    assert main(["build", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_quiet_and_verbose(fmnist_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEVIT_QUIET", "EDGEVIT_VERBOSE")}

    def train(before=(), after=()):
        p = subprocess.run([sys.executable, "-m", "edgevit", *before, "train", "--model", "vit-tiny-fmnist",
                            "--data", f"fashion-mnist:{fmnist_dir}", "--out", str(tmp_path / "r"), "--epochs", "1",
                            "--limit", "64", *after], capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        return p

    normal = train()
    assert "training vit-tiny-fmnist" in normal.stderr and "epoch 1/1" in normal.stderr
    assert "trained vit-tiny-fmnist" in normal.stdout
    quiet = train(before=["-q"])  # before the command
    assert quiet.stderr.strip() == "" and "trained vit-tiny-fmnist" in quiet.stdout
    quiet = train(after=["--quiet"])  # or after it
    assert quiet.stderr.strip() == ""


@pytest.mark.parametrize("args,code,pattern", [
    (["build", "--model", "vit-tinny-fmnist"], 2, "unknown model 'vit-tinny-fmnist'; did you mean 'vit-tiny-fmnist'"),
    (["build", "--model", "vit-tiny-fmnist", "--target", "cpu-x68"], 2, "unknown target 'cpu-x68'; did you mean"),
    (["build", "--model", "vit-tiny-fmnist", "--precision", "int4"], 2, "unknown precision for target cpu-x86 'int4'"),
    (["build", "--model", "vit-tiny-fmnist", "--data", "fashion-mnist:/nonexistent/fm"], 2,
     "apt-get install dataset-fashion-mnist"),
    (["train", "--model", "vit-tiny-fmnist", "--data", "imagefolder:/nonexistent", "--out", "x"], 2,
     "image folder not found"),
    (["train", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", "x", "--limit", "0"], 2,
     "--limit: 0 is out of range 1.."),
    (["predict", "/nonexistent/bundle", "x.png"], 1, "bundle not found"),
    (["build"], 2, "required: --model"),
])
def test_errors_are_one_line_with_exit_code(args, code, pattern, tmp_path):
    p = run(*args, cwd=tmp_path)
    assert p.returncode == code, p.stderr
    assert pattern in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) <= 3
    assert not (tmp_path / "build").exists() and not (tmp_path / "x").exists()


def test_bad_weights_file(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"garbage")
    p = run("build", "--model", "vit-tiny-fmnist", "--precision", "fp32", "--weights", str(tmp_path / "w.pt"),
            "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert p.returncode == 2 and "cannot read weights" in p.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_build_predict_verify_round_trip(fmnist_dir, tiny_checkpoint, tmp_path, png):
    p = run("build", "--model", "vit-tiny-fmnist", "--weights", str(tiny_checkpoint), "--data",
            f"fashion-mnist:{fmnist_dir}", "--target", "cpu-x86", "--precision", "int8", "--out", str(tmp_path),
            "--calibration", "fast")
    assert p.returncode == 0, p.stderr
    assert "accuracy" in p.stdout and "latency" in p.stdout and "INT8" in p.stdout
    bundle = tmp_path / "vit-tiny-fmnist-cpu-x86-int8"
    assert run("verify", str(bundle)).returncode == 0
    p = run("predict", str(bundle), str(png), "--json", "-k", "2")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["image"] == str(png) and len(out["top"]) == 2 and out["top"][0]["score"] >= out["top"][1]["score"]
    # an unreadable image: exit 2, one line
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    p = run("predict", str(bundle), str(bad))
    assert p.returncode == 2 and "cannot read image" in p.stderr
    # tampered bundle: exit 1
    labels = bundle / "labels.txt"
    labels.write_text(labels.read_text().replace("Trouser", "Trousxr"))
    p = run("predict", str(bundle), str(png))
    assert p.returncode == 1 and "labels.txt does not match its sha256" in p.stderr


def test_sigterm_mid_build_leaves_nothing(tmp_path):
    import signal
    import time

    env = {**os.environ, "EDGEVIT_QUIET": "1"}
    p = subprocess.Popen([sys.executable, "-m", "edgevit", "build", "--model", "vit-tiny-fmnist", "--data",
                          "synthetic", "--precision", "int8", "--out", str(tmp_path)], env=env,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".*tmp*")) and p.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".*tmp*")), "the build should be staging its bundle"
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_closed_pipe_ends_quietly_like_a_unix_tool():
    """`edgevit targets | head -1`: no BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "edgevit", "targets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "EDGEVIT_QUIET": "1"})
    p.stdout.close()  # the reader is gone before edgevit writes its first line
    err = p.stderr.read()
    p.wait(timeout=300)
    assert err == b"", err  # not a traceback, not even an error line


def test_samples_writes_real_labelled_images_that_predict_reads(fmnist_dir, int8_bundle, tmp_path, capsys):
    from edgevit.cli import main

    out = tmp_path / "samples"
    assert main(["samples", "--data", f"fashion-mnist:{fmnist_dir}", "--out", str(out), "-n", "6"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6 and len({p.name.split("_", 1)[1] for p in pngs}) == 6  # balanced over classes
    assert main(["samples", "--data", f"fashion-mnist:{fmnist_dir}", "--out", str(out), "-n", "3"]) == 0  # ours
    assert len(list(out.glob("*.png"))) == 3
    capsys.readouterr()
    assert main(["predict", str(int8_bundle), str(next(out.glob("*.png"))), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["top"]
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"x")
    assert main(["samples", "--data", f"fashion-mnist:{fmnist_dir}", "--out", str(mine)]) == 2
    assert [p.name for p in mine.iterdir()] == ["cat.jpg"]


def test_help_shows_defaults():
    from edgevit.cli_args import command_parser

    text = " ".join(command_parser("build").format_help().split())
    assert "(default: cpu-x86)" in text and "(default: int8)" in text and "(default: None)" not in text


def test_shell_completion_completes_commands_options_and_choices(tmp_path):
    """The script ``edgevit --completion bash`` prints, run by a real bash: commands, a command's options, and the
    choices of an option."""
    import shutil

    if not shutil.which("bash"):
        pytest.skip("no bash")
    script = subprocess.run([sys.executable, "-m", "edgevit", "--completion", "bash"], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout

    def complete(*words: str) -> list[str]:
        words_sh = " ".join(f"'{w}'" for w in words)
        probe = (f"{script}\nCOMP_WORDS=(edgevit {words_sh})\nCOMP_CWORD={len(words)}\n_edgevit\n"
                 'printf "%s\\n" "${COMPREPLY[@]}"\n')
        r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert "build" in complete("bu") and "bench" in complete("b")
    assert "--measure" in complete("build", "--mea")
    assert complete("build", "--measure", "") == ["quick", "full"]
