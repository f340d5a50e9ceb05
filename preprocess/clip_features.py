"""Per-mask CLIP crops and the OpenCLIP image encoder (LangSplat ``preprocess.py``, spec §3.1).

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

from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch

from .weights import OPENCLIP_PAGE, WeightsError, offline_hub, unreadable_weights

CROP_SIZE = 224
# OpenAI CLIP normalisation used by LangSplat's OpenCLIPNetwork (and open_clip's ViT-B-16 config)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def pick_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: fp16 on CUDA (LangSplat), fp32 elsewhere; else ``"fp16"`` / ``"fp32"``."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be auto, fp16 or fp32, got {precision!r}")
    return precision


def load_openclip(model_name: str, weights: Union[str, Path], device, precision: str = "fp32"):
    """``open_clip.create_model(model_name, pretrained=<weights file>)`` in eval mode on ``device``.

    Errors name the file: unknown model config -> ValueError; a file that is unreadable or does
    not match the architecture -> :class:`WeightsError`."""
    offline_hub()
    import open_clip

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"OpenCLIP weights not found: {weights} (download from {OPENCLIP_PAGE})")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown OpenCLIP model {model_name!r}: not an open_clip config "
                         f"(e.g. ViT-B-16; see open_clip.list_models())")
    try:
        model = open_clip.create_model(model_name, pretrained=str(weights.resolve()), precision=precision,
                                       device=torch.device(device))
    except Exception as e:  # RuntimeError from load_state_dict, pickle/safetensors errors
        raise WeightsError(f"{weights}: does not load into OpenCLIP {model_name} ({unreadable_weights(e)} ...); "
                           f"expected the ViT-B-16 laion2b_s34b_b88k file from {OPENCLIP_PAGE}") from None
    return model.eval()


def embed_dim(model) -> int:
    """Output width of ``model.encode_image`` / ``encode_text`` (512 for ViT-B-16)."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    out = getattr(getattr(model, "visual", None), "output_dim", None)
    if out is None:
        raise ValueError("cannot tell the embedding width of this OpenCLIP model")
    return int(out)


class OpenCLIPImageEncoder:
    """``ImageEncoder`` over an OpenCLIP model: ``encode(crops uint8 [M, 224, 224, 3]) -> float32 [M, dim]``."""

    def __init__(self, model, batch_size: int = 128):
        if batch_size < 1:
            raise ValueError(f"clip batch size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.dim = embed_dim(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

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
            x = ((x - self.mean) / self.std).to(self.dtype)
            e = self.model.encode_image(x)                                       # [B, dim]
            e = e / e.norm(dim=-1, keepdim=True)
            out.append(e.to(torch.float32).cpu())
        return torch.cat(out)
