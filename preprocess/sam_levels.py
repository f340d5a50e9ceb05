"""LangSplat's four SAM mask levels (default, s, m, l) on top of the unmodified ``segment-anything`` 1.0.

LangSplat ships a fork whose ``generate`` returns a 4-tuple; we keep upstream ``generate`` intact
and add :meth:`LevelMaskGenerator.generate_levels` to a subclass
(docs/method.md §6.2). Per image:

* crops from ``generate_crop_boxes`` (full image + a 2x2 grid with ``crop_n_layers=1``); one image
  encoding per crop, shared by all four levels;
* per batch of point prompts one ``predict_torch(multimask_output=True, return_logits=True)``
  call, logits ``[B, 3, h_crop, w_crop]`` and IoU predictions ``[B, 3]``;
* level ``default`` = the three outputs of every point flattened point-major (exactly what
  upstream ``generate`` computes); levels ``s``/``m``/``l`` = output 0 / 1 / 2 alone;
* every level then runs the whole upstream filter chain on its own: pred-IoU, stability,
  crop-edge, within-crop box NMS, cross-crop box NMS (smaller crops preferred) and the small-region
  cleanup with its NMS. An empty level returns ``[]`` (upstream crashes there, issue #614).

Records are upstream's dicts: ``segmentation`` bool ``[H, W]``, ``area`` int, ``bbox`` XYWH
(``w = x_max - x_min`` with the inclusive max pixel), ``predicted_iou``, ``point_coords``
``[[x, y]]``, ``stability_score``, ``crop_box`` XYWH.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (MaskData, area_from_rle, batch_iterator, batched_mask_to_box,
                                        box_xyxy_to_xywh, calculate_stability_score, generate_crop_boxes,
                                        is_box_near_crop_edge, rle_to_mask,
                                        uncrop_boxes_xyxy, uncrop_masks, uncrop_points)
from torchvision.ops.boxes import batched_nms, box_area

from scene.language_features import LEVELS  # ("default", "s", "m", "l"), the order of the _s.npy levels

# LangSplat preprocess.py __main__ (docs/method.md §6.2); everything else is upstream's default
LANGSPLAT_AMG = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.7,
                     stability_score_thresh=0.85, box_nms_thresh=0.7, crop_n_layers=1,
                     crop_n_points_downscale_factor=1, min_mask_region_area=100)

def masks_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """bool [B, H, W] -> upstream's uncompressed RLEs (``{"size": [H, W], "counts": [...]}``, column-major
    runs starting with a run of zeros), the same lists as ``mask_to_rle_pytorch``. Upstream selects each
    mask's change points from all of them with a boolean index (O(B x changes)); here they are split
    once by mask (``searchsorted`` on the sorted mask column), which took ~half of a generate_levels
    call away at LangSplat's 1024 points per crop (benchmarks/preprocess.py)."""
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    changes = (flat[:, 1:] ^ flat[:, :-1]).nonzero().cpu().numpy()    # [K, 2] (mask, position), sorted
    first = flat[:, 0].cpu().numpy()
    bounds = np.searchsorted(changes[:, 0], np.arange(b + 1))
    out = []
    for i in range(b):
        ends = np.concatenate(([0], changes[bounds[i]:bounds[i + 1], 1] + 1, [h * w]))
        counts = np.diff(ends).tolist()
        out.append({"size": [h, w], "counts": ([0] + counts) if first[i] else counts})
    return out


def concat_mask_data(parts: list[MaskData]) -> MaskData:
    """The ``MaskData`` of all ``parts`` in order, each field concatenated once. Upstream's
    ``MaskData.cat`` deep-copies the RLE lists accumulated so far at every call, which made
    gathering 16 point batches x 5 crops x 4 levels quadratic: ~64% of a generate_levels call
    (benchmarks/preprocess.py). The parts are fresh per batch and never reused, so no copy is needed."""
    if not parts:
        return MaskData()
    out = {}
    for k, v in parts[0].items():
        vals = [p[k] for p in parts]
        if v is None:
            out[k] = None
        elif isinstance(v, torch.Tensor):
            out[k] = torch.cat(vals, dim=0)
        elif isinstance(v, np.ndarray):
            out[k] = np.concatenate(vals, axis=0)
        else:
            out[k] = [x for val in vals for x in val]
    return MaskData(**out)


class LevelMaskGenerator(SamAutomaticMaskGenerator):
    """Upstream ``SamAutomaticMaskGenerator`` plus :meth:`generate_levels` (LangSplat's 4 levels).

    Construct it exactly like the parent (``LevelMaskGenerator(sam, **LANGSPLAT_AMG)``), or around
    another predictor with :meth:`around` (SAM 2, ``preprocess/sam2_levels.py``)."""

    @classmethod
    def around(cls, predictor, **amg) -> "LevelMaskGenerator":
        """The same generator talking to ``predictor`` instead of a ``SamPredictor``: any object with
        ``set_image``, ``transform.apply_coords``, ``predict_torch``, ``reset_image``,
        ``model.mask_threshold`` and ``device`` as used below."""
        # upstream __init__ wraps its model in a SamPredictor, which reads only image_encoder.img_size;
        # that throw-away predictor is replaced at once
        stand_in = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
        gen = cls(stand_in, **amg)
        gen.predictor = predictor
        return gen

    @torch.no_grad()
    def generate_levels(self, image: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """``image``: RGB uint8 ``[H, W, 3]`` -> ``{"default", "s", "m", "l": [records]}`` (binary masks)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"generate_levels: expected an RGB uint8 [H, W, 3] image, got "
                             f"{image.dtype} {image.shape}")
        data = self._levels_data(image)
        out = {}
        for lv in LEVELS:
            d = data[lv]
            if d is None:
                out[lv] = []
                continue
            if self.min_mask_region_area > 0:
                d = self.postprocess_small_regions(d, self.min_mask_region_area,
                                                   max(self.box_nms_thresh, self.crop_nms_thresh))
            out[lv] = self._records(d)
        return out

    # -- steps 1 + 6: crops, then cross-crop NMS per level --------------------------------------
    def _levels_data(self, image: np.ndarray) -> dict[str, MaskData | None]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        parts = {lv: [] for lv in LEVELS}
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            crop = self._crop_levels(image, crop_box, layer_idx, orig_size)
            for lv in LEVELS:
                parts[lv].append(crop[lv])
        per_level = {lv: concat_mask_data(parts[lv]) for lv in LEVELS}
        out: dict[str, MaskData | None] = {}
        for lv, d in per_level.items():
            if len(d["rles"]) == 0:
                out[lv] = None  # deliberate deviation: upstream's box_area() raises on this
                continue
            if len(crop_boxes) > 1:  # prefer masks from smaller crops
                boxes = d["boxes"]
                scores = (1 / box_area(d["crop_boxes"])).to(boxes.device)
                d.filter(batched_nms(boxes.float(), scores, torch.zeros_like(boxes[:, 0]),
                                     iou_threshold=self.crop_nms_thresh))
            d.to_numpy()
            out[lv] = d
        return out

    # -- steps 2 + 5: one crop, its point batches, then within-crop NMS per level ---------------
    def _crop_levels(self, image, crop_box, layer_idx, orig_size) -> dict[str, MaskData]:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        self.predictor.set_image(crop)
        points_all = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        parts = {lv: [] for lv in LEVELS}
        for (points,) in batch_iterator(self.points_per_batch, points_all):
            for lv, d in self._batch_levels(points, crop_size, crop_box, orig_size).items():
                parts[lv].append(d)
        levels = {lv: concat_mask_data(parts[lv]) for lv in LEVELS}
        self.predictor.reset_image()
        for d in levels.values():
            boxes = d["boxes"]
            d.filter(batched_nms(boxes.float(), d["iou_preds"], torch.zeros_like(boxes[:, 0]),
                                 iou_threshold=self.box_nms_thresh))
            d["boxes"] = uncrop_boxes_xyxy(d["boxes"], crop_box)
            d["points"] = uncrop_points(d["points"], crop_box)
            d["crop_boxes"] = torch.tensor([crop_box for _ in range(len(d["rles"]))])
        return levels

    # -- steps 3 + 4: one predict_torch call, split into the four levels, filter each -----------
    def _batch_levels(self, points: np.ndarray, crop_size, crop_box, orig_size) -> dict[str, MaskData]:
        """``points``: [B, 2] crop pixel coords -> per level MaskData (rles, boxes, scores, points)."""
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, crop_size),
                                 device=self.predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        logits, iou_preds, _ = self.predictor.predict_torch(coords[:, None, :], labels[:, None],
                                                            multimask_output=True, return_logits=True)
        # logits [B, K, h, w], iou_preds [B, K] (K = 3)
        k = logits.shape[1]
        out = {"default": MaskData(masks=logits.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                                   points=torch.as_tensor(points.repeat(k, axis=0)))}
        for j, lv in enumerate(LEVELS[1:]):
            out[lv] = MaskData(masks=logits[:, j], iou_preds=iou_preds[:, j], points=torch.as_tensor(points))
        del logits
        for d in out.values():
            self._filter_batch(d, crop_box, orig_size)
        return out

    def _filter_batch(self, d: MaskData, crop_box, orig_size) -> None:
        """Upstream's per-batch filters on one level, in place; dense masks become RLEs."""
        h, w = orig_size
        thr = self.predictor.model.mask_threshold
        if self.pred_iou_thresh > 0.0:
            d.filter(d["iou_preds"] > self.pred_iou_thresh)
        d["stability_score"] = calculate_stability_score(d["masks"], thr, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            d.filter(d["stability_score"] >= self.stability_score_thresh)
        d["masks"] = d["masks"] > thr
        d["boxes"] = batched_mask_to_box(d["masks"])
        keep = ~is_box_near_crop_edge(d["boxes"], crop_box, [0, 0, w, h])
        if not torch.all(keep):
            d.filter(keep)
        d["rles"] = masks_to_rle(uncrop_masks(d["masks"], crop_box, h, w))
        del d["masks"]

    # -- step 8 ---------------------------------------------------------------------------------
    @staticmethod
    def _records(d: MaskData) -> list[dict[str, Any]]:
        return [{"segmentation": rle_to_mask(rle),
                 "area": area_from_rle(rle),
                 "bbox": box_xyxy_to_xywh(d["boxes"][i]).tolist(),
                 "predicted_iou": d["iou_preds"][i].item(),
                 "point_coords": [d["points"][i].tolist()],
                 "stability_score": d["stability_score"][i].item(),
                 "crop_box": box_xyxy_to_xywh(d["crop_boxes"][i]).tolist()}
                for i, rle in enumerate(d["rles"])]
