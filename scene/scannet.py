"""ScanNet per-point evaluation in OpenGaussian's protocol (spec §6.3).

The protocol is the one of OpenGaussian ``scripts/eval_scannet.py``: the Gaussians sit at the
vertices of the scene's ``<scene>_vh_clean_2.labels.ply`` mesh (trained with ``--frozen_init_pts``,
one Gaussian per vertex, same order), so every Gaussian is a ground-truth point. For a class subset
(19, 15 or 10 NYU40 classes) each point gets the subset class whose text query it matches best
(argmax over the subset's classes only). Points whose gt label is not in the subset (0 =
unannotated included) and points of Gaussians with sigmoid(opacity) < 0.1 are left out. Per class
c over the evaluated points: IoU = |pred=c & gt=c| / |pred=c | gt=c|, accuracy (recall) =
|pred=c & gt=c| / |gt=c|. Per scene: mIoU / mAcc = the mean over the classes present in the
scene's gt (a class absent from the gt is not averaged, even when predicted). The overall number
is the unweighted mean of the scene values. All metrics are in percent.

Data format
-----------
Labels (ScanNet v2 release)::

    <scene>/<scene>_vh_clean_2.labels.ply     mesh PLY (ascii or binary); vertex property
                                              ``label`` = NYU40 id, 0 = unannotated

A leaf apart from ``atomic`` (file writes): numpy and plyfile, no torch.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .atomic import write_text

SCANNET_SCENES = ("scene0000_00", "scene0062_00", "scene0070_00", "scene0097_00", "scene0140_00",
                  "scene0200_00", "scene0347_00", "scene0400_00", "scene0590_00", "scene0645_00")
LABELS_SUFFIX = "_vh_clean_2.labels.ply"

# NYU40 id -> class text; the texts of OpenGaussian scripts/eval_scannet.py
NYU40_NAMES = {
    1: "wall", 2: "floor", 3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 8: "door",
    9: "window", 10: "bookshelf", 11: "picture", 12: "counter", 14: "desk", 16: "curtain",
    24: "refrigerator", 28: "shower curtain", 33: "toilet", 34: "sink", 36: "bathtub",
}
# the class subsets of OpenGaussian scripts/eval_scannet.py (15 = 19 minus picture, refrigerator,
# shower curtain, bathtub)
SUBSETS = {
    19: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36],
    15: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 33, 34],
    10: [1, 2, 4, 5, 6, 7, 8, 9, 10, 33],
}
OPACITY_THRESHOLD = 0.1  # OpenGaussian: points with sigmoid(opacity) < 0.1 are ignored
METRIC_KEYS = ("mIoU", "mAcc")


def labels_path(scene_dir, scene: str) -> Path:
    """``<scene_dir>/<scene>_vh_clean_2.labels.ply``."""
    return Path(scene_dir) / f"{scene}{LABELS_SUFFIX}"


# ----------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------

def _vertices(path):
    """(path, the ``vertex`` element) of a PLY file; errors are one message starting with the path."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a ScanNet <scene>{LABELS_SUFFIX})")
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types (PlyParseError, ValueError, EOFError, ...)
        raise ValueError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") from None
    if "vertex" not in ply:
        names = ", ".join(el.name for el in ply.elements) or "none"
        raise ValueError(f"{path}: no 'vertex' element (elements: {names})")
    return path, ply["vertex"]


def read_vertex_labels(path) -> np.ndarray:
    """The ``label`` vertex property of a ScanNet labels PLY (ascii or binary) as int64 [N].

    A missing file raises FileNotFoundError, an unreadable file, a file without a ``vertex`` element
    or without an integer ``label`` property raises ValueError; every message starts with the path.
    """
    path, vertex = _vertices(path)
    props = [p.name for p in vertex.properties]
    if "label" not in props:
        raise ValueError(f"{path}: the vertex element has no 'label' property (properties: "
                         f"{', '.join(props)}); expected a ScanNet <scene>{LABELS_SUFFIX}")
    lab = np.asarray(vertex["label"])
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{path}: the vertex 'label' property is {lab.dtype}, expected an integer "
                         f"NYU40 id")
    return lab.astype(np.int64)


def read_points(path) -> np.ndarray:
    """The vertex positions x, y, z of a PLY (the labels PLY: the points the labels belong to) as
    float32 [N, 3]; errors as :func:`read_vertex_labels`."""
    path, vertex = _vertices(path)
    props = [p.name for p in vertex.properties]
    if not all(k in props for k in "xyz"):
        raise ValueError(f"{path}: the vertex element has no x, y, z (properties: {', '.join(props)})")
    return np.stack([np.asarray(vertex[k], dtype=np.float32) for k in "xyz"], axis=1)


def opacity_valid(opacity, threshold: float = OPACITY_THRESHOLD) -> np.ndarray:
    """bool [N]: the Gaussians kept by the evaluation, sigmoid(opacity) >= ``threshold``.

    ``opacity`` is the stored (pre-activation) value of a 3DGS PLY."""
    x = np.asarray(opacity, dtype=np.float64).reshape(-1)
    return 1.0 / (1.0 + np.exp(-x)) >= threshold


# ----------------------------------------------------------------------------------------------
# metric
# ----------------------------------------------------------------------------------------------

def labels_from_scores(scores, classes) -> np.ndarray:
    """NYU40 id of the best-scoring class per point: ``classes[argmax_k scores[:, k]]`` (int64 [N]).

    ``scores`` is [N, K] with column k the score of ``classes[k]``; ties go to the earlier column."""
    s = np.asarray(scores)
    cls = np.asarray(list(classes), dtype=np.int64)
    if s.ndim != 2 or s.shape[1] != cls.size:
        raise ValueError(f"scores must be [N, {cls.size}] (one column per class), got {list(s.shape)}")
    return cls[np.argmax(s, axis=1)]


def _check_len(name: str, a: np.ndarray, n: int) -> None:
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be [{n}] (one entry per gt point), got {list(a.shape)}")


def point_metrics(pred_ids, gt_ids, classes, valid=None) -> dict:
    """Per-point IoU / accuracy of one scene for one class subset.

    ``pred_ids`` / ``gt_ids``: int [N] NYU40 ids; ``classes``: the subset's ids; ``valid``: optional
    bool [N] (e.g. ``opacity_valid``). A point is evaluated when it is valid and its gt is in
    ``classes``; a prediction outside ``classes`` counts as a miss. Returns ``{"mIoU", "mAcc"}``
    (percent, mean over the classes present in the evaluated gt), ``"per_class"``: ``{id: {"name",
    "iou", "acc", "gt_points", "pred_points"}}`` for every subset class (iou/acc in percent, None
    for a class absent from the gt), ``"classes_present"`` and ``"points"`` (evaluated points).
    Raises ValueError when no point is evaluated.
    """
    gt, pred = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt.ndim != 1:
        raise ValueError(f"gt_ids must be [N] (one NYU40 id per point), got {list(gt.shape)}")
    _check_len("pred_ids", pred, gt.shape[0])
    keep = np.isin(gt, list(classes))
    if valid is not None:
        v = np.asarray(valid)
        _check_len("valid", v, gt.shape[0])
        keep &= v.astype(bool)
    if not keep.any():
        raise ValueError(f"no point to evaluate: none of the {gt.shape[0]} points is valid with a gt "
                         f"label in the {len(classes)}-class subset")
    g, p = gt.astype(np.int64)[keep], pred.astype(np.int64)[keep]
    per_class, ious, accs = {}, [], []
    for c in classes:
        gc, pc = g == c, p == c
        n_gt, n_pred, inter = int(gc.sum()), int(pc.sum()), int((gc & pc).sum())
        iou = acc = None
        if n_gt > 0:  # only classes present in the gt are scored (OpenGaussian eval_scannet.py)
            iou = 100.0 * inter / (n_gt + n_pred - inter)
            acc = 100.0 * inter / n_gt
            ious.append(iou)
            accs.append(acc)
        per_class[int(c)] = {"name": NYU40_NAMES.get(int(c), str(c)), "iou": iou, "acc": acc,
                             "gt_points": n_gt, "pred_points": n_pred}
    return {"mIoU": float(np.mean(ious)), "mAcc": float(np.mean(accs)), "per_class": per_class,
            "classes_present": [c for c, r in per_class.items() if r["gt_points"] > 0],
            "points": int(keep.sum())}


def evaluate_scenes(per_scene: dict, subsets=(19, 15, 10), score_classes=None) -> dict:
    """Score several scenes on several class subsets.

    ``per_scene``: ``{name: (pred_or_scores, gt_ids, valid)}`` (``valid`` may be None). With scores
    ([N, K] float, column k = ``score_classes[k]``, default the 19 classes of ``SUBSETS[19]``) every
    subset takes the argmax over its own classes' columns, as OpenGaussian does; int [N] NYU40 ids
    are used as they are for every subset. ``subsets``: keys of ``SUBSETS``. Returns
    ``{"scenes": {name: {subset: point_metrics(...)}}, "mean": {subset: {"mIoU", "mAcc", "points"}}}``
    where the mean metrics are the unweighted mean of the scene values and ``points`` the total.
    """
    if not per_scene:
        raise ValueError("no scenes given")
    subsets = [int(s) for s in subsets]
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown class subset(s) {unknown}; known: {sorted(SUBSETS)}")
    score_classes = list(SUBSETS[19] if score_classes is None else score_classes)
    scenes = {}
    for name, (pred, gt, valid) in per_scene.items():
        pred = np.asarray(pred)
        scenes[name] = {}
        for s in subsets:
            classes = SUBSETS[s]
            if pred.ndim == 2:
                if pred.shape[1] != len(score_classes):
                    raise ValueError(f"{name}: scores have {pred.shape[1]} columns but score_classes "
                                     f"lists {len(score_classes)} classes")
                missing = [c for c in classes if c not in score_classes]
                if missing:
                    raise ValueError(f"{name}: no score column for the {s}-class subset's {missing}")
                cols = [score_classes.index(c) for c in classes]
                ids = labels_from_scores(pred[:, cols], classes)
            else:
                ids = pred
            try:
                scenes[name][s] = point_metrics(ids, gt, classes, valid)
            except ValueError as e:
                raise ValueError(f"{name}, {s} classes: {e}") from None
    mean = {}
    for s in subsets:
        rs = [scenes[n][s] for n in scenes]
        mean[s] = {k: float(np.mean([r[k] for r in rs])) for k in METRIC_KEYS}
        mean[s]["points"] = sum(r["points"] for r in rs)
    return {"scenes": scenes, "mean": mean}


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

def write_metrics(results: dict, out_dir) -> tuple[Path, Path]:
    """Write ``metrics.json`` (everything, per-class numbers included) and ``metrics.csv``
    (``scene_name,classes,points,classes_present,mIoU,mAcc``; one row per scene and subset, then
    one ``mean`` row per subset with ``classes_present`` empty; 2 decimals). Existing files are
    replaced (atomically)."""
    out_dir = Path(out_dir)
    jpath, cpath = out_dir / "metrics.json", out_dir / "metrics.csv"
    write_text(jpath, json.dumps(results, indent=2) + "\n")
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["scene_name", "classes", "points", "classes_present", *METRIC_KEYS])
    for name, by_subset in results["scenes"].items():
        for s, r in by_subset.items():
            wr.writerow([name, s, r["points"], len(r["classes_present"]), *(f"{r[k]:.2f}" for k in METRIC_KEYS)])
    for s, r in results["mean"].items():
        wr.writerow(["mean", s, r.get("points", ""), "", *(f"{r[k]:.2f}" for k in METRIC_KEYS)])
    write_text(cpath, buf.getvalue())
    return jpath, cpath


def format_table(results: dict) -> str:
    """Fixed-width terminal table: one row per scene, then ``mean``; columns ``<subset> mIoU`` and
    ``<subset> mAcc`` for every subset (percent)."""
    subsets = list(results["mean"])
    rows = [(n, r) for n, r in results["scenes"].items()] + [("mean", results["mean"])]
    w = max(len("scene"), *(len(n) for n, _ in rows))
    cols = [f"{s} {k}" for s in subsets for k in METRIC_KEYS]
    cw = max(6, *(len(c) for c in cols))
    head = f"{'scene':<{w}}" + "".join(f"  {c:>{cw}}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in rows:
        if name == "mean":
            lines.append("-" * len(head))
        lines.append(f"{name:<{w}}" + "".join(f"  {r[s][k]:>{cw}.2f}" for s in subsets for k in METRIC_KEYS))
    return "\n".join(lines)
