"""ScanNet per-point predictions of a run (OpenGaussian's protocol, docs/method.md §8).

The run's Gaussians are the scene's mesh vertices (trained with ``rgb.freeze_means``: one Gaussian
per vertex of ``points3d.ply``, same order), so each Gaussian is a labelled point. A point's class
is the one whose text its language feature matches best: ``argmax_c R_ci`` with COS3D's relevancy
``R_ci = sigmoid(T (L_i·t_c - max_n L_i·t_n))`` (scene.grounding.relevancy). The negative term does
not depend on c and the sigmoid is increasing, so this is ``argmax_c L_i·t_c``, OpenGaussian's rule
(the most similar class text); the scores returned are those cosines. ``scene/scannet.py`` scores them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arguments import Config
from scene.errors import StageError
from scene.scannet import NYU40_NAMES, SUBSETS, read_points

from .mapping import load_instance_model, load_language_field
from .query import build_encoder

POSITION_TOL = 1e-4  # the frozen Gaussians are the PLY's float32 vertices (written and read back exactly)


@torch.no_grad()
def point_scores(cfg: Config, run_dir: Path, labels_ply: Path, device, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [N, K]: cosine of each Gaussian's language feature to each class text of
    ``classes`` (default the 19 of ``SUBSETS[19]``), stored opacities [N]) of the run; refuses a run
    whose Gaussians are not ``labels_ply``'s vertices."""
    classes = list(SUBSETS[19] if classes is None else classes)
    params = load_instance_model(run_dir, device)
    xyz = read_points(labels_ply)
    means = params["means"].detach().cpu().numpy()
    if means.shape != xyz.shape or not np.allclose(means, xyz, atol=POSITION_TOL, rtol=0):
        raise StageError(f"{run_dir}: its {means.shape[0]} Gaussians are not the {xyz.shape[0]} vertices of "
                         f"{labels_ply} (train the rgb stage with rgb.freeze_means=true, "
                         f"rgb.densify.enabled=false: script/train_scannet.sh)")
    lang, _ = load_language_field(cfg, run_dir, params)
    enc, _ = build_encoder(cfg, run_dir)
    text = enc.encode([NYU40_NAMES[c] for c in classes]).to(lang.device).float()
    scores = lang.dots(F.normalize(text, dim=-1))  # [N, K]: the field's rows are unit vectors
    return scores.cpu().numpy().astype(np.float32), params["opacities"].reshape(-1).cpu().numpy()
