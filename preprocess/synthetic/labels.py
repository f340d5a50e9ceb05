"""LERF-OVS-style labels of the synthetic scenes: which views and objects get labels.

The files (``label/<scene>/frame_XXXXX.json`` + ``gt/frame_XXXXX/<category>.png``) are written by
``scene/lerf_labels.py``, the format's owner; the gt mask of a category is exactly the ray caster's
object-id buffer (pixel centres) for that object.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scene.lerf_labels import write_labels


def choose_labelled_views(n_views: int, n_labelled: int, rng: np.random.Generator) -> list[int]:
    """Which views get labels: ``n_labelled`` distinct view indices spread evenly over the orbit
    (random phase). (``scene.lerf_labels.labelled_frames`` lists the frames a label folder has.)"""
    phase = rng.uniform(0.2, 0.8)
    idx = sorted({min(int((k + phase) * n_views / n_labelled), n_views - 1) for k in range(n_labelled)})
    return idx


def frame_categories(obj: np.ndarray, names: list[str], min_area: int) -> list[int]:
    """Objects covering at least ``min_area`` pixels of the id buffer ``obj`` [H,W]."""
    area = np.bincount(obj[obj >= 0].ravel(), minlength=len(names))
    return [o for o in range(len(names)) if area[o] >= min_area]


def write_frame_labels(label_dir: Path, frame: str, image_file: str, obj: np.ndarray,
                       names: list[str], min_area: int) -> list[str]:
    """Labels of one frame from the ray caster's object-id buffer ``obj`` [H,W] (through
    ``scene.lerf_labels.write_labels``); returns the categories written."""
    masks = {names[o]: obj == o for o in frame_categories(obj, names, min_area)}
    return write_labels(label_dir, frame, image_file, obj.shape[0], obj.shape[1], masks)
