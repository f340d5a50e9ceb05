"""Mask coverage: how much of each Gaussian's image footprint any SAM mask ever covered.

``coverage[i] = sum_views sum_p m(p) w_i(p) / sum_views sum_p w_i(p)``, ``w_i(p)`` Gaussian i's
compositing weight in pixel p (``alpha_i T_i``, the renderer's) and ``m(p) = 1`` where a mask of any
SAM level covers p (``_s.npy`` >= 0 at some level). A Gaussian never drawn in any view has
coverage 0. Gaussians of a backdrop that no mask covers have coverage ~0: their instance features
were never pulled by the contrastive loss and say little (docs/method.md §5.3.2).

Both sums come from one backward pass per view: rendering the constant features ``x_i = (1, 1)``
gives ``F_c(p) = sum_i w_i(p) x_ic``, and the gradient of ``sum_p m(p) F_0(p) + F_1(p)`` with
respect to ``x_i`` is ``(sum_p m(p) w_i(p), sum_p w_i(p))`` for every backend with a backward.

Cached in ``<run>/queries/mask_coverage.pt`` with what it was computed from (the instance model's
hash and the masks' fingerprints); a cache of another model or other masks is recomputed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from arguments import Config
from gaussian_renderer import render
from scene.atomic import torch_save
from scene.dataset import load_scene_from_config
from scene.errors import StageError
from scene.language_features import feature_paths
from scene.rundir import fingerprint

VERSION = 1


def masked_pixels(source_path, camera, folder: str) -> torch.Tensor:
    """bool [H, W] at the camera's resolution: covered by a mask of any level of the view's ``_s.npy``."""
    s_path, _ = feature_paths(source_path, camera.image_name, folder)
    try:
        s = np.load(s_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise StageError(f"{s_path}: cannot read the SAM id map ({e})") from None
    if s.ndim != 3:
        raise StageError(f"{s_path}: expected a [levels, H, W] id map, got shape {s.shape}")
    m = torch.from_numpy(np.asarray(s >= 0).any(axis=0).astype(np.float32))
    h, w = m.shape
    if (h, w) != (camera.height, camera.width):
        if abs(h / w - camera.height / camera.width) > 0.01:
            raise StageError(f"{s_path}: id map {w}x{h} has another aspect than the view {camera.width}x{camera.height}")
        m = F.interpolate(m[None, None], size=(camera.height, camera.width), mode="nearest")[0, 0]
    return m > 0.5


def footprint_weights(params: dict, cameras, masks, renderer_kwargs: dict, progress: bool = False) -> torch.Tensor:
    """[N, 2] per Gaussian: (weight on masked pixels, total weight), summed over ``cameras`` with the
    bool [H, W] ``masks`` (one per camera)."""
    frozen = {k: v.detach() for k, v in params.items() if k not in ("ins_feat", "sh0", "shN")}
    N = frozen["means"].shape[0]
    device = frozen["means"].device
    total = torch.zeros(N, 2, dtype=torch.float64, device=device)
    for cam, m in tqdm(list(zip(cameras, masks)), desc="mask coverage", disable=not progress, dynamic_ncols=True):
        x = torch.ones(N, 2, dtype=frozen["means"].dtype, device=device, requires_grad=True)
        with torch.enable_grad():
            out = render(frozen, cam, features=x, bg=torch.zeros(2, device=device), return_depth=False,
                         **renderer_kwargs)
            m = m.to(device=device, dtype=out.color.dtype)
            (out.color[..., 0] * m + out.color[..., 1]).sum().backward()
        total += x.grad.double()
    return total


def coverage_from_weights(w: torch.Tensor) -> torch.Tensor:
    """[N, 2] (masked, total) -> [N] masked / total, 0 where the total is 0."""
    return torch.where(w[:, 1] > 0, w[:, 0] / w[:, 1].clamp_min(1e-30), torch.zeros_like(w[:, 0])).float()


def mask_coverage(cfg: Config, run_dir: Path, params: dict, instance_sha: str) -> torch.Tensor:
    """[N] mask coverage of the run's instance model ``params`` (cached, see the module docstring)."""
    scene = load_scene_from_config(cfg.data, -1)
    folder = cfg.instance.features_folder
    files = {cam.image_name: feature_paths(scene.source_path, cam.image_name, folder)[0] for cam in scene.all_cameras}
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise StageError(f"{missing[0]}: SAM id map not found (needed by query.mask_coverage_min)")
    cache = Path(run_dir) / "queries" / "mask_coverage.pt"
    old = None
    if cache.is_file():
        try:
            old = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache is recomputed
            old = None
    known = old.get("masks") if isinstance(old, dict) else None
    masks_fp = fingerprint(files, known if isinstance(known, dict) else None)
    key = {"version": VERSION, "instance": instance_sha, "backend": cfg.renderer.backend}
    N = params["means"].shape[0]
    if (isinstance(old, dict) and old.get("key") == key and _shas(old.get("masks")) == _shas(masks_fp)
            and old["coverage"].shape == (N,)):
        return old["coverage"].to(params["means"].device)
    masks = [masked_pixels(scene.source_path, cam, folder) for cam in scene.all_cameras]
    w = footprint_weights(params, scene.all_cameras, masks, cfg.renderer.kwargs(), cfg.run.progress)
    cov = coverage_from_weights(w)
    torch_save({"key": key, "masks": masks_fp, "coverage": cov.cpu()}, cache)
    return cov


def _shas(fp) -> str:
    return json.dumps({k: v.get("sha256") for k, v in fp.items()} if isinstance(fp, dict) else None, sort_keys=True)
