"""LERF-OVS evaluation in OpenGaussian's "3D" setting (docs/method.md §7.1-7.3).

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
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import write_text
from .lerf_labels import BIN_THRESHOLD, check_binarize, ensure_gt, gt_files, label_size, load_binary
from .names import safe_stem

METRIC_KEYS = ("mIoU", "Acc@0.25", "Acc@0.5")
ACC_THRESHOLDS = {"Acc@0.25": 0.25, "Acc@0.5": 0.5}  # strict: IoU > threshold
# (frame, category) units per scene in the published LERF-OVS labels (docs/method.md, evaluation)
REFERENCE_UNITS = {"figurines": 56, "teatime": 59, "ramen": 71, "waldo_kitchen": 22}


def default_pred_name(frame: str, category: str) -> str:
    """Our layout: ``<pred_dir>/<frame>/<category>.png`` (the category as a safe file name, as the
    selection renders are written)."""
    return f"{frame}/{safe_stem(category)}.png"


def flat_pred_name(frame: str, category: str) -> str:
    """OpenGaussian / COS3D layout: ``<pred_dir>/<frame>_<category>.png``."""
    return f"{frame}_{category}.png"


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


def _size_mismatch(ppath: Path, p: np.ndarray, gpath: Path, g: np.ndarray, json_path: Path) -> ValueError:
    """Name the file that is wrong: the gt mask when the frame's label JSON gives the prediction's size,
    else the prediction."""
    wh = label_size(json_path) if json_path.is_file() else None
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
    binarize = check_binarize(binarize)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    per_unit = []
    for frame, cats in gt_files(gt_dir).items():
        for cat, gpath in cats.items():
            g = load_binary(gpath, binarize)
            ppath = pred_dir / pred_name(frame, cat)
            if not ppath.is_file():
                per_unit.append({"frame": frame, "category": cat, "iou": 0.0, "missing": True})
                continue
            p = load_binary(ppath, binarize)
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
    binarize = check_binarize(binarize)
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
