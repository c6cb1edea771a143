"""OpenCV, imported on first use (the demo's optional dependency), and what the installed build can do."""

from __future__ import annotations

from edgevit.errors import EdgevitError


def cv2():
    try:
        import cv2
    except ImportError:
        raise EdgevitError("the demo needs OpenCV: pip install 'edgevit[demo]' (or use JetPack's OpenCV on a "
                           "Jetson)") from None
    return cv2


def opencv_has(feature: str) -> bool:
    """Whether the installed OpenCV was built with ``feature`` (GStreamer, FFMPEG, V4L/V4L2, GUI)."""
    info = cv2().getBuildInformation()
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip().lower() == feature.lower():
            return value.strip().upper().startswith("YES") or (feature == "GUI" and value.strip() not in ("NONE", ""))
    return False
