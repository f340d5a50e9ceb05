"""Point prompts: pixels of a view -> the instance regions of the Gaussians that make them.

docs/method.md §5.6. A point (x, y) of view v reads the compositing weights ``w = alpha T`` of its
pixel as the renderer draws it (``gaussian_renderer.pixel_contributions``). Its seed is the top
contributor, unless that one's instance region does not explain the pixel: the contributors are tried
by decreasing weight and the first whose region ``{j : f_g·f_j > 1 - max(multipliers) · d}`` (the
refinement's loosest threshold, §5.3) holds at least τ (``query.score_thresh``) of the pixel's weight
is the seed (none: the top contributor). The selection is the seed's region. Several points: the
union of their regions; negative points: their regions are removed from it. A point on empty
background (no Gaussian contributes to the pixel) is refused: its region would be empty.

``run_point_prompt`` answers ``query.py --point X Y --view NAME`` and records the selection with
``scene.selections.record_selections`` (``queries/<name>.npy`` + ``index.json``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from arguments import Config
from gaussian_renderer import pixel_contributions
from scene.errors import StageError
from scene.grounding import instance_region
from scene.selections import record_selections

from .query import QueryModel, load_query_model

SEED_CANDIDATES = 8   # contributors of a pixel tried as its seed, by decreasing weight
SHARE_TOP_K = 256     # contributions of a pixel read (the region's share of the pixel's weight)


def find_view(cameras, view: str):
    """The camera named ``view`` (an image name such as ``frame_00003``); refused with a few valid names."""
    by_name = {c.image_name: c for c in cameras}
    if view in by_name:
        return by_name[view]
    names = sorted(by_name)
    few = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise StageError(f"view {view!r} is not a view of this scene ({len(names)} views: {few})")


def check_points(camera, points: Sequence, what: str = "point") -> list[list[float]]:
    """``[[x, y], ...]`` as floats; refuses a point outside the view (pixel coordinates at the run's
    resolution: 0 <= x < width, 0 <= y < height)."""
    W, H = int(camera.width), int(camera.height)
    out = []
    for p in points:
        x, y = (float(v) for v in p)
        if not (0 <= x < W and 0 <= y < H):   # also refuses NaN
            raise StageError(f"{what} ({x:g}, {y:g}) is outside view {camera.image_name}, which is {W}x{H} "
                             f"pixels (0 <= x < {W}, 0 <= y < {H})")
        out.append([x, y])
    return out


def loosest_threshold(cfg: Config, qm: QueryModel) -> float:
    """``1 - max(query.multipliers) · d``: the refinement's loosest (first tried) region threshold."""
    if not cfg.query.multipliers:
        raise ValueError("query.multipliers is empty: point prompts grow regions with its loosest threshold")
    return 1.0 - max(float(m) for m in cfg.query.multipliers) * qm.d


def pixel_region(cfg: Config, qm: QueryModel, idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The instance region of one pixel (docs/method.md §5.6) from its contributions ``idx``/``w``
    [k] (decreasing weight, -1 = none) and its info. The contributors are the candidate seeds: the
    seed is the first of the ``SEED_CANDIDATES`` whose region ``{j : f_g·f_j > loosest threshold}``
    holds at least τ (``query.score_thresh``) of the pixel's compositing weight, else the top one."""
    idx, w = idx[idx >= 0], w[idx >= 0]
    threshold, tau, total = loosest_threshold(cfg, qm), float(cfg.query.score_thresh), float(w.sum())
    chosen = None
    for k in range(min(SEED_CANDIDATES, idx.numel())):
        region = instance_region(qm.feats, int(idx[k]), threshold)
        share = float((w * region[idx]).sum()) / total
        if share >= tau:
            chosen = (k, region, share)
            break
    if chosen is None:                                   # no candidate explains the pixel: the top one
        region = instance_region(qm.feats, int(idx[0]), threshold)
        chosen = (0, region, float((w * region[idx]).sum()) / total)
    k, region, share = chosen
    return region, {"gaussian": int(idx[k]), "rank": k, "weight": round(float(w[k]), 6),
                    "share": round(share, 4), "pixel_alpha": round(total, 4), "region": int(region.sum())}


def point_selection(cfg: Config, qm: QueryModel, camera, points: Sequence,
                    negative_points: Sequence = ()) -> tuple[torch.Tensor, dict]:
    """bool [N] selection: the union of the points' instance regions minus the negative points' regions.
    info: per point its seed (Gaussian index, rank and weight in the pixel), the region's share of the
    pixel's weight, the pixel's alpha and the region's size. A point on empty background is refused."""
    points = check_points(camera, points, "point")
    negative_points = check_points(camera, negative_points, "negative point")
    if not points:
        raise StageError("a point prompt needs at least one --point X Y")
    r = cfg.renderer
    idx, w = pixel_contributions(qm.params, camera, points + negative_points, top_k=SHARE_TOP_K,
                                 tile_size=r.tile_size, near=r.near, far=r.far)    # one projection
    kinds = ["point"] * len(points) + ["negative point"] * len(negative_points)
    for (x, y), kind, top in zip(points + negative_points, kinds, idx[:, 0].tolist()):
        if top < 0:
            raise StageError(f"{kind} ({x:g}, {y:g}) of view {camera.image_name} is on empty background: no "
                             f"Gaussian contributes to that pixel, so its selection would be empty; pick a "
                             f"pixel on an object")
    regions = [pixel_region(cfg, qm, idx[i], w[i]) for i in range(len(kinds))]
    sel = torch.zeros(qm.feats.shape[0], dtype=torch.bool, device=qm.feats.device)
    for region, _ in regions[:len(points)]:
        sel |= region
    for region, _ in regions[len(points):]:
        sel &= ~region
    return sel, {"seeds": [i for _, i in regions[:len(points)]],
                 "negative_seeds": [i for _, i in regions[len(points):]], "threshold": loosest_threshold(cfg, qm)}


def default_name(view: str, points, negative_points=()) -> str:
    """``point_<view>_<x>_<y>[_<x>_<y>...][_minus_<x>_<y>...]``."""
    xy = lambda pts: "_".join(f"{float(x):g}_{float(y):g}" for x, y in pts)  # noqa: E731
    name = f"point_{view}_{xy(points)}"
    return name + (f"_minus_{xy(negative_points)}" if negative_points else "")


def run_point_prompt(cfg: Config, run_dir: Path, view: str, points, negative_points=(), name: str | None = None,
                     device=None, cameras=None) -> tuple[str, dict, dict]:
    """``query.py --point``: the selection of the points of ``view`` -> ``queries/<name>.npy`` + its
    ``index.json`` record ``{"mode": "point", "prompt": {"view", "points", "negative_points"}, "seconds"}``.
    Returns (name, record, info). ``cameras``: the scene's cameras (default: loaded from the config)."""
    from scene.dataset import load_scene_from_config
    from scene.names import safe_stem

    if cameras is None:
        cameras = load_scene_from_config(cfg.data, -1).all_cameras
    camera = find_view(cameras, view)
    points = check_points(camera, points, "point")             # bad input refused before loading the model
    negative_points = check_points(camera, negative_points, "negative point")
    name = name if name is not None else default_name(view, points, negative_points)
    safe_stem(name)                                            # refuses an empty / unusable name early
    qm = load_query_model(cfg, run_dir, device)
    t0 = time.time()
    sel, info = point_selection(cfg, qm, camera, points, negative_points)
    seconds = round(time.time() - t0, 4)
    record = {"mode": "point", "prompt": {"view": view, "points": points, "negative_points": negative_points},
              "seconds": seconds}
    rec = record_selections(run_dir, qm.model, qm.d, {name: (sel.cpu().numpy(), record)})[name]
    return name, rec, info
