"""Stage 1: the instance field (COS3D ``train_instance.py``, docs/method.md §3).

Geometry and colour come from the rgb stage (or any 3DGS PLY) and stay frozen: no densification,
no opacity reset. A ``feature_dim``-D feature per Gaussian is rendered L2-normalised on a zero
background and trained with ProtoNCE against the SAM id maps of one level. Output:
``<run>/instance/point_cloud.ply`` = the 3DGS PLY + ``semantic_0..D-1`` (raw features).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from arguments import Config
from gaussian_renderer.sh import SH_C0
from scene.atomic import write_json
from scene.views import SceneData
from scene.distributed import Ranks, my_share, sum_gradients, views_per_step
from scene.errors import StageError
from scene.gaussian_model import load_checkpoint, load_ply, save_checkpoint, save_ply
from scene.instance_loss import protonce_loss
from scene.language_features import check_ids, load_clip, load_seg

from .rendering import render_features

STAGE = "instance"


def init_features(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """COS3D init: uniform [0,1) mapped through RGB->SH, (u - 0.5) / C0, i.e. about [-1.77, 1.77]."""
    return (torch.rand(n, dim, generator=generator) - 0.5) / SH_C0


class SegCache:
    """Id maps of one SAM level per training view, loaded once and kept compact (int16/int32)."""

    def __init__(self, source_path: str, level: int, folder: str, device):
        self.source_path, self.level, self.folder, self.device = source_path, level, folder, device
        self._maps: dict[int, torch.Tensor] = {}

    def get(self, cam) -> torch.Tensor:
        if cam.uid not in self._maps:
            seg = load_seg(self.source_path, cam, self.level, self.folder)
            n_rows = load_clip(self.source_path, cam, self.folder).shape[0]
            check_ids(seg, n_rows, f"{self.source_path}/{self.folder}/{cam.image_name}_s.npy")
            dtype = torch.int16 if n_rows < 32767 else torch.int32
            self._maps[cam.uid] = seg.to(dtype).to(self.device)
        return self._maps[cam.uid].long()


def geometry_source(run_dir: Path) -> Path:
    ply = Path(run_dir) / "rgb" / "point_cloud.ply"
    if not ply.is_file():
        raise StageError(f"{ply} not found: run `python train.py --stage rgb -s <scene> -m {run_dir}` first "
                         f"(or bring a 3DGS model with --init_ply)")
    return ply


def pca_preview(feat_map: torch.Tensor) -> np.ndarray:
    """[H,W,D] features -> uint8 [H,W,3] image of their first three principal components."""
    H, W, D = feat_map.shape
    x = feat_map.reshape(-1, D).float()
    x = x - x.mean(0, keepdim=True)
    sub = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:20000].to(x.device)]
    _, _, V = torch.linalg.svd(sub, full_matrices=False)
    y = x @ V[:3].T
    lo, hi = torch.quantile(y, 0.01, dim=0), torch.quantile(y, 0.99, dim=0)
    y = ((y - lo) / (hi - lo + 1e-9)).clamp(0, 1)
    return (y.reshape(H, W, 3).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def sample_generator(seed: int, step: int, slot: int, device) -> torch.Generator:
    """The pixel-sampling RNG of view ``slot`` of ``step``: a function of (seed, step, slot) alone, so a
    view samples the same pixels whichever rank renders it and a resumed run continues the stream."""
    return torch.Generator(device=device).manual_seed((((seed + 1) * 1_000_003 + step) * 65_536 + slot) % 2**63)


def train_instance(cfg: Config, run_dir: Path, scene: SceneData, device: torch.device,
                   ranks: Ranks | None = None) -> dict:
    """Train (or resume) the instance field. The feature folder was checked in full by the caller
    (``train.py`` runs ``check_folder`` before the stage can be invalidated). Under torchrun every rank
    calls this with its ``ranks`` (scene/distributed.py); rank 0 writes."""
    ranks = ranks or Ranks(device=device)
    from PIL import Image

    c = cfg.instance
    out_dir = Path(run_dir) / STAGE
    train_cams = scene.train_cameras
    if not train_cams:
        raise StageError(f"{scene.source_path}: no training views")
    frozen = {k: v.detach() for k, v in load_ply(geometry_source(run_dir), device=device).items()
              if k != "ins_feat"}
    n = frozen["means"].shape[0]

    gen = torch.Generator().manual_seed(cfg.run.seed)
    ckpt_path = out_dir / "ckpt.pt"
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, device=device)
        ins_feat = ck["params"]["ins_feat"].clone().requires_grad_(True)
        if ins_feat.shape != (n, c.feature_dim):
            raise StageError(f"{ckpt_path}: features {tuple(ins_feat.shape)} do not fit {n} Gaussians x "
                             f"{c.feature_dim}; the rgb stage changed: use --force")
        start, order = ck["step"], ck["extra"]["view_order"].tolist()
        gen.set_state(ck["extra"]["view_rng"].cpu())  # RNG states are CPU byte tensors, also for CUDA generators
        if ranks.is_main:
            print(f"[instance] resuming from {ckpt_path} at step {start}")
    else:
        ins_feat = init_features(n, c.feature_dim, gen).to(device).requires_grad_(True)
        start, order, ck = 0, [], None
    opt = torch.optim.Adam([ins_feat], lr=c.lr, eps=1e-15)  # eps as the 3DGS optimizers of COS3D
    if ck is not None:
        opt.load_state_dict(ck["optimizers"]["ins_feat"])

    segs = SegCache(scene.source_path, c.sam_level, c.features_folder, device)
    n_step = views_per_step(c.batch_views, ranks, "instance")
    t0 = time.time()
    bar = tqdm(range(start, c.iterations), initial=start, total=c.iterations, desc="instance",
               disable=not (cfg.run.progress and ranks.is_main), dynamic_ncols=True)
    stats_ema: dict = {}
    for step in bar:
        slots = []
        for slot in range(n_step):  # the same draw on every rank
            if not order:
                order = torch.randperm(len(train_cams), generator=gen).tolist()
            slots.append((slot, train_cams[order.pop()]))
        step_loss, stats = 0.0, {}
        for slot, cam in my_share(slots, ranks):
            seg = segs.get(cam)
            feat_map, _ = render_features(frozen, ins_feat, cam, cfg)
            loss, stats = protonce_loss(
                feat_map.reshape(-1, c.feature_dim), seg.reshape(-1), num_samples=c.num_samples,
                min_cluster_size=c.min_cluster_size, phi_scale=c.phi_scale, phi_min=c.phi_min, phi_max=c.phi_max,
                norm_weight=c.norm_weight, loss_scale=c.loss_scale,
                generator=sample_generator(cfg.run.seed, step, slot, device))
            (loss / n_step).backward()
            step_loss += loss.item() / n_step
        step_loss = sum_gradients([ins_feat], ranks, step_loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for k, v in {**stats, "loss": step_loss}.items():  # stats: this rank's last view
            stats_ema[k] = v if k not in stats_ema else 0.9 * stats_ema[k] + 0.1 * v
        if step % 10 == 0:
            bar.set_postfix(loss=f"{stats_ema['loss']:.4f}", nce=f"{stats_ema['nce']:.1f}",
                            reg=f"{stats_ema['reg']:.3f}", clusters=f"{stats_ema['n_clusters']:.0f}")
        done = step + 1
        if not ranks.is_main:  # previews and checkpoints are rank 0's
            continue
        if c.preview_every and (done % c.preview_every == 0 or done == c.iterations):
            (out_dir / "previews").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pca_preview(feat_map.detach())).save(out_dir / "previews" / f"{done:06d}_{cam.image_name}.png")
        if c.checkpoint_every and done % c.checkpoint_every == 0 and done < c.iterations:
            _save(ckpt_path, ins_feat, opt, done, gen, order)
    bar.close()
    if not ranks.is_main:
        return {"iterations": c.iterations, "n_gaussians": n, "rank": ranks.rank}

    params = dict(frozen)
    params["ins_feat"] = ins_feat.detach()
    save_ply(out_dir / "point_cloud.ply", params, semantic=ins_feat.detach())
    _save(ckpt_path, ins_feat, opt, c.iterations, gen, order)
    summary = {"iterations": c.iterations, "n_gaussians": n, "feature_dim": c.feature_dim,
               "views_per_step": n_step, "ranks": ranks.world,
               "final_loss_ema": stats_ema.get("loss"), "seconds_this_run": round(time.time() - t0, 1)}
    write_json(out_dir / "train_stats.json", summary)
    return summary


def _save(path, ins_feat, opt, step, gen, order):
    save_checkpoint(path, {"ins_feat": ins_feat}, step, optimizers={"ins_feat": opt},
                    extra={"view_rng": gen.get_state(), "view_order": torch.tensor(order, dtype=torch.long)})
