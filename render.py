"""Render a run to PNG files: query selections (default) or plain views.

    python render.py -m <run dir>                    # every query selection in every labelled frame
    python render.py -m <run dir> --views test       # the 3DGS model's test (train, all) views
    python render.py -m <run dir> --edited <ply>     # any 3DGS PLY (e.g. an edit) in the run's views

Selections (after ``query.py``): each ``<run>/queries/<query>.npy`` is rendered alone on a white
background in the labelled frames of the scene; alpha > eval.silhouette_alpha (0.7) gives the mask
``<run>/renders/<frame>/<query>.png`` (0/255) and the colour goes to ``<run>/renders_rgb/<frame>/<query>.png``.

Views: ``<run>/rgb/point_cloud.ply`` -> ``<run>/rgb/renders/<split>/<image_name>.png`` (and
``..._depth.png`` with --depth), plus ``metrics.json`` (PSNR/SSIM per view).

Edited: ``--edited <ply>`` (``queries/<query>_removed.ply`` of ``query.py --remove``, an export, any
3DGS PLY) -> ``<run>/renders_edited/<ply stem>/<image_name>.png`` for the views of ``--views``
(default all), with the run's cameras, resolution and background; ``source.json`` there names the
PLY, and renders of another PLY of the same name are refused instead of mixed in.
The scene, resolution and splits are those of ``<run>/config.yaml``.
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from arguments.cli import add_run_config_args, load_run_config, run_cli
from scene.atomic import png_save, write_json
from scene.errors import StageError
from scene.rundir import RunLock
from scene.runtime import resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="run directory written by train.py")
    p.add_argument("--views", default=None, choices=["test", "train", "all"],
                   help="render the 3DGS model's views of this split instead of the query selections")
    p.add_argument("--depth", action="store_true", help="with --views: also write a normalised depth PNG per view")
    p.add_argument("--edited", metavar="PLY", default=None,
                   help="render this 3DGS PLY (e.g. <run>/queries/<query>_removed.ply) in the run's views of "
                        "--views (default all) -> <run>/renders_edited/<ply stem>/<view>.png")
    add_run_config_args(p)
    return p


def to_png(img: torch.Tensor, path: Path) -> None:
    arr = (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    png_save(path, arr[..., 0] if arr.shape[-1] == 1 else arr)


def run(args) -> int:
    from scene.dataset import load_scene_from_config

    run_dir = Path(args.model_path)
    cfg = load_run_config(run_dir, args.config, args.overrides)
    device = resolve_device(cfg.run.device)
    edited = load_edited(args, device) if args.edited is not None else None  # checked before the scene loads
    off = cfg.rgb.holdout_offset
    scene = load_scene_from_config(cfg.data, off)
    with RunLock(run_dir, "render.py"):
        if edited is not None:
            return render_edited(args, cfg, run_dir, scene, edited)
        if args.views is None:
            return render_selection_masks(cfg, run_dir, scene, device)
        return render_views(args, cfg, run_dir, scene, device)


def render_selection_masks(cfg, run_dir: Path, scene, device) -> int:
    from scene.lerf_labels import ensure_gt, read_gt
    from scene.selections import read_index
    from stages.mapping import load_instance_model
    from stages.query import label_root_of, scene_name
    from stages.rendering import render_selections

    queries = list(read_index(run_dir)["queries"])
    frames = sorted(read_gt(ensure_gt(label_root_of(cfg), scene_name(cfg))))
    n = render_selections(cfg, run_dir, load_instance_model(run_dir, device), scene, frames, queries)
    print(f"[render] {n} selection masks ({len(queries)} queries x {len(frames)} labelled frames) -> {run_dir / 'renders'}")
    return 0


def load_edited(args, device) -> dict:
    from scene.gaussian_model import check_ply, load_ply

    if args.depth:
        raise ValueError("--depth goes with --views alone (the rgb model's views), not with --edited")
    check_ply(args.edited)  # missing, a folder, not a PLY, truncated: one line naming the file
    try:
        return load_ply(args.edited, device=device)
    except ValueError as e:
        if "missing PLY properties" not in str(e):
            raise
        raise ValueError(f"{e}: not a 3DGS PLY (--edited renders Gaussians: x y z, f_dc_*, opacity, scale_*, "
                         f"rot_*)") from None


def render_edited(args, cfg, run_dir: Path, scene, params: dict) -> int:
    from stages.edit import claim_render_dir, render_model_views

    split = args.views or "all"
    cams = {"test": scene.test_cameras, "train": scene.train_cameras, "all": scene.all_cameras}[split]
    if not cams:
        raise StageError(f"no {split} views in this run (rgb.holdout_offset={cfg.rgb.holdout_offset})")
    out_dir = run_dir / "renders_edited" / Path(args.edited).stem
    claim_render_dir(out_dir, Path(args.edited))
    render_model_views(cfg, params, cams, out_dir)
    n = params["means"].shape[0]
    print(f"[render] {args.edited} ({n} Gaussians): {len(cams)} {split} views -> {out_dir}")
    return 0


def render_views(args, cfg, run_dir: Path, scene, device) -> int:
    from gaussian_renderer import render
    from scene.gaussian_model import load_ply
    from scene.image_metrics import psnr, ssim

    ply = run_dir / "rgb" / "point_cloud.ply"
    if not ply.is_file():
        raise StageError(f"{ply} not found: run `python train.py --stage rgb -m {run_dir}` first")
    split = args.views
    cams = {"test": scene.test_cameras, "train": scene.train_cameras, "all": scene.all_cameras}[split]
    if not cams:
        raise StageError(f"no {split} views in this run (rgb.holdout_offset={cfg.rgb.holdout_offset})")
    params = load_ply(ply, device=device)
    bg = torch.ones(3, device=device) if cfg.data.white_background else torch.zeros(3, device=device)
    out_dir = run_dir / "rgb" / "renders" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    per_view = {}
    with torch.no_grad():
        for cam in tqdm(cams, desc=f"render {split}", disable=not cfg.run.progress):
            out = render(params, cam, bg=bg, return_depth=args.depth, **cfg.renderer.kwargs())
            to_png(out.color, out_dir / f"{cam.image_name}.png")
            if args.depth:
                d = out.depth[..., 0]
                valid = out.alpha[..., 0] > 0.5
                if valid.any():
                    lo, hi = d[valid].min(), d[valid].max()
                    dn = torch.where(valid, (d - lo) / (hi - lo + 1e-9), torch.ones_like(d))
                    to_png(dn[..., None], out_dir / f"{cam.image_name}_depth.png")
            gt = cam.load_image().to(device)
            per_view[cam.image_name] = {"psnr": psnr(out.color.clamp(0, 1), gt),
                                        "ssim": ssim(out.color.clamp(0, 1), gt).item()}
    mean = {k: float(np.mean([v[k] for v in per_view.values()])) for k in ("psnr", "ssim")}
    write_json(out_dir / "metrics.json", {"mean": mean, "per_view": per_view})
    print(f"[render] {len(cams)} {split} views -> {out_dir}  PSNR {mean['psnr']:.2f}  SSIM {mean['ssim']:.4f}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
