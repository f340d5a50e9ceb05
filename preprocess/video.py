"""Frames of a video for structure from motion: the sharpest frame of every ``1 / fps`` seconds.

Sharpness is the variance of the Laplacian of the grey frame (a blurred frame has weak second
derivatives, so a low variance); it is computed on a copy at most ``SHARP_WIDTH`` px wide, which
ranks frames the same as full size for motion blur and is several times faster. Only the best
frame of the current interval is held in memory, so a long video needs no more than two frames.
Frames are written as ``frame_00001.png`` ... through ``scene.atomic`` (temporary name + rename):
PNG, because the video is already lossy and a second lossy step measurably worsens the poses
(docs/capture.md).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import cv2

from scene.atomic import atomic_path
from scene.errors import UserError

SHARP_WIDTH = 640      # width of the copy the sharpness is measured on
DEFAULT_VIDEO_FPS = 30.0  # assumed when the container does not say its frame rate


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of ``frame`` (BGR or grey uint8), measured at <= SHARP_WIDTH px wide."""
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if grey.shape[1] > SHARP_WIDTH:
        h = max(1, round(grey.shape[0] * SHARP_WIDTH / grey.shape[1]))
        grey = cv2.resize(grey, (SHARP_WIDTH, h), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def extract_frames(video, out_dir, fps: float = 2.0, max_frames: int = 0, progress: bool = True,
                   log=print) -> list[str]:
    """Writes the sharpest frame of every ``1 / fps`` s of ``video`` into ``out_dir``; returns the file
    names in time order. ``max_frames`` > 0 stops after that many. A video OpenCV cannot open or
    decode is a ``UserError``."""
    from tqdm import tqdm

    video, out_dir = Path(video), Path(out_dir)
    if not video.is_file():
        raise UserError(f"{video}: video file not found")
    if not fps > 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UserError(f"{video}: cannot open the video (not a video file, or a codec OpenCV cannot decode)")
    try:
        vfps = cap.get(cv2.CAP_PROP_FPS)
        if not (vfps and math.isfinite(vfps) and vfps > 0):
            log(f"[capture] {video.name}: no frame rate in the container, assuming {DEFAULT_VIDEO_FPS:g}")
            vfps = DEFAULT_VIDEO_FPS
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        names: list[str] = []
        best, best_score, bucket, decoded = None, -1.0, None, 0

        def flush():
            name = f"frame_{len(names) + 1:05d}.png"
            with atomic_path(out_dir / name) as tmp:
                if not cv2.imwrite(str(tmp), best):
                    raise OSError(f"{out_dir / name}: cv2.imwrite failed")
            names.append(name)

        out_dir.mkdir(parents=True, exist_ok=True)
        with tqdm(total=total, desc="frames", unit="frame", disable=not progress, leave=False) as bar:
            while not (max_frames and len(names) >= max_frames):
                ok, frame = cap.read()
                if not ok:
                    break
                b = int(decoded / vfps * fps)  # the interval this frame falls in
                decoded += 1
                bar.update(1)
                if b != bucket and best is not None:
                    flush()
                    best, best_score = None, -1.0
                bucket = b
                s = sharpness(frame)
                if s > best_score:
                    best, best_score = frame, s
            if best is not None and not (max_frames and len(names) >= max_frames):
                flush()
    finally:
        cap.release()
    if not decoded:
        raise UserError(f"{video}: no frame could be decoded (an empty or corrupt video, or a codec OpenCV "
                        f"cannot decode: re-encode it, e.g. ffmpeg -i in.mov -c:v libx264 out.mp4)")
    log(f"[capture] {video.name}: {decoded} frames at {vfps:g} fps -> {len(names)} sharpest frames "
        f"({fps:g} per second)")
    return names
