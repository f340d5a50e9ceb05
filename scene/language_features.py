"""LangSplat-format per-view SAM/CLIP files: ``language_features/<stem>_s.npy`` and ``<stem>_f.npy``.

* ``_s.npy``: [4, H, W] (float32 in LangSplat's files, int16/int32 in some downloads) mask ids per
  level (0 default, 1 s, 2 m, 3 l); every id is a global row index into ``_f.npy``; -1 = no mask.
* ``_f.npy``: [M, C] float32 (C = 512 for OpenCLIP ViT-B-16) per-mask embeddings.

The one reader and writer of the format: ``preprocess.run`` (SAM + CLIP) and the synthetic generator
build their arrays with ``id_maps`` and write them with ``save_features``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from scene.atomic import atomic_path

# LangSplat's SAM levels in file order (``_s.npy[k]`` is level ``LEVELS[k]``); COS3D trains on 3 (l)
LEVELS = ("default", "s", "m", "l")
LEVEL_INDEX = {name: k for k, name in enumerate(LEVELS)}


def feature_paths(source_path, image_name: str, folder: str = "language_features") -> tuple[Path, Path]:
    d = Path(source_path) / folder
    return d / f"{image_name}_s.npy", d / f"{image_name}_f.npy"


def id_maps(level_masks, h: int, w: int) -> tuple[np.ndarray, list[int]]:
    """Bool [H, W] masks per level (one sequence per entry of ``LEVELS``, in that order; any
    iterable, consumed one level at a time) -> the ``_s`` array float32 [4, H, W] and the counts.

    Masks are painted in list order (a later mask overwrites an earlier one); level k's ids are
    offset by the counts of the levels before it, so the ``_f`` rows are the levels' masks
    concatenated in ``LEVELS`` order; -1 = no mask (LangSplat ``preprocess.py``)."""
    seg = np.full((len(LEVELS), h, w), -1, dtype=np.int32)
    counts: list[int] = []
    for masks in level_masks:
        if len(counts) == len(LEVELS):
            raise ValueError(f"id_maps: masks for more than the {len(LEVELS)} levels {LEVELS}")
        k, offset = len(counts), sum(counts)
        for i, m in enumerate(masks):
            seg[k][np.asarray(m, dtype=bool)] = offset + i
        counts.append(len(masks))
    if len(counts) != len(LEVELS):
        raise ValueError(f"id_maps: expected masks for the {len(LEVELS)} levels {LEVELS}, got {len(counts)}")
    return seg.astype(np.float32), counts


def _write_npy(path: Path, arr: np.ndarray) -> None:
    """The one ``np.save`` of ``save_features`` (tests replace it to kill a write half-way)."""
    np.save(path, arr)


def save_features(out_dir, stem: str, seg: np.ndarray, feats: np.ndarray) -> tuple[Path, Path]:
    """Writes ``<out_dir>/<stem>_s.npy`` (float32 [4, H, W] ids) and ``<stem>_f.npy`` (float32 [M, C]).

    Both are written under temporary names (``scene.atomic``) and renamed once both are whole, ``_f``
    first: a killed writer leaves no half-written file, and a new view no ``_s.npy`` without its
    ``_f.npy``. Refuses arrays that ``check_folder`` would refuse (not [4, H, W], ids that are not
    rows of ``feats``, NaN/inf embeddings)."""
    out_dir = Path(out_dir)
    s_path, f_path = out_dir / f"{stem}_s.npy", out_dir / f"{stem}_f.npy"
    seg = np.ascontiguousarray(seg, dtype=np.float32)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if seg.ndim != 3 or seg.shape[0] != len(LEVELS):
        raise ValueError(f"{s_path}: expected a [{len(LEVELS)}, H, W] id map, got shape {seg.shape}")
    if feats.ndim != 2:
        raise ValueError(f"{f_path}: expected [masks, channels] embeddings, got shape {feats.shape}")
    if feats.size and not np.isfinite(feats).all():
        raise ValueError(f"{f_path}: embeddings contain NaN or inf")
    if seg.size and (not np.isfinite(seg).all() or (seg != np.round(seg)).any()
                     or seg.min() < -1 or seg.max() >= feats.shape[0]):
        raise ValueError(f"{s_path}: ids must be -1 or rows of the {feats.shape[0]}-row {f_path.name}, "
                         f"got {seg.min()}..{seg.max()}")
    with atomic_path(s_path) as s_tmp, atomic_path(f_path) as f_tmp:
        _write_npy(f_tmp, feats)
        _write_npy(s_tmp, seg)
    return s_path, f_path


def _fix(source_path) -> str:
    return (f"delete the view's _s.npy/_f.npy and re-run `python -m preprocess.run -s {source_path}` "
            f"(it computes only the missing views), or regenerate the scene")


def check_folder(source_path, cameras, folder: str = "language_features", level: Optional[int] = None) -> None:
    """Every camera must have both files, readable, of the view's size, with ids that are rows of its
    ``_f.npy`` and finite embeddings of one width (COS3D asserts only that the files exist; we name
    the file and what is wrong). Called before a stage trains, so a bad view fails it at once rather
    than when training first reaches the view (or, for a NaN row, never: one NaN view makes the whole
    language field NaN and every query silently selects nothing). ``level``: also require that level.

    The files are memory-mapped and read once (a few seconds for a LERF-OVS scene)."""
    d = Path(source_path) / folder
    if not d.is_dir():
        raise FileNotFoundError(
            f"{d} not found: run `python -m preprocess.run -s {source_path}` (SAM + CLIP) "
            f"or use a scene that ships language features")
    missing = [p for c in cameras for p in feature_paths(source_path, c.image_name, folder) if not p.is_file()]
    if missing:
        views = sorted({p.name[:-6] for p in missing})
        raise FileNotFoundError(
            f"{missing[0]} not found ({len(views)} of {len(cameras)} views lack their _s.npy/_f.npy in {d}, "
            f"e.g. {', '.join(views[:3])}): re-run `python -m preprocess.run -s {source_path}` (it computes "
            f"only the missing views), or regenerate the scene")
    width = None
    for c in cameras:
        s_path, f_path = feature_paths(source_path, c.image_name, folder)
        s = _load(s_path, mmap=True)
        if s.ndim != 3 or s.shape[0] < 1:
            raise ValueError(f"{s_path}: expected a [levels, H, W] id map, got shape {s.shape}: {_fix(source_path)}")
        if level is not None and not 0 <= level < s.shape[0]:
            raise ValueError(f"{s_path}: has {s.shape[0]} levels, level {level} is needed: {_fix(source_path)}")
        _check_size(s.shape[1], s.shape[2], c, s_path)
        f = _load(f_path, mmap=True)
        _check_clip(f, f_path, source_path)
        if width is None:
            width, first = f.shape[1], f_path
        elif f.shape[1] != width and f.shape[0]:
            raise ValueError(f"{f_path}: {f.shape[1]}-D embeddings, but {first.name} has {width}-D ones: the "
                             f"features come from different CLIP models: {_fix(source_path)}")
        _check_id_map(np.asarray(s), f.shape[0], s_path, f_path, source_path)


def _check_clip(f: np.ndarray, f_path: Path, source_path) -> None:
    """[M, C] finite embeddings (a NaN/inf row would poison the language field of every Gaussian)."""
    if f.ndim != 2:
        raise ValueError(f"{f_path}: expected [masks, channels] embeddings, got shape {f.shape}: {_fix(source_path)}")
    if not np.issubdtype(f.dtype, np.floating) and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"{f_path}: expected float embeddings, got dtype {f.dtype}: {_fix(source_path)}")
    bad = ~np.isfinite(np.asarray(f)).all(axis=1) if f.size else np.zeros(0, bool)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{f_path}: {len(rows)} of {f.shape[0]} embedding rows contain NaN or inf (e.g. row "
                         f"{rows[0]}); the file is corrupt: {_fix(source_path)}")


def _check_id_map(s: np.ndarray, n_rows: int, s_path: Path, f_path: Path, source_path) -> None:
    """Ids are -1 or rows of ``_f.npy`` (float maps are rounded, as ``load_seg`` does)."""
    if not s.size:
        return
    if np.issubdtype(s.dtype, np.floating) and not np.isfinite(s).all():
        raise ValueError(f"{s_path}: the id map contains NaN or inf; the file is corrupt: {_fix(source_path)}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{s_path}: expected a numeric id map, got dtype {s.dtype}: {_fix(source_path)}")
    lo, hi = int(np.round(s.min())), int(np.round(s.max()))
    if hi >= n_rows or lo < -1:
        raise ValueError(f"{s_path}: mask ids range {lo}..{hi} but {f_path.name} has {n_rows} rows (ids are rows "
                         f"of _f.npy, -1 = no mask): the two files do not belong together: {_fix(source_path)}")


def _check_size(h: int, w: int, camera, s_path) -> None:
    """A map must be at the view's size, or at another size of the same aspect (it is then resized with
    nearest neighbour, as COS3D does: LangSplat caps images at 1080 px high, 3DGS at 1600 px wide)."""
    if (h, w) == (camera.height, camera.width):
        return
    if abs(w / h - camera.width / camera.height) >= 0.02:
        raise ValueError(
            f"{s_path}: id map is {w}x{h} but the view {camera.image_name} is rendered at "
            f"{camera.width}x{camera.height}; the features were made from other images: "
            f"{_fix(Path(s_path).parent.parent)}")


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: re-run the preprocessing for this scene")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # truncated, not .npy, object arrays, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable .npy file, truncated or corrupt ({first}): "
                         f"{_fix(Path(path).parent.parent)}") from None


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
    _check_clip(f, f_path, source_path)
    return torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))


def check_ids(seg: torch.Tensor, n_rows: int, where: str) -> None:
    if seg.numel() and (seg.max().item() >= n_rows or seg.min().item() < -1):
        raise ValueError(f"{where}: mask ids range {seg.min().item()}..{seg.max().item()} "
                         f"but the _f.npy file has {n_rows} rows (ids are rows of _f.npy, -1 = no mask)")
