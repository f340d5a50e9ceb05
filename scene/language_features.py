"""LangSplat-format per-view SAM/CLIP files: ``language_features/<stem>_s.npy`` and ``<stem>_f.npy``.

* ``_s.npy``: [4, H, W] (float32 in LangSplat's files, int16/int32 in some downloads) mask ids per
  level (0 default, 1 s, 2 m, 3 l); every id is a global row index into ``_f.npy``; -1 = no mask.
* ``_f.npy``: [M, C] float32 (C = 512 for OpenCLIP ViT-B-16) per-mask embeddings.

The one loader for both the real preprocessing output and the synthetic scenes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LEVELS = {"default": 0, "s": 1, "m": 2, "l": 3}


def feature_paths(source_path, image_name: str, folder: str = "language_features") -> tuple[Path, Path]:
    d = Path(source_path) / folder
    return d / f"{image_name}_s.npy", d / f"{image_name}_f.npy"


def check_folder(source_path, cameras, folder: str = "language_features") -> None:
    """Every camera must have both files (COS3D asserts this; we name what is missing)."""
    d = Path(source_path) / folder
    if not d.is_dir():
        raise FileNotFoundError(
            f"{d} not found: run `python -m preprocess.run -s {source_path}` (SAM + CLIP) "
            f"or use a scene that ships language features")
    missing = [c.image_name for c in cameras
               if not all(p.is_file() for p in feature_paths(source_path, c.image_name, folder))]
    if missing:
        raise FileNotFoundError(
            f"{d}: no _s.npy/_f.npy for {len(missing)} of {len(cameras)} views (e.g. {missing[:3]}); "
            f"re-run the preprocessing for this scene")
    for c in cameras:  # sizes from the .npy headers only (memory-mapped, nothing is read)
        s_path, _ = feature_paths(source_path, c.image_name, folder)
        try:
            shape = np.load(s_path, mmap_mode="r").shape
        except (OSError, ValueError) as e:
            raise ValueError(f"{s_path}: cannot read ({e})") from None
        if len(shape) != 3:
            raise ValueError(f"{s_path}: expected a [levels, H, W] id map, got shape {shape}")
        _check_size(shape[1], shape[2], c, s_path)


def _check_size(h: int, w: int, camera, s_path) -> None:
    """A map must be at the view's size, or at another size of the same aspect (it is then resized with
    nearest neighbour, as COS3D does: LangSplat caps images at 1080 px high, 3DGS at 1600 px wide)."""
    if (h, w) == (camera.height, camera.width):
        return
    if abs(w / h - camera.width / camera.height) >= 0.02:
        raise ValueError(
            f"{s_path}: id map is {w}x{h} but the view {camera.image_name} is rendered at "
            f"{camera.width}x{camera.height}; the features were made from other images "
            f"(re-run the preprocessing)")


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None


def load_seg(source_path, camera, level: int = 3, folder: str = "language_features") -> torch.Tensor:
    """The level's id map at the camera's resolution, int64 [H, W].

    A map of another size but the same aspect is resized with nearest neighbour (COS3D
    ``scene/cameras.py``); another aspect is an error (features made from other images)."""
    s_path, _ = feature_paths(source_path, camera.image_name, folder)
    s = _load(s_path)
    if s.ndim != 3 or not 0 <= level < s.shape[0]:
        raise ValueError(f"{s_path}: expected a [levels, H, W] id map with level {level}, got shape {s.shape}")
    seg = torch.from_numpy(np.ascontiguousarray(s[level])).round().to(torch.int64)
    h, w = seg.shape
    if (h, w) != (camera.height, camera.width):
        _check_size(h, w, camera, s_path)
        seg = F.interpolate(seg[None, None].float(), size=(camera.height, camera.width),
                            mode="nearest")[0, 0].to(torch.int64)
    return seg


def load_clip(source_path, camera, folder: str = "language_features") -> torch.Tensor:
    """The view's per-mask embeddings, float32 [M, C]."""
    _, f_path = feature_paths(source_path, camera.image_name, folder)
    f = _load(f_path)
    if f.ndim != 2:
        raise ValueError(f"{f_path}: expected [masks, channels], got shape {f.shape}")
    return torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))


def check_ids(seg: torch.Tensor, n_rows: int, where: str) -> None:
    if seg.numel() and (seg.max().item() >= n_rows or seg.min().item() < -1):
        raise ValueError(f"{where}: mask ids range {seg.min().item()}..{seg.max().item()} "
                         f"but the _f.npy file has {n_rows} rows")
