"""The demo's outputs, each a sink opened from a spec, as jetson-inference opens a ``videoOutput`` from a URI:

- ``display://0``: a window (q or Esc stops the demo);
- ``PATH.mp4`` / ``.avi`` / ``.mkv`` / ``.mov`` (or ``file://PATH``): the annotated video;
- ``PATH.jsonl`` (or ``jsonl://PATH``, whatever the name): one JSON line per frame (top-k, per-stage ms).

Files are written under a temporary name beside the final path and renamed only when the demo ends well; an existing
file is replaced only with ``force``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from edgevit.errors import EdgevitError, UsageError
from edgevit.runtime._opencv import cv2 as _cv2
from edgevit.runtime._opencv import opencv_has

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}
DISPLAY = "display://0"


def display_available() -> tuple[bool, str]:
    if not opencv_has("GUI"):
        return False, f"OpenCV {_cv2().__version__} has no GUI support"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    return True, "ok"


class Sink:
    """One output. :meth:`write` gets every frame's record and, where :attr:`wants_image`, the annotated image; it
    returns False when the user asked to stop. :meth:`close` returns the path it wrote, if any."""

    wants_image = False

    def write(self, record: dict, annotated: np.ndarray | None) -> bool:
        return True

    def close(self, ok: bool) -> str | None:
        return None


class _FileSink(Sink):
    """A file written to a temporary name beside its final path and renamed when finished."""

    def __init__(self, final: Path) -> None:
        from edgevit.outputs import temp_file_beside

        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_file_beside(self.final, self.final.suffix)  # unpredictable, O_EXCL: no planted symlink
        self.opened = False

    def _finish(self) -> None: ...

    def close(self, ok: bool) -> str | None:
        self._finish()
        if ok and self.opened and self.tmp.is_file() and not self.tmp.is_symlink():
            os.replace(self.tmp, self.final)
            return str(self.final)
        self.tmp.unlink(missing_ok=True)
        return None


class VideoSink(_FileSink):
    wants_image = True

    def __init__(self, final: Path, fps: float | None) -> None:
        super().__init__(final)
        self.fps, self.writer, self.size = fps or 30.0, None, None

    def write(self, record: dict, annotated: np.ndarray | None) -> bool:
        cv2 = _cv2()
        if self.writer is None:
            h, w = annotated.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.final.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            self.opened = True
            if not self.writer.isOpened():
                raise EdgevitError(f"cannot write video {self.final}: OpenCV has no encoder for it")
            self.size = (w, h)
        if annotated.shape[1::-1] != self.size:
            annotated = cv2.resize(annotated, self.size)
        self.writer.write(annotated)
        return True

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.release()


class JsonLinesSink(_FileSink):
    def __init__(self, final: Path) -> None:
        super().__init__(final)
        self.f = open(self.tmp, "r+")  # noqa: SIM115 - the file we created; closed in _finish, whatever ends the demo
        self.opened = True

    def write(self, record: dict, annotated: np.ndarray | None) -> bool:
        from edgevit.outputs import dumps

        self.f.write(dumps(record) + "\n")
        return True

    def _finish(self) -> None:
        self.f.close()


class WindowSink(Sink):
    wants_image = True

    def write(self, record: dict, annotated: np.ndarray | None) -> bool:
        cv2 = _cv2()
        cv2.imshow("edgevit", annotated)
        return cv2.waitKey(1) & 0xFF not in (27, ord("q"))

    def close(self, ok: bool) -> str | None:
        _cv2().destroyAllWindows()
        return None


def sink_kind(spec: str) -> str:
    """'display', 'video' or 'jsonl' for a sink spec; UsageError for anything else."""
    if spec.startswith("display://"):
        return "display"
    if spec.startswith("jsonl://"):
        return "jsonl"
    suffix = _path(spec).suffix.lower()
    if suffix in VIDEO_CODECS:
        return "video"
    if suffix == ".jsonl":
        return "jsonl"
    raise UsageError(f"cannot write {spec!r}: an output is {DISPLAY}, a video ({', '.join(VIDEO_CODECS)}) or "
                     "JSON lines (.jsonl)")


def check_sinks(specs: list[str], force: bool) -> None:
    """Refuse, before the demo starts, two outputs to one file and any file edgevit may not replace."""
    from edgevit.outputs import check_output_file

    files = {s: _path(s) for s in specs if sink_kind(s) != "display"}
    if len({f.resolve() for f in files.values()}) < len(files):
        raise UsageError("--output and --jsonl name the same file; pass two paths")
    for spec, f in files.items():
        check_output_file(f, "--jsonl" if sink_kind(spec) == "jsonl" else "--output", force)


def open_sink(spec: str, fps: float | None = None) -> Sink:
    kind = sink_kind(spec)
    if kind == "display":
        return WindowSink()
    return VideoSink(_path(spec), fps) if kind == "video" else JsonLinesSink(_path(spec))


def _path(spec: str) -> Path:
    return Path(spec.removeprefix("file://").removeprefix("jsonl://"))
