"""LERF-OVS evaluation in OpenGaussian's "3D" setting (spec/cos3d.md §6.1-6.2).

The protocol is the one of OpenGaussian ``scripts/compute_lerf_iou.py`` / COS3D
``compute_lerf_iou_check.py``: for every labelled (frame, category) pair ("unit") the prediction
(a render of the 3D selection) and the ground-truth mask are binarised with ``value > 10`` (the
``binarize`` parameter, config ``eval.binarize``) and compared by IoU. Per scene: mIoU = mean IoU,
Acc@0.25 / Acc@0.5 = fraction of units with IoU strictly above 0.25 / 0.5. A missing prediction
counts as IoU 0 and stays in the denominators. The overall number is the unweighted mean of the
scene values (macro average).

Data formats
------------
Labels (LangSplat annotation, as shipped in OpenGaussian's LERF-OVS download)::

    <label_root>/<scene>/<frame>.json        labelme-like: info.{width,height},
                                             objects[].{category, segmentation: [[x, y], ...]}
    <label_root>/<scene>/gt/<frame>/<category>.jpg|png   grayscale mask, 255 = object

Predictions (this project's render stage)::

    <pred_dir>/<frame>/<category>.png       silhouette, 0/255 (any mode; converted to 'L')

The category is used verbatim as the file name ("Stainless steel pots.png").
All masks are compared at their stored size; no resizing is ever done.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .atomic import atomic_path, write_text
from .names import safe_stem

BIN_THRESHOLD = 10  # default: value > 10 is foreground, for gt and prediction (OpenGaussian compute_lerf_iou.py)
GT_SUFFIXES = (".jpg", ".jpeg", ".png")
METRIC_KEYS = ("mIoU", "Acc@0.25", "Acc@0.5")
ACC_THRESHOLDS = {"Acc@0.25": 0.25, "Acc@0.5": 0.5}  # strict: IoU > threshold


def default_pred_name(frame: str, category: str) -> str:
    """Our layout: ``<pred_dir>/<frame>/<category>.png`` (the category as a safe file name, as the
    selection renders are written)."""
    return f"{frame}/{safe_stem(category)}.png"


def flat_pred_name(frame: str, category: str) -> str:
    """OpenGaussian / COS3D layout: ``<pred_dir>/<frame>_<category>.png``."""
    return f"{frame}_{category}.png"


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------

def _scene_dir(label_root, scene) -> Path:
    d = Path(label_root) / scene
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no label folder for scene {scene!r} under {label_root}")
    return d


def labelled_frames(label_root, scene) -> list[str]:
    """Sorted frame stems of ``scene`` that have a label JSON or a ``gt/<frame>/`` folder."""
    d = _scene_dir(label_root, scene)
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


def _save_mask_png(mask: np.ndarray, path: Path) -> None:
    """Write a bool [H, W] mask as a 0/255 grayscale PNG via a temp name + rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


def ensure_gt(label_root, scene) -> Path:
    """Make sure ``<label_root>/<scene>/gt/<frame>/<category>.png`` exists for every labelled frame.

    A frame whose gt folder is absent (or empty) is rasterised from its JSON into a hidden temp
    folder that is then renamed into place, so an interrupted run never leaves a half-written
    frame. Existing gt files are never touched. Returns the gt folder.
    """
    d = _scene_dir(label_root, scene)
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
                    _save_mask_png(m, target / f"{cat}.png")
            continue
        tmp = gt / f".{frame}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for cat, m in masks.items():
            _save_mask_png(m, tmp / f"{cat}.png")
        try:
            os.rename(tmp, target)
        except OSError:  # someone else created it meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return gt


def _check_binarize(binarize) -> int:
    if isinstance(binarize, bool) or not isinstance(binarize, (int, np.integer)) or not 0 <= binarize <= 255:
        raise ValueError(f"binarize must be an integer in 0..255 (pixels > it are foreground), got {binarize!r}")
    return int(binarize)


def _load_binary(path: Path, binarize: int = BIN_THRESHOLD) -> np.ndarray:
    """Any image -> 'L' -> bool [H, W] (value > ``binarize``)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read image, truncated or corrupt ({e})") from None
    return arr > binarize


def _gt_files(gt_dir: Path) -> dict[str, dict[str, Path]]:
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
    binarize = _check_binarize(binarize)
    return {fr: {c: _load_binary(p, binarize) for c, p in cats.items()} for fr, cats in _gt_files(gt_dir).items()}


# ----------------------------------------------------------------------------------------------
# metric
# ----------------------------------------------------------------------------------------------

def iou(pred_bool: np.ndarray, gt_bool: np.ndarray) -> float:
    """|P ∩ G| / |P ∪ G| of two bool [H, W] masks; 0.0 when the union is empty."""
    p, g = np.asarray(pred_bool, dtype=bool), np.asarray(gt_bool, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"mask size mismatch: prediction {_size(p)} vs gt {_size(g)}")
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union > 0 else 0.0


def _size(a: np.ndarray) -> str:
    return "x".join(str(s) for s in a.shape[::-1]) + " (WxH)" if a.ndim == 2 else str(a.shape)


def _summary(ious: list[float]) -> dict:
    v = np.asarray(ious, dtype=np.float64)
    out = {"units": int(v.size), "mIoU": 100.0 * float(v.mean())}
    for k, t in ACC_THRESHOLDS.items():
        out[k] = 100.0 * float((v > t).mean())
    return out


def _label_size(json_path: Path):
    """(width, height) from a label JSON's ``info``, or None when it has none (it is not needed then)."""
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))["info"]
        return int(info["width"]), int(info["height"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def _size_mismatch(ppath: Path, p: np.ndarray, gpath: Path, g: np.ndarray, json_path: Path) -> ValueError:
    """Name the file that is wrong: the gt mask when the frame's label JSON gives the prediction's size,
    else the prediction."""
    wh = _label_size(json_path) if json_path.is_file() else None
    if wh is not None and wh != (g.shape[1], g.shape[0]):
        return ValueError(f"{gpath} is {_size(g)} but {json_path} labels a {wh[0]}x{wh[1]} (WxH) frame (and the "
                          f"prediction {ppath} is {_size(p)}): delete {gpath.parent} to have it regenerated "
                          f"from the JSON")
    return ValueError(f"{ppath} is {_size(p)} but gt {gpath} is {_size(g)}: render the predictions at the "
                      f"labelled size (data.resolution), or check --label_root")


def evaluate_scene(gt_dir, pred_dir, pred_name: Callable[[str, str], str] = default_pred_name,
                   binarize: int = BIN_THRESHOLD) -> dict:
    """Score every (frame, category) gt unit of one scene.

    Returns ``{"units", "mIoU", "Acc@0.25", "Acc@0.5"}`` (metrics in percent), ``"missing"``
    (number of units without a prediction file, each scored IoU 0) and ``"per_unit"``: a list of
    ``{"frame", "category", "iou" (fraction), "missing"}``. Masks are foreground where the grayscale
    value is > ``binarize`` (``eval.binarize``; OpenGaussian: 10). A prediction whose size differs from
    its gt raises ValueError naming the wrong file (the gt when it disagrees with its label JSON).
    """
    binarize = _check_binarize(binarize)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    per_unit = []
    for frame, cats in _gt_files(gt_dir).items():
        for cat, gpath in cats.items():
            g = _load_binary(gpath, binarize)
            ppath = pred_dir / pred_name(frame, cat)
            if not ppath.is_file():
                per_unit.append({"frame": frame, "category": cat, "iou": 0.0, "missing": True})
                continue
            p = _load_binary(ppath, binarize)
            if p.shape != g.shape:
                raise _size_mismatch(ppath, p, gpath, g, gt_dir.parent / f"{frame}.json")
            per_unit.append({"frame": frame, "category": cat, "iou": iou(p, g), "missing": False})
    if not per_unit:
        raise ValueError(f"{gt_dir}: no gt masks (no <frame>/<category>.jpg|png files)")
    out = _summary([u["iou"] for u in per_unit])
    out["missing"] = sum(u["missing"] for u in per_unit)
    out["per_unit"] = per_unit
    return out


def evaluate(scenes: list[str], label_root, pred_root_fn: Callable[[str], Path],
             pred_name: Callable[[str, str], str] = default_pred_name, binarize: int = BIN_THRESHOLD) -> dict:
    """Evaluate several scenes; gt is generated from the JSONs where missing.

    ``pred_root_fn(scene)`` gives the scene's prediction folder; ``binarize`` is the foreground
    threshold of every mask (``eval.binarize``, default 10). Returns
    ``{"scenes": {scene: evaluate_scene(...)}, "mean": {...}}`` where the mean metrics are the
    unweighted mean of the scene values (not pooled over units); ``mean["units"]`` is the total.
    """
    if not scenes:
        raise ValueError("no scenes given")
    binarize = _check_binarize(binarize)
    per_scene = {}
    for s in scenes:
        per_scene[s] = evaluate_scene(ensure_gt(label_root, s), pred_root_fn(s), pred_name, binarize)
    mean = {"units": sum(r["units"] for r in per_scene.values())}
    for k in METRIC_KEYS:
        mean[k] = float(np.mean([r[k] for r in per_scene.values()]))
    mean["missing"] = sum(r["missing"] for r in per_scene.values())
    return {"scenes": per_scene, "mean": mean}


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

def _rows(results: dict):
    for name, r in results["scenes"].items():
        yield name, r
    yield "mean", results["mean"]


def write_metrics(results: dict, out_dir) -> tuple[Path, Path]:
    """Write ``metrics.json`` (everything, per-unit IoUs included) and ``metrics.csv``
    (``scene_name,units,mIoU,Acc@0.25,Acc@0.5,text_encoder``; one row per scene, then ``mean``;
    2 decimals; ``text_encoder`` as recorded by the caller, empty when unknown)."""
    out_dir = Path(out_dir)
    jpath, cpath = out_dir / "metrics.json", out_dir / "metrics.csv"
    write_text(jpath, json.dumps(results, indent=2) + "\n")
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["scene_name", "units", *METRIC_KEYS, "text_encoder"])
    for name, r in _rows(results):
        wr.writerow([name, r["units"], *(f"{r[k]:.2f}" for k in METRIC_KEYS), r.get("text_encoder", "")])
    write_text(cpath, buf.getvalue())
    return jpath, cpath


def format_table(results: dict) -> str:
    """Fixed-width terminal table: scene, units, missing, mIoU, mAcc@0.25, Acc@0.5 (percent)."""
    names = [n for n, _ in _rows(results)]
    w = max(len("scene"), *(len(n) for n in names))
    head = f"{'scene':<{w}}  {'units':>5}  {'missing':>7}  {'mIoU':>6}  {'mAcc@0.25':>9}  {'Acc@0.5':>7}"
    lines = [head, "-" * len(head)]
    for name, r in _rows(results):
        if name == "mean":
            lines.append("-" * len(head))
        lines.append(f"{name:<{w}}  {r['units']:>5d}  {r['missing']:>7d}  {r['mIoU']:>6.2f}  "
                     f"{r['Acc@0.25']:>9.2f}  {r['Acc@0.5']:>7.2f}")
    return "\n".join(lines)
