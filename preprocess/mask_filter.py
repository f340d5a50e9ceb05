"""LangSplat's per-level mask post-filter (``masks_update`` / ``mask_nms``), vectorised.

Semantics (docs/method.md §6.3), per level, with masks sorted by descending
score = ``predicted_iou * stability_score`` (float64):

* IoU rule: a mask is dropped if its IoU with ANY higher-scored mask is > ``iou_thr`` (0.8), even
  if that mask is itself dropped (not greedy: every criterion is computed on the full set);
* score rule: kept only if score > ``score_thr`` (0.7, strict); if no mask passes, the top
  min(3, N) by score pass instead (the evident intent of LangSplat's crashing fallback);
* containment rule: for masks a != b with I = |a & b|, if I/|a| < 0.5 and I/|b| >= 0.85 (b mostly
  inside the much larger a), C[a, b] = 1 - (I/|b|)(I/|a|); a mask b is dropped if some C[a, b] >
  1 - ``inner_thr`` (0.5). With inner_thr = 0.5 any such containment drops the smaller mask.

Pixel counts are exact (float32 matmuls over pixel chunks of at most 2^22 pixels with TF32 off,
summed in float64); ratios are divided in float32 like the original.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

# LangSplat preprocess.py sam_encoder -> masks_update(iou_thr=0.8, score_thr=0.7, inner_thr=0.5)
LANGSPLAT_NMS = dict(iou_thr=0.8, score_thr=0.7, inner_thr=0.5)
_CONTAINED, _CONTAINER = 0.85, 0.5  # hard-coded ratios of LangSplat mask_nms
_CHUNK_ELEMS = 1 << 26              # at most 64M floats per [N, chunk] block


@contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def pair_counts(masks: torch.Tensor) -> torch.Tensor:
    """``masks``: bool [N, H, W] -> intersections float64 [N, N] (exact pixel counts; diagonal = areas)."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1)
    hw = flat.shape[1]
    chunk = max(1, min(1 << 22, _CHUNK_ELEMS // max(n, 1)))
    inter = torch.zeros((n, n), dtype=torch.float64, device=masks.device)
    with _no_tf32():
        for s in range(0, hw, chunk):
            f = flat[:, s:s + chunk].to(torch.float32)
            inter += (f @ f.T).to(torch.float64)
    return inter


def _force_top(keep: torch.Tensor) -> torch.Tensor:
    """If nothing passes, the first min(3, N) (= best scored) pass. ``keep``: bool [N] in sorted order."""
    if not bool(keep.any()):
        keep = keep.clone()
        keep[:3] = True
    return keep


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_thr: float = 0.8, score_thr: float = 0.7,
             inner_thr: float = 0.5) -> torch.Tensor:
    """``masks``: bool [N, H, W], ``scores``: [N] -> int64 original indices kept, in descending score order."""
    if masks.ndim != 3 or scores.ndim != 1 or masks.shape[0] != scores.shape[0]:
        raise ValueError(f"mask_nms: masks [N, H, W] and scores [N] expected, got {tuple(masks.shape)} "
                         f"and {tuple(scores.shape)}")
    n = masks.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=masks.device)
    scores, idx = scores.sort(0, descending=True)
    inter64 = pair_counts(masks.bool()[idx])
    area = torch.diagonal(inter64).to(torch.float32)               # [N]
    inter = inter64.to(torch.float32)                               # [N, N]
    union = area[:, None] + area[None, :] - inter
    iou = torch.triu(inter / union, diagonal=1)                     # rows r < column c only
    frac = inter / area[:, None]                                    # frac[a, b] = I / |a|
    contained = (frac < _CONTAINER) & (frac.T >= _CONTAINED)        # b (column) inside a (row)
    inner = torch.where(contained, 1 - frac.T * frac, torch.zeros_like(frac))
    inner.fill_diagonal_(0)

    keep_iou = _force_top(iou.max(dim=0).values <= iou_thr)
    keep_score = _force_top(scores > score_thr)
    keep_inner = _force_top(inner.max(dim=0).values <= 1 - inner_thr)
    return idx[keep_iou & keep_score & keep_inner]


def masks_update(levels: dict[str, list[dict[str, Any]]], iou_thr: float = 0.8, score_thr: float = 0.7,
                 inner_thr: float = 0.5, device=None) -> dict[str, list[dict[str, Any]]]:
    """Applies :func:`mask_nms` to each level's records (keys ``segmentation`` bool [H, W],
    ``predicted_iou``, ``stability_score``); kept records stay in their original list order.
    An empty level stays ``[]``. ``device``: where the pairwise counts run (default CPU)."""
    out = {}
    for name, recs in levels.items():
        if not recs:
            out[name] = []
            continue
        masks = torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in recs]))
        scores = torch.tensor([r["predicted_iou"] * r["stability_score"] for r in recs], dtype=torch.float64)
        keep = set(mask_nms(masks.to(device), scores.to(device), iou_thr, score_thr, inner_thr).tolist())
        out[name] = [r for i, r in enumerate(recs) if i in keep]
    return out
