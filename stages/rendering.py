"""Rendering what the pipeline computed, for the stages and the tools that show it.

* ``render_features``: a model's per-Gaussian features (normalised per Gaussian) rendered at one camera
  on a zero background: the instance stage's loss and previews, the mapping stage's pairs.
* ``render_selections``: each query's selection rendered alone in the given frames on a white
  background; alpha > ``eval.silhouette_alpha`` (0.7) -> ``<run>/renders/<frame>/<query>.png`` (0/255),
  colour -> ``<run>/renders_rgb/<frame>/<query>.png`` (``render.py``, the GPU benchmark).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from arguments import Config
from gaussian_renderer import render
from scene.atomic import png_save
from scene.errors import StageError
from scene.names import safe_stem
from scene.selections import load_selection


def render_features(frozen: dict, ins_feat: torch.Tensor, cam, cfg: Config):
    """[H,W,D] rendered per-Gaussian-normalised features on a zero background (+ the RenderOutput)."""
    out = render(frozen, cam, features=F.normalize(ins_feat, dim=-1),
                 bg=torch.zeros(ins_feat.shape[1], device=ins_feat.device), return_depth=False, **cfg.renderer.kwargs())
    return out.color, out


@torch.no_grad()
def render_selections(cfg: Config, run_dir: Path, model: dict, scene, frames: list[str], queries: list[str]) -> int:
    """Render every (frame, query) selection of ``model`` (the instance model the queries ran on);
    returns the number of masks written."""
    params = {k: v for k, v in model.items() if k != "ins_feat"}
    device = params["means"].device
    cams = {c.image_name: c for c in scene.all_cameras}
    missing = [f for f in frames if f not in cams]
    if missing:
        raise StageError(f"labelled frames {missing[:5]} are not views of the scene {scene.source_path} "
                         f"(labels of another scene?)")
    white = torch.ones(3, device=device)
    n = 0
    for text in tqdm(queries, desc="render selections", disable=not cfg.run.progress, dynamic_ncols=True):
        sel = torch.from_numpy(load_selection(run_dir, text, params["means"].shape[0])).to(device)
        sub = {k: v[sel] for k, v in params.items()}
        for frame in frames:
            out = render(sub, cams[frame], bg=white, return_depth=False, **cfg.renderer.kwargs())
            mask = (out.alpha[..., 0] > cfg.eval.silhouette_alpha).cpu().numpy().astype(np.uint8) * 255
            rgb = (out.color.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            for sub_dir, arr in (("renders", mask), ("renders_rgb", rgb)):
                (Path(run_dir) / sub_dir / frame).mkdir(parents=True, exist_ok=True)
                png_save(Path(run_dir) / sub_dir / frame / f"{safe_stem(text)}.png", arr)
            n += 1
    return n
