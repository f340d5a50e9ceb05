"""LERF-OVS-style labels of the synthetic scenes (LangSplat annotation format).

``label/<scene>/frame_XXXXX.json`` (labelme style)::

    {"info": {"name": "frame_XXXXX.png", "width": W, "height": H},
     "objects": [{"category": "red apple", "bbox": [x1, y1, x2, y2],
                  "segmentation": [[x, y], ...]}, ...]}

one entry per outer contour (``cv2.findContours``) of the category's ground-truth mask, and
``label/<scene>/gt/frame_XXXXX/<category>.png``: uint8 0/255, exactly the ray caster's object-id
buffer (pixel centres) for that object.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def labelled_frames(n_views: int, n_labelled: int, rng: np.random.Generator) -> list[int]:
    """``n_labelled`` distinct view indices spread evenly over the orbit (random phase)."""
    phase = rng.uniform(0.2, 0.8)
    idx = sorted({min(int((k + phase) * n_views / n_labelled), n_views - 1) for k in range(n_labelled)})
    return idx


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours [k,2] int (x, y) of a bool mask [H,W]; contours under 3 points skipped."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def rasterize_polygons(polys, height: int, width: int) -> np.ndarray:
    """LangSplat's gt rule: fill every polygon ([k,2] x, y) with cv2.fillPoly -> bool [H,W]."""
    out = np.zeros((height, width), np.uint8)
    if polys:
        cv2.fillPoly(out, [np.asarray(p, np.int32).reshape(-1, 1, 2) for p in polys], 255)
    return out > 0


def frame_categories(obj: np.ndarray, names: list[str], min_area: int) -> list[int]:
    """Objects covering at least ``min_area`` pixels of the id buffer ``obj`` [H,W]."""
    area = np.bincount(obj[obj >= 0].ravel(), minlength=len(names))
    return [o for o in range(len(names)) if area[o] >= min_area]


def write_frame_labels(label_dir: Path, frame: str, image_file: str, obj: np.ndarray,
                       names: list[str], min_area: int) -> list[str]:
    """Writes the JSON and gt masks of one frame; returns the categories written."""
    H, W = obj.shape
    objects, cats = [], []
    gt_dir = label_dir / "gt" / frame
    gt_dir.mkdir(parents=True, exist_ok=True)
    for o in frame_categories(obj, names, min_area):
        mask = obj == o
        polys = mask_polygons(mask)
        if not polys:
            continue
        cats.append(names[o])
        Image.fromarray((mask * 255).astype(np.uint8)).save(gt_dir / f"{names[o]}.png")
        for p in polys:
            objects.append({"category": names[o],
                            "bbox": [int(p[:, 0].min()), int(p[:, 1].min()), int(p[:, 0].max()), int(p[:, 1].max())],
                            "segmentation": p.astype(int).tolist()})
    doc = {"info": {"name": image_file, "width": W, "height": H}, "objects": objects}
    with open(label_dir / f"{frame}.json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    return cats
