"""The camera demo on what runs here: video files, image directories, a simulated dropping live source."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="the demo needs OpenCV: pip install 'edgevit[demo]'")

from edgevit.runtime.demo import Capture, FrameSource, SourceError, display_available, open_source, run_demo  # noqa: E402
from edgevit.runtime.predict import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def video(fmnist_dir, tmp_path_factory):
    """An .avi (MJPG) of 12 upscaled test images of the generated Fashion-MNIST-shaped set."""
    from edgevit.data import load_dataset

    ds = load_dataset(f"fashion-mnist:{fmnist_dir}")
    p = tmp_path_factory.mktemp("video") / "fm.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (112, 112))
    for i in range(12):
        img = cv2.resize(ds.val.arrays[i], (112, 112), interpolation=cv2.INTER_NEAREST)
        w.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    w.release()
    return p


def _decoded(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def test_video_file_to_annotated_video_and_jsonl_agreeing_with_predict(int8_bundle, video, tmp_path):
    from PIL import Image

    out, jl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    s = run_demo(int8_bundle, str(video), output=str(out), jsonl=str(jl))
    assert s.frames == 12 and not s.stopped_by_user and s.headless
    recs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(12))
    assert set(recs[0]["ms"]) == {"capture", "preprocess", "inference", "postprocess"}
    frames = _decoded(video)
    probs = Predictor(int8_bundle).probabilities([Image.fromarray(f[..., ::-1]) for f in frames])
    labels = Predictor(int8_bundle).labels
    assert [r["top"][0]["label"] for r in recs] == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([r["top"][0]["score"] for r in recs], probs.max(1), atol=1e-4)
    written = _decoded(out)
    assert len(written) == 12 and written[0].shape == (112, 112, 3)
    assert not list(tmp_path.glob(".*partial*"))
    assert "12 frames" in s.text() and "inference" in s.text() and "FPS" in s.text()


def test_image_directory_source(int8_bundle, fmnist_dir, tmp_path):
    from PIL import Image

    from edgevit.data import load_dataset

    ds = load_dataset(f"fashion-mnist:{fmnist_dir}")
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        Image.fromarray(ds.val.arrays[i]).save(d / f"{i:02d}.png")
    jl = tmp_path / "d.jsonl"
    s = run_demo(int8_bundle, str(d), jsonl=str(jl))
    recs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert s.frames == 5 and [r["image"] for r in recs] == [f"{i:02d}.png" for i in range(5)]
    expect = Predictor(int8_bundle).predict_files(sorted(d.iterdir()), k=1)
    assert [r["top"][0]["label"] for r in recs] == [p.top[0][0] for p in expect]


class FlakyCamera(FrameSource):
    """A live source that delivers ``n`` frames per connection, then drops."""

    live = True
    kind = "camera"

    def __init__(self, n, delay=0.0):
        self.n, self.delay = n, delay

    def read(self):
        if self.n == 0:
            return None
        self.n -= 1
        if self.delay:
            import time

            time.sleep(self.delay)
        return np.full((40, 40, 3), 200, np.uint8)


def test_dropping_live_source_is_reopened_with_backoff(int8_bundle):
    opens = {"n": 0}

    def opener():
        opens["n"] += 1
        if opens["n"] > 3:
            raise SourceError("camera gone")
        return FlakyCamera(4, delay=0.01)

    s = run_demo(int8_bundle, "fake-camera", opener=opener, reconnects=2, backoff_s=0.01)
    assert s.reopened == 2  # opened, dropped, reopened twice, then gave up after 2 failed attempts
    assert opens["n"] == 5
    assert 1 <= s.frames <= 12


def test_live_capture_keeps_only_the_newest_frame():
    import time

    cap = Capture(lambda: FlakyCamera(200), reconnects=0)
    time.sleep(0.2)  # a slow consumer
    got = list(cap.frames())
    cap.close()
    assert cap.dropped > 0 and len(got) < 200
    assert got[-1].index == 199  # the newest frame always arrives


def test_ctrl_c_finishes_outputs(int8_bundle, video, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_init = Predictor.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        run = self.runner

        def interrupted(x):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return run(x)

        self.runner = interrupted

    monkeypatch.setattr(Predictor, "__init__", init)
    out = tmp_path / "o.avi"
    s = run_demo(int8_bundle, str(video), output=str(out))
    assert s.stopped_by_user and s.frames == 3 and "Ctrl-C" in s.text()
    assert len(_decoded(out)) == 3


def test_headless_choice_and_source_errors(int8_bundle, tmp_path, monkeypatch):
    ok, why = display_available()
    if not ok:
        with pytest.raises(SourceError.__mro__[1], match="cannot open a window"):
            run_demo(int8_bundle, str(tmp_path), headless=False)
    with pytest.raises(SourceError, match="no such file, directory, camera or URL"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open file source"):
        open_source(str(tmp_path / "bad.mp4"))
    from edgevit.runtime.demo import opencv_has

    if not opencv_has("GStreamer"):
        with pytest.raises(SourceError, match="GStreamer"):
            open_source("csi://0")


def test_cli_demo_unopenable_source_and_headless(int8_bundle, video, tmp_path):
    env = {**os.environ, "EDGEVIT_QUIET": "", "DISPLAY": ""}
    p = subprocess.run([sys.executable, "-m", "edgevit", "demo", str(int8_bundle), "--source", "/dev/video99"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "cannot open camera source '/dev/video99'" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "edgevit", "demo", str(int8_bundle), "--source", str(video),
                        "--jsonl", str(tmp_path / "c.jsonl"), "--max-frames", "5"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "running headless" in p.stderr and "5 frames" in p.stdout
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 5


def test_sigterm_finishes_outputs_like_ctrl_c(int8_bundle, fmnist_dir, tmp_path):
    """``systemctl stop`` sends SIGTERM: the demo must keep its JSON lines and video, not discard them."""
    import signal
    import time

    from PIL import Image

    from edgevit.data import load_dataset

    frames = tmp_path / "frames"
    frames.mkdir()
    arr = load_dataset(f"fashion-mnist:{fmnist_dir}").val.arrays
    for i in range(400):
        Image.fromarray(arr[i % len(arr)]).save(frames / f"{i:03d}.png")
    out, lines = tmp_path / "o.avi", tmp_path / "o.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "edgevit", "demo", str(int8_bundle), "--source", str(frames),
                          "--headless", "--max-fps", "10", "--output", str(out), "--jsonl", str(lines)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "EDGEVIT_QUIET": "1"})
    def partial():  # an unpredictable name beside the output (edgevit.outputs.temp_file_beside)
        return [f for f in tmp_path.glob(".o.jsonl.*.partial.jsonl") if f.stat().st_size > 0]

    deadline = time.time() + 120
    while time.time() < deadline and not partial():
        time.sleep(0.2)
    assert partial(), "the demo never started writing"
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr  # a clean stop: outputs finished, summary printed
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr
    recs = [json.loads(x) for x in lines.read_text().splitlines()]
    assert 1 <= len(recs) < 400 and len(_decoded(out)) == len(recs)
    assert not list(tmp_path.glob(".o.*partial*"))


def test_a_symlink_planted_at_the_old_temporary_name_is_never_followed(int8_bundle, video, tmp_path):
    """A shared output folder where someone planted links under the names the demo once wrote to: the demo's
    temporary files are made with O_EXCL under unpredictable names, so the links' targets stay untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".o.jsonl.partial.jsonl", ".o.avi.partial.avi", ".o.jsonl.partial", ".o.avi.partial"):
        (tmp_path / name).symlink_to(victim)
    s = run_demo(int8_bundle, str(video), output=str(tmp_path / "o.avi"), jsonl=str(tmp_path / "o.jsonl"))
    assert s.frames == 12 and victim.read_text() == "precious"
    for out in ("o.avi", "o.jsonl"):
        assert (tmp_path / out).is_file() and not (tmp_path / out).is_symlink()
    assert all((tmp_path / n).is_symlink() for n in (".o.jsonl.partial.jsonl", ".o.avi.partial.avi"))
