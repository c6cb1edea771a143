"""``edgevit demo``: live classification from a camera, CSI camera, stream, video file or image directory.

capture (own thread) → preprocess (the bundle's recorded preprocessing) → inference (the bundle's runtime) →
postprocess (softmax, top-k, overlay) → window and/or annotated video and JSON lines. Live sources keep only the
newest frame, so a slow model never builds up latency, and are reopened with back-off when they drop; files and
directories are read frame by frame, in order, to their end."""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit._progress import say
from edgevit.errors import SourceError, UsageError
from edgevit.runtime._opencv import cv2 as _cv2
from edgevit.runtime._opencv import opencv_has
from edgevit.runtime.sinks import DISPLAY, VIDEO_CODECS, check_sinks, display_available, open_sink

__all__ = ["Capture", "FrameSource", "SourceError", "display_available", "opencv_has", "open_source", "run_demo"]

STAGES = ("capture", "preprocess", "inference", "postprocess")


# ------------------------------------------------------------------------------------------------------ sources
@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR uint8, as OpenCV delivers it
    capture_ms: float
    name: str = ""  # file name for directory sources


class FrameSource:
    """One opened source. ``read()`` returns a BGR frame, or None at the end (or when a live source drops)."""

    live = False
    kind = "source"

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def fps(self) -> float | None:
        return None


class CaptureSource(FrameSource):
    def __init__(self, spec: str, target, kind: str, live: bool, api: int | None = None) -> None:
        cv2 = _cv2()
        self.spec, self.kind, self.live = spec, kind, live
        self.cap = cv2.VideoCapture(target, api) if api is not None else cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(f"cannot open {kind} source {spec!r}" + _source_hint(kind, spec))

    def read(self):
        ok, frame = self.cap.read()
        return frame if ok and frame is not None else None

    def close(self) -> None:
        self.cap.release()

    @property
    def fps(self):
        f = self.cap.get(_cv2().CAP_PROP_FPS)
        return f if f and 0 < f < 1000 else None


class DirectorySource(FrameSource):
    kind = "directory"

    def __init__(self, path: Path) -> None:
        from edgevit.runtime.images import IMAGE_EXTENSIONS

        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise SourceError(f"cannot open directory source {str(path)!r}: it holds no image files")
        self._i = 0
        self.current = ""

    def read(self):
        from edgevit.runtime.images import load_image

        if self._i >= len(self.files):
            return None
        p = self.files[self._i]
        self._i += 1
        self.current = p.name
        rgb = np.asarray(load_image(p).convert("RGB"))
        return np.ascontiguousarray(rgb[..., ::-1])


def _source_hint(kind: str, spec: str) -> str:
    if kind == "csi":
        return "; is the camera connected and nvargus-daemon running?"
    if kind == "camera":
        return "; check that the camera exists (ls /dev/video*) and that no other program holds it"
    if kind == "stream":
        return "; check the URL and that the stream is reachable from this device"
    return "; check the path and that it is a video OpenCV (FFmpeg) can decode"


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), as jetson-inference and JetPack use."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
            "video/x-raw, format=BGR ! appsink drop=true max-buffers=1")


def open_source(spec: str) -> FrameSource:
    """``0`` / ``/dev/video0`` (V4L2 camera), ``csi://0`` (Jetson CSI camera), ``rtsp://…``, ``http(s)://…``,
    ``file://…`` or a video path, or a directory of images."""
    cv2 = _cv2()
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, int(spec), "camera", live=True, api=getattr(cv2, "CAP_V4L2", None)
                             if sys.platform.startswith("linux") else None)
    if spec.startswith("/dev/video"):
        return CaptureSource(spec, spec, "camera", live=True, api=getattr(cv2, "CAP_V4L2", None))
    if spec.startswith("v4l2://"):
        return open_source(spec[len("v4l2://"):])
    if spec.startswith("csi://"):
        if not opencv_has("GStreamer"):
            raise SourceError(f"{spec} needs OpenCV built with GStreamer (as JetPack ships it); the installed OpenCV "
                              f"{cv2.__version__} has none — on a Jetson, use the system python3-opencv")
        n = spec[len("csi://"):] or "0"
        if not n.isdigit():
            raise SourceError(f"bad CSI source {spec!r}: expected csi://N with N the sensor id")
        return CaptureSource(spec, csi_pipeline(int(n)), "csi", live=True, api=cv2.CAP_GSTREAMER)
    if spec.startswith(("rtsp://", "http://", "https://", "rtmp://")):
        return CaptureSource(spec, spec, "stream", live=True, api=cv2.CAP_FFMPEG)
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)
    if path.is_dir():
        return DirectorySource(path)
    if not path.is_file():
        raise SourceError(f"cannot open source {spec!r}: no such file, directory, camera or URL "
                          "(use 0 or /dev/video0, csi://0, rtsp://…, a video file or an image directory)")
    return CaptureSource(spec, str(path), "file", live=False)


# ------------------------------------------------------------------------------------------------ capture thread
class Capture:
    """Reads frames on its own thread. Live sources keep only the newest frame (older ones are dropped and
    counted) and are reopened with exponential back-off when they stop delivering; finite sources hand over every
    frame in order and end."""

    def __init__(self, opener: Callable[[], FrameSource], max_fps: float | None = None, reconnects: int = 10,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0) -> None:
        self._opener, self._max_fps = opener, max_fps
        self._reconnects, self._backoff, self._max_backoff = reconnects, backoff_s, max_backoff_s
        self.source = opener()
        self.live = self.source.live
        self._q: queue.Queue = queue.Queue(maxsize=1 if self.live else 4)
        self._stop = threading.Event()
        self._done = threading.Event()  # set once the reader has put its last frame
        self.dropped = 0
        self.reopened = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="edgevit-capture", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        if self.live:
            try:
                self._q.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
            self._q.put_nowait(item)
        else:
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

    def _reopen(self) -> bool:
        delay = self._backoff
        for attempt in range(1, self._reconnects + 1):
            say(f"source dropped; reopening in {delay:.1f}s (attempt {attempt}/{self._reconnects})")
            if self._stop.wait(delay):
                return False
            try:
                self.source.close()
                self.source = self._opener()
                self.reopened += 1
                return True
            except SourceError:
                delay = min(delay * 2, self._max_backoff)
        return False

    def _run(self) -> None:
        index, last = 0, 0.0
        try:
            while not self._stop.is_set():
                if self._max_fps:
                    wait = last + 1.0 / self._max_fps - time.perf_counter()
                    if wait > 0 and self._stop.wait(wait):
                        break
                t0 = time.perf_counter()
                img = self.source.read()
                ms = (time.perf_counter() - t0) * 1000
                if img is None:
                    if self.live and self._reopen():
                        continue
                    break
                last = t0
                self._put(Frame(index, img, ms, getattr(self.source, "current", "")))
                index += 1
        except Exception as e:  # surfaced by frames() in the main thread
            self.error = e
        finally:
            self._done.set()

    def frames(self) -> Iterator[Frame]:
        while True:
            try:
                yield self._q.get(timeout=0.05)
            except queue.Empty:
                if self._done.is_set() and self._q.empty():
                    if self.error:
                        raise self.error from None
                    return

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
        self.source.close()


# ----------------------------------------------------------------------------------------------------- overlay
def draw_overlay(img: np.ndarray, top: list[tuple[str, float]], fps: float, stage_ms: dict) -> np.ndarray:
    cv2 = _cv2()
    out = img.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 480)
    lines = [f"{label}: {score * 100:.1f}%" for label, score in top]
    lines.append(f"{fps:.1f} FPS")
    lines.append(" ".join(f"{k[:3]} {stage_ms[k]:.1f}" for k in STAGES) + " ms")
    y = int(22 * scale) + 4
    for i, text in enumerate(lines):
        color = (0, 255, 0) if i == 0 else (255, 255, 255)
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, 1, cv2.LINE_AA)
        y += int(24 * scale) + 2
    return out


@dataclass
class DemoSummary:
    source: str
    frames: int = 0
    seconds: float = 0.0
    dropped: int = 0
    reopened: int = 0
    stopped_by_user: bool = False
    stopped_by: str = "Ctrl-C"
    headless: bool = True
    stage_ms: dict = field(default_factory=dict)  # stage -> {"mean", "p90"}
    outputs: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        stages = "  ".join(f"{k} {v['mean']:.2f}/{v['p90']:.2f}" for k, v in self.stage_ms.items())
        end = f"stopped by {self.stopped_by}" if self.stopped_by_user else "end of source"
        lines = [f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} FPS), {end}; "
                 f"{self.dropped} stale frames dropped, {self.reopened} reconnects",
                 f"per frame, mean/p90 ms: {stages}"]
        lines += [f"wrote {o}" for o in self.outputs]
        return "\n".join(lines)


def run_demo(bundle: str | os.PathLike, source: str, *, output: str | None = None, jsonl: str | None = None,
             headless: bool | None = None, max_fps: float | None = None, max_frames: int | None = None,
             top_k: int = 3, threads: int | None = None, opener: Callable[[], FrameSource] | None = None,
             reconnects: int = 10, backoff_s: float = 0.5, force: bool = False) -> DemoSummary:
    """Run the demo loop, capture → classify → render to every sink, until the source ends, ``max_frames`` frames,
    q/Esc in the window, Ctrl-C or SIGTERM (all of which finish the outputs). ``output`` and ``jsonl`` are sink
    specs (see :mod:`edgevit.runtime.sinks`); an existing file is replaced only with ``force``."""
    from edgevit.runtime.predict import Predictor

    if max_fps is not None and not 0 < max_fps < float("inf"):
        raise UsageError("--max-fps must be a positive number")
    if max_frames is not None and max_frames < 1:
        raise UsageError("--max-frames must be at least 1")
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if output and Path(output).suffix.lower() not in VIDEO_CODECS:
        raise UsageError(f"--output must end in one of {', '.join(VIDEO_CODECS)}, got {output!r}")
    specs = [s for s in (output, jsonl and f"jsonl://{jsonl}") if s]  # --jsonl is JSON lines, whatever its name
    check_sinks(specs, force)
    pred = Predictor(bundle, threads=threads)
    headless = _headless(headless, bool(specs))
    cap = Capture(opener or (lambda: open_source(source)), max_fps=max_fps, reconnects=reconnects,
                  backoff_s=backoff_s)
    summary = DemoSummary(source=source, headless=headless)
    sinks: list = []
    times: dict[str, list] = {k: [] for k in STAGES}
    t_start, ok = time.perf_counter(), False
    try:
        sinks += [open_sink(s, cap.source.fps) for s in specs + ([] if headless else [DISPLAY])]
        ok = _loop(cap, pred, sinks, top_k, max_frames, summary, times, t_start)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated): keep what was recorded
        summary.stopped_by_user, ok = True, True
        summary.stopped_by = "SIGTERM" if getattr(e, "signum", None) else "Ctrl-C"
    finally:
        summary.seconds = time.perf_counter() - t_start
        cap.close()
        summary.dropped, summary.reopened = cap.dropped, cap.reopened
        summary.outputs = [p for p in (s.close(ok) for s in sinks) if p]
    summary.stage_ms = {k: {"mean": round(float(np.mean(v)), 3), "p90": round(float(np.percentile(v, 90)), 3)}
                        for k, v in times.items() if v}
    return summary


def _headless(headless: bool | None, has_outputs: bool) -> bool:
    show, why = display_available()
    if headless is None:
        if not show:
            say(f"running headless: {why}" + ("" if has_outputs else "; pass --output/--jsonl to keep results"))
        return not show
    if not headless and not show:
        raise UsageError(f"cannot open a window: {why}; run with --headless and --output/--jsonl")
    return headless


def _loop(cap: Capture, pred, sinks: list, top_k: int, max_frames: int | None, summary: DemoSummary,
          times: dict, t_start: float) -> bool:
    """capture → classify → render, frame by frame, until the source ends, the frame limit, or a sink asks to stop
    (q/Esc in the window); True once it has ended without an error."""
    from PIL import Image

    from edgevit.runtime.predict import softmax

    wants_image = any(s.wants_image for s in sinks)
    last_post = 0.0
    for frame in cap.frames():
        t0 = time.perf_counter()  # classify
        x = pred.preprocessing(Image.fromarray(np.ascontiguousarray(frame.image[..., ::-1])))[None]
        t1 = time.perf_counter()
        logits = pred.runner(x)[0]
        t2 = time.perf_counter()
        top = pred.top(softmax(logits), top_k)
        stage = {"capture": frame.capture_ms, "preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}
        elapsed = time.perf_counter() - t_start
        fps = (summary.frames + 1) / elapsed if elapsed > 0 else 0.0
        # render: this frame's postprocess is not over yet, so the overlay shows the previous one's
        annotated = draw_overlay(frame.image, top, fps, {**stage, "postprocess": last_post}) if wants_image else None
        stage["postprocess"] = last_post = (time.perf_counter() - t2) * 1000
        record = {"frame": frame.index, "time": round(time.time(), 3),
                  "top": [{"label": lb, "score": round(s, 5)} for lb, s in top],
                  "ms": {k: round(v, 3) for k, v in stage.items()}, **({"image": frame.name} if frame.name else {})}
        go_on = all([s.write(record, annotated) for s in sinks])
        for k in STAGES:
            times[k].append(stage[k])
        summary.frames += 1
        if not go_on or (max_frames and summary.frames >= max_frames):
            break
    return True
