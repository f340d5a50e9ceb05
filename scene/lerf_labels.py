"""LERF-OVS labels (LangSplat's annotation format, as OpenGaussian ships it): read and written here only.

```
<label_root>/<scene>/<frame>.json        labelme-like: {"info": {"name", "width", "height"},
                                         "objects": [{"category", "bbox": [x1, y1, x2, y2],
                                                      "segmentation": [[x, y], ...]}, ...]}
<label_root>/<scene>/gt/<frame>/<category>.jpg|png   grayscale mask, 255 = object
```
``gt_masks_from_json`` rasterises a JSON as LangSplat does (int32 truncation, ``cv2.fillPoly``, OR per
category); ``ensure_gt`` makes the missing gt folders from the JSONs; ``read_gt`` / ``load_binary``
binarise masks with ``value > binarize``; ``write_labels`` writes both for generated scenes
(``preprocess/synthetic``). docs/formats.md §6.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .atomic import png_save, write_text

BIN_THRESHOLD = 10  # default: value > 10 is foreground, for gt and prediction (OpenGaussian compute_lerf_iou.py)
GT_SUFFIXES = (".jpg", ".jpeg", ".png")



def scene_dir(label_root, scene) -> Path:
    d = Path(label_root) / scene
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no label folder for scene {scene!r} under {label_root}")
    return d


def labelled_frames(label_root, scene) -> list[str]:
    """Sorted frame stems of ``scene`` that have a label JSON or a ``gt/<frame>/`` folder."""
    d = scene_dir(label_root, scene)
    frames = {p.stem for p in d.glob("*.json") if p.is_file()}
    gt = d / "gt"
    if gt.is_dir():
        frames |= {p.name for p in gt.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(frames)


def _check_category(name, json_path) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{json_path}: object category {name!r} is not a non-empty string")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{json_path}: category {name!r} cannot be used as a file name")
    return name


def gt_masks_from_json(json_path) -> dict[str, np.ndarray]:
    """Rasterise a LangSplat label JSON into ``{category: bool [H, W]}``.

    Each object's ``segmentation`` polygon (``[[x, y], ...]`` in pixels) is cast to int32
    (truncation, as LangSplat's ``polygon_to_mask``) and filled with ``cv2.fillPoly``; polygons
    of the same category are OR-ed. H, W come from ``info.height`` / ``info.width``.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON ({e}): restore the label file (LangSplat/labelme format), "
                         f"or delete it and keep only gt/{json_path.stem}/") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path}: cannot read label JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: label JSON needs info.height, info.width and objects "
                         f"(got a {type(data).__name__})")
    try:
        h, w = int(data["info"]["height"]), int(data["info"]["width"])
        objects = data["objects"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_path}: label JSON needs info.height, info.width and objects ({e!r})") from None
    if h <= 0 or w <= 0 or not isinstance(objects, list):
        raise ValueError(f"{json_path}: bad image size {h}x{w} or 'objects' is not a list")
    masks: dict[str, np.ndarray] = {}
    for i, obj in enumerate(objects):
        try:
            cat, seg = obj["category"], obj["segmentation"]
        except (KeyError, TypeError):
            raise ValueError(f"{json_path}: objects[{i}] needs 'category' and 'segmentation'") from None
        cat = _check_category(cat, json_path)
        try:
            pts = np.asarray(seg, dtype=np.float64)
        except (TypeError, ValueError):
            pts = np.zeros((0,))
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0 or not np.isfinite(pts).all():
            raise ValueError(f"{json_path}: objects[{i}] ({cat!r}) segmentation is not a list of [x, y] points")
        canvas = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(canvas, [pts.astype(np.int32)], 1)
        m = canvas.astype(bool)
        masks[cat] = masks[cat] | m if cat in masks else m
    return masks


def save_mask_png(mask: np.ndarray, path: Path) -> None:
    """Write a bool [H, W] mask as a 0/255 grayscale PNG via a temp name + rename."""
    png_save(path, mask.astype(np.uint8) * 255)


def ensure_gt(label_root, scene) -> Path:
    """Make sure ``<label_root>/<scene>/gt/<frame>/<category>.png`` exists for every labelled frame.

    A frame whose gt folder is absent (or empty) is rasterised from its JSON into a hidden temp
    folder that is then renamed into place, so an interrupted run never leaves a half-written
    frame. Existing gt files are never touched. Returns the gt folder.
    """
    d = scene_dir(label_root, scene)
    gt = d / "gt"
    frames = labelled_frames(label_root, scene)
    if not frames:
        raise FileNotFoundError(f"{d}: scene {scene!r} has no labels (no <frame>.json and no gt/<frame>/ folder)")
    todo: dict[str, dict[str, np.ndarray]] = {}
    for frame in frames:  # every JSON that is needed is parsed first: a bad one leaves nothing half made
        target = gt / frame
        if target.is_dir() and any(target.iterdir()):
            continue
        js = d / f"{frame}.json"
        if not js.is_file():
            continue  # an empty gt folder with no JSON: nothing to generate
        todo[frame] = gt_masks_from_json(js)
    for frame, masks in todo.items():
        target = gt / frame
        gt.mkdir(parents=True, exist_ok=True)
        if target.is_dir():  # empty folder: fill it file by file, never overwriting
            for cat, m in masks.items():
                if not (target / f"{cat}.png").exists():
                    save_mask_png(m, target / f"{cat}.png")
            continue
        tmp = gt / f".{frame}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for cat, m in masks.items():
            save_mask_png(m, tmp / f"{cat}.png")
        try:
            os.rename(tmp, target)
        except OSError:  # someone else created it meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return gt


def check_binarize(binarize) -> int:
    if isinstance(binarize, bool) or not isinstance(binarize, (int, np.integer)) or not 0 <= binarize <= 255:
        raise ValueError(f"binarize must be an integer in 0..255 (pixels > it are foreground), got {binarize!r}")
    return int(binarize)


def load_binary(path: Path, binarize: int = BIN_THRESHOLD) -> np.ndarray:
    """Any image -> 'L' -> bool [H, W] (value > ``binarize``)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read image, truncated or corrupt ({e})") from None
    return arr > binarize


def gt_files(gt_dir: Path) -> dict[str, dict[str, Path]]:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir}: gt folder not found")
    out: dict[str, dict[str, Path]] = {}
    for fdir in sorted(p for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cats: dict[str, Path] = {}
        for f in sorted(fdir.iterdir()):
            if not f.is_file() or f.name.startswith(".") or f.suffix.lower() not in GT_SUFFIXES:
                continue
            if f.stem in cats:
                raise ValueError(f"{fdir}: two gt files for category {f.stem!r} ({cats[f.stem].name}, {f.name})")
            cats[f.stem] = f
        out[fdir.name] = cats
    return out


def read_gt(gt_dir, binarize: int = BIN_THRESHOLD) -> dict[str, dict[str, np.ndarray]]:
    """``{frame: {category: bool [H, W]}}`` from every .jpg/.png in ``gt_dir/<frame>/`` (value > ``binarize``)."""
    binarize = check_binarize(binarize)
    return {fr: {c: load_binary(p, binarize) for c, p in cats.items()} for fr, cats in gt_files(gt_dir).items()}


def label_size(json_path: Path):
    """(width, height) from a label JSON's ``info``, or None when it has none (it is not needed then)."""
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))["info"]
        return int(info["width"]), int(info["height"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours [k,2] int (x, y) of a bool mask [H,W]; contours under 3 points skipped."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def write_labels(label_dir: Path, frame: str, image_file: str, height: int, width: int,
                 masks: dict[str, np.ndarray]) -> list[str]:
    """The JSON and gt masks of one (height x width) frame from ``{category: bool [H,W]}``: one object
    per outer contour (``cv2.findContours``), the gt mask exactly the given one (0/255 PNG). A category
    whose mask has no contour of 3 points is left out. Returns the categories written, in order."""
    label_dir = Path(label_dir)
    objects, cats = [], []
    for cat, mask in masks.items():
        polys = mask_polygons(mask)
        if not polys:
            continue
        cats.append(cat)
        save_mask_png(mask, label_dir / "gt" / frame / f"{cat}.png")
        for p in polys:
            objects.append({"category": cat,
                            "bbox": [int(p[:, 0].min()), int(p[:, 1].min()), int(p[:, 0].max()), int(p[:, 1].max())],
                            "segmentation": p.astype(int).tolist()})
    (label_dir / "gt" / frame).mkdir(parents=True, exist_ok=True)
    doc = {"info": {"name": image_file, "width": int(width), "height": int(height)}, "objects": objects}
    write_text(label_dir / f"{frame}.json", json.dumps(doc, indent=1))
    return cats
