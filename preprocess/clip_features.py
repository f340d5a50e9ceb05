"""Per-mask CLIP crops and the OpenCLIP image encoder (LangSplat ``preprocess.py``, docs/method.md §6.4).

Crop of one mask (``mask_crop``), from the RGB uint8 image ``[H, W, 3]`` the SAM masks came from:

1. copy the image and zero every pixel outside the mask;
2. crop rows ``y : y+h``, cols ``x : x+w`` with the record's XYWH bbox cast to int32. SAM's boxes
   have an inclusive max pixel and ``w = x_max - x_min``, so the mask's last row and column are
   cut off (kept for parity with LangSplat);
3. zero-pad to a ``L x L`` square, ``L = max(h, w)``, content centred (offset ``(L - side) // 2``);
4. ``cv2.resize`` to 224 x 224 (INTER_LINEAR).

Encoding (``OpenCLIPImageEncoder.encode``): uint8 ``[M, 224, 224, 3]`` -> float ``/255`` NCHW ->
CLIP mean/std normalisation -> model precision (fp16 on CUDA by default, as LangSplat; fp32 on
CPU) -> ``encode_image`` -> L2-normalised in that precision -> float32 ``[M, D]`` on the CPU.

Models are created with ``open_clip.create_model(name, pretrained=<local file>)``: never a tag,
so open_clip never downloads; ``HF_HUB_OFFLINE=1`` is set as well.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from scene.foundation import OPENAI_MEAN_STD, embed_dim

CROP_SIZE = 224
# OpenAI CLIP normalisation used by LangSplat's OpenCLIPNetwork (and open_clip's ViT-B-16 config);
# SigLIP's is scene.foundation.SIGLIP_MEAN_STD (scene.foundation.image_mean_std picks by model)
CLIP_MEAN, CLIP_STD = OPENAI_MEAN_STD


def mask_crop(image: np.ndarray, mask: np.ndarray, bbox, size: int = CROP_SIZE) -> np.ndarray:
    """``image``: uint8 [H, W, 3], ``mask``: bool [H, W], ``bbox``: XYWH -> uint8 [size, size, 3].

    A mask whose bbox has zero width and height (a single pixel) gives an all-zero crop (LangSplat
    would crash in cv2.resize there)."""
    x, y, w, h = (int(v) for v in np.asarray(bbox, dtype=np.float64).astype(np.int32))
    masked = image.copy()
    masked[~np.asarray(mask, dtype=bool)] = 0
    crop = masked[y:y + h, x:x + w]
    ch, cw = crop.shape[:2]
    side = max(ch, cw)
    if side == 0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    if ch > cw:
        c0 = (ch - cw) // 2
        square[:, c0:c0 + cw] = crop
    else:
        r0 = (cw - ch) // 2
        square[r0:r0 + ch, :] = crop
    return cv2.resize(square, (size, size))


def level_crops(image: np.ndarray, records: list[dict[str, Any]], size: int = CROP_SIZE) -> np.ndarray:
    """Crops of all ``records`` (SAM dicts with ``segmentation`` and ``bbox``) -> uint8 [M, size, size, 3]."""
    if not records:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack([mask_crop(image, r["segmentation"], r["bbox"], size) for r in records])


class OpenCLIPImageEncoder:
    """``ImageEncoder`` over an OpenCLIP model: ``encode(crops uint8 [M, 224, 224, 3]) -> float32 [M, dim]``.
    ``mean_std``: the tower's normalisation (``scene.foundation.image_mean_std(model name)``)."""

    def __init__(self, model, batch_size: int = 128, mean_std=OPENAI_MEAN_STD):
        if batch_size < 1:
            raise ValueError(f"clip batch size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.dim = embed_dim(model)
        size = getattr(getattr(model, "visual", None), "image_size", CROP_SIZE)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.mean = torch.tensor(mean_std[0], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(mean_std[1], device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode(self, crops: np.ndarray) -> torch.Tensor:
        """``crops``: uint8 [M, 224, 224, 3] RGB -> float32 [M, dim] CPU, rows L2-normalised."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[3] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"encode: expected uint8 [M, H, W, 3] crops, got {crops.dtype} {crops.shape}")
        out = [torch.zeros((0, self.dim), dtype=torch.float32)]
        for s in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(crops[s:s + self.batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0                 # [B, 3, 224, 224]
            if self.size != tuple(x.shape[-2:]):   # a tower of another input size (e.g. SigLIP-256)
                x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            x = ((x - self.mean) / self.std).to(self.dtype)
            e = self.model.encode_image(x)                                       # [B, dim]
            e = e / e.norm(dim=-1, keepdim=True)
            out.append(e.to(torch.float32).cpu())
        return torch.cat(out)
