"""Stage 0: vanilla 3D Gaussian Splatting (graphdeco-inria 3DGS recipe on our renderer).

L1 + 0.2 D-SSIM, SH degree warm-up, 3DGS learning rates with the exponential position schedule,
densification through ``gsplat.strategy.DefaultStrategy`` (plus the opacity reset, see
``_maybe_reset_opacity``), periodic PSNR/SSIM on held-out views, a resumable checkpoint, and the
standard 3DGS PLY at the end: ``<run>/rgb/point_cloud.ply``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from arguments import Config
from gaussian_renderer import render
from scene.views import SceneData
from scene.gaussian_model import (init_from_points, load_checkpoint, load_ply, make_parameters, random_init,
                                  save_checkpoint, save_ply)

from scene.distributed import Ranks, merged_info, my_share, sum_gradients, views_per_step
from scene.image_metrics import psnr, ssim
from scene.atomic import write_json
from scene.errors import StageError

STAGE = "rgb"


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """3DGS ``get_expon_lr_func`` with its default lr_delay_steps = 0 (the delay multiplier is then
    inactive): log-linear interpolation from lr_init at step 0 to lr_final at max_steps."""
    if max_steps <= 0:
        return lr_init
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


class ImageCache:
    """Training images as uint8 tensors, loaded once (4x smaller than float32)."""

    def __init__(self, device):
        self.device = device
        self._imgs: dict[int, torch.Tensor] = {}

    def get(self, cam) -> torch.Tensor:
        if cam.uid not in self._imgs:
            self._imgs[cam.uid] = (cam.load_image() * 255.0 + 0.5).to(torch.uint8).to(self.device)
        return self._imgs[cam.uid].float() / 255.0


def make_optimizers(params, cfg: Config, extent: float) -> dict:
    r = cfg.rgb
    lrs = {"means": r.means_lr * extent, "scales": r.scales_lr, "quats": r.quats_lr,
           "opacities": r.opacities_lr, "sh0": r.sh0_lr, "shN": r.shN_lr}
    # Adam eps 1e-15 as in 3DGS / gsplat simple_trainer; one optimizer per key (what DefaultStrategy expects)
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15) for k in lrs}


def make_strategy(cfg: Config):
    from gsplat.strategy import DefaultStrategy

    d = cfg.rgb.densify
    return DefaultStrategy(
        prune_opa=d.prune_opa, grow_grad2d=d.grow_grad2d, grow_scale3d=d.grow_scale3d,
        prune_scale3d=d.prune_scale3d, refine_start_iter=d.refine_start_iter,
        refine_stop_iter=d.refine_stop_iter, refine_every=d.refine_every,
        # gsplat 1.5.3's own reset test (`step % reset_every == 0 & step > 0`) never fires; we reset ourselves
        reset_every=d.reset_every, verbose=False,
    )


def _maybe_reset_opacity(params, optimizers, state, step: int, cfg: Config) -> None:
    """The opacity reset gsplat 1.5.3's ``DefaultStrategy`` means to do (its own never fires): every
    ``reset_every`` steps while densifying, opacity <- min(opacity, 2 * prune_opa) and the Adam moments of
    the opacities zeroed (gsplat ``reset_opa``; = 3DGS's min(opacity, 0.01) at the default prune_opa 0.005)."""
    d = cfg.rgb.densify
    if d.enabled and 0 < step < d.refine_stop_iter and step % d.reset_every == 0:
        from gsplat.strategy.ops import reset_opa

        reset_opa(params=params, optimizers=optimizers, state=state, value=d.prune_opa * 2.0)


@torch.no_grad()
def evaluate(params, cameras, cfg: Config, bg: torch.Tensor, cache: ImageCache | None = None) -> dict:
    """Mean PSNR / SSIM over ``cameras``."""
    if not cameras:
        return {"n_views": 0}
    ps, ss = [], []
    for cam in cameras:
        out = render(params, cam, bg=bg, return_depth=False, **cfg.renderer.kwargs())
        gt = cache.get(cam) if cache else cam.load_image().to(bg.device)
        img = out.color.clamp(0, 1)
        ps.append(psnr(img, gt))
        ss.append(ssim(img, gt).item())
    return {"n_views": len(cameras), "psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss)}


def train_rgb(cfg: Config, run_dir: Path, scene: SceneData, device: torch.device,
              init_ply: str | None = None, ranks: Ranks | None = None) -> dict:
    """Run (or resume) stage 0 and return its summary. ``begin_stage`` must have been called. Under
    torchrun every rank calls this with its ``ranks`` (scene/distributed.py); rank 0 writes."""
    ranks = ranks or Ranks(device=device)
    out_dir = Path(run_dir) / STAGE
    r = cfg.rgb
    extent = float(scene.cameras_extent)
    bg = torch.ones(3, device=device) if cfg.data.white_background else torch.zeros(3, device=device)
    train_cams, test_cams = scene.train_cameras, scene.test_cameras

    if init_ply:  # bring-your-own 3DGS model: no training, just adopt it (and evaluate it)
        params = load_ply(init_ply, device=device)
        save_ply(out_dir / "point_cloud.ply", params)
        ev = evaluate(params, test_cams, cfg, bg)
        summary = {"init_ply": str(init_ply), "n_gaussians": int(params["means"].shape[0]), "test": ev}
        write_json(out_dir / "eval.json", {"final": ev})
        return summary

    ckpt_path = out_dir / "ckpt.pt"
    gen = torch.Generator().manual_seed(cfg.run.seed)
    history: list = []
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, device=device)
        params = make_parameters(ck["params"])
        start = ck["step"]
        gen.set_state(ck["extra"]["view_rng"].cpu())  # RNG states are CPU byte tensors (map_location may be CUDA)
        order = ck["extra"]["view_order"].tolist()
        history = list(ck["extra"].get("history", []))
        _restore_global_rng(ck["extra"], device)
        if ranks.is_main:
            print(f"[rgb] resuming from {ckpt_path} at step {start}")
    else:
        if r.init == "points" and len(scene.points_xyz) > 0:
            init = init_from_points(torch.from_numpy(scene.points_xyz), torch.from_numpy(scene.points_rgb),
                                    sh_degree=r.sh_degree, init_opacity=r.init_opacity, device=device)
        elif r.init in ("points", "random"):
            if r.init == "points":
                print("[rgb] the COLMAP model has no 3D points: using a random initialisation")
            init = random_init(r.random_init_points, extent, sh_degree=r.sh_degree,
                               init_opacity=r.init_opacity, device=device, seed=cfg.run.seed)
        else:
            raise ValueError(f"rgb.init must be 'points' or 'random', got {r.init!r}")
        params = make_parameters(init)
        start, order = 0, []
        ck = None

    if r.freeze_means:  # OpenGaussian --frozen_init_pts: the points stay where they are, one Gaussian each
        if r.densify.enabled or r.init != "points" or len(scene.points_xyz) == 0:
            raise StageError(f"rgb.freeze_means keeps one Gaussian per point of the scene: it needs rgb.init=points, "
                             f"points in {scene.source_path} and rgb.densify.enabled=false (got init={r.init}, "
                             f"{len(scene.points_xyz)} points, densify.enabled={r.densify.enabled})")
        params["means"].requires_grad_(False)  # no gradient: its optimizer never moves it
    optimizers = make_optimizers(params, cfg, extent)
    strategy = make_strategy(cfg)
    state = strategy.initialize_state(scene_scale=extent)
    if ck is not None:
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        state.update(ck["strategy_state"])

    cache = ImageCache(device)
    if not train_cams:
        raise ValueError(f"{scene.source_path}: no training views")
    n_step = views_per_step(r.batch_views, ranks, "rgb")
    if ck is not None and ck["extra"].get("batch_views", n_step) != n_step:
        print(f"[rgb] the checkpoint trained {ck['extra']['batch_views']} views per step, now {n_step}")
    t0 = time.time()
    bar = tqdm(range(start, r.iterations), initial=start, total=r.iterations, desc="rgb",
               disable=not (cfg.run.progress and ranks.is_main), dynamic_ncols=True)
    loss_ema = None
    for step in bar:
        cams = []
        for _ in range(n_step):  # the same draw on every rank
            if not order:
                order = torch.randperm(len(train_cams), generator=gen).tolist()
            cams.append(train_cams[order.pop()])
        lr = expon_lr(step, r.means_lr * extent, r.means_lr_final * extent, r.iterations)
        for g in optimizers["means"].param_groups:
            g["lr"] = lr
        sh_deg = min(step // max(r.sh_degree_interval, 1), r.sh_degree)
        step_bg = torch.rand(3, device=device) if r.random_background else bg
        infos, step_loss = [], 0.0
        for cam in my_share(cams, ranks):  # each view's graph is freed by its own backward
            gt = cache.get(cam)
            out = render(params, cam, bg=step_bg, sh_degree=sh_deg, return_depth=False, **cfg.renderer.kwargs())
            if r.densify.enabled:
                strategy.step_pre_backward(params, optimizers, state, step, out.info)
            l1 = (out.color - gt).abs().mean()
            loss = ((1.0 - r.lambda_dssim) * l1 + r.lambda_dssim * (1.0 - ssim(out.color, gt))) / n_step
            loss.backward()
            infos.append(out.info)
            step_loss += loss.item()
        step_loss = sum_gradients(list(params.values()), ranks, step_loss)
        if r.densify.enabled and step < strategy.refine_stop_iter:
            info = merged_info(infos, cams[0].width, cams[0].height, n_step, ranks)
            strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for o in optimizers.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if r.densify.enabled:
            _maybe_reset_opacity(params, optimizers, state, step, cfg)

        loss_ema = step_loss if loss_ema is None else 0.9 * loss_ema + 0.1 * step_loss
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}", n=int(params["means"].shape[0]))
        done = step + 1
        if not ranks.is_main:  # evaluation, checkpoints and logs are rank 0's
            continue
        if r.eval_every and done % r.eval_every == 0 and done < r.iterations:
            ev = evaluate(params, test_cams, cfg, bg)
            history.append({"step": done, **ev})
            if ev.get("n_views"):
                tqdm.write(f"[rgb] step {done}: test PSNR {ev['psnr']:.2f} SSIM {ev['ssim']:.4f}")
        if r.checkpoint_every and done % r.checkpoint_every == 0 and done < r.iterations:
            _save_ckpt(ckpt_path, params, optimizers, state, done, gen, order, history, n_step)
    bar.close()

    params_final = {k: v.detach() for k, v in params.items()}
    if not ranks.is_main:
        return {"iterations": r.iterations, "n_gaussians": int(params_final["means"].shape[0]), "rank": ranks.rank}
    save_ply(out_dir / "point_cloud.ply", params_final)
    ev_test = evaluate(params_final, test_cams, cfg, bg)
    ev_train = evaluate(params_final, train_cams[:: max(1, len(train_cams) // 8)], cfg, bg, cache)
    history.append({"step": r.iterations, **ev_test})
    write_json(out_dir / "eval.json", {"final": {"test": ev_test, "train_subset": ev_train}, "history": history})
    _save_ckpt(ckpt_path, params, optimizers, state, r.iterations, gen, order, history, n_step)
    return {"iterations": r.iterations, "n_gaussians": int(params_final["means"].shape[0]),
            "views_per_step": n_step, "ranks": ranks.world,
            "test": ev_test, "train_subset": ev_train, "seconds_this_run": round(time.time() - t0, 1)}


def _global_rng(device) -> dict:
    """The global RNG states (densification's split offsets and random backgrounds draw from them), so
    that a resumed run continues the uninterrupted one's stream."""
    out = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(device)
    return out


def _restore_global_rng(extra: dict, device) -> None:
    if "torch_rng" in extra:
        torch.set_rng_state(extra["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in extra:
        torch.cuda.set_rng_state(extra["cuda_rng"].cpu(), device)


def _save_ckpt(path, params, optimizers, state, step, gen, order, history, batch_views):
    strategy_state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) or v is None
                      or isinstance(v, (int, float))}
    device = params["means"].device
    save_checkpoint(path, params, step, optimizers=optimizers, strategy_state=strategy_state,
                    extra={"view_rng": gen.get_state(), "view_order": torch.tensor(order, dtype=torch.long),
                           "history": history, "batch_views": batch_views, **_global_rng(device)})
