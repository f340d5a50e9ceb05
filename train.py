"""Train one stage of the pipeline into a run directory.

    python train.py --stage rgb -s <scene> -m <run dir> [-c argfile ...] [--set section.key=value ...]

Stages (each reads its predecessor from the same run dir):
  rgb       vanilla 3DGS on the scene's images -> <run>/rgb/point_cloud.ply
            (or adopt an existing 3DGS model with --init_ply, skipping training)
  instance  frozen geometry + a 16-D instance feature per Gaussian, ProtoNCE on SAM level-3 masks
            -> <run>/instance/point_cloud.ply (3DGS PLY + semantic_0..15)
  mapping   training-free instance -> CLIP mapping: mask-level pairs over all views + the per-Gaussian
            language field (kernel regression or MLP, 3D smoothing) -> <run>/mapping/

A finished stage is skipped unless --force; an interrupted one resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from arguments import add_config_args, load_config, read_saved_config
from stages.cli import run_cli
from stages.rundir import StageError, begin_stage, mark_done, resolve_device, seed_everything

STAGES = ("rgb", "instance", "mapping")


def feature_files(scene, cfg, *suffixes) -> list[Path]:
    """The scene's SAM/CLIP files a stage reads (part of its input fingerprint: regenerated features
    make its outputs stale). Missing files are reported by the stage itself."""
    folder = Path(scene.source_path) / cfg.instance.features_folder
    return [p for c in scene.all_cameras for sfx in suffixes
            if (p := folder / f"{c.image_name}{sfx}.npy").is_file()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES, help="which stage to train")
    p.add_argument("-s", "--source_path", default=None,
                   help="scene folder (images/, sparse/0/, language_features/); overrides data.source_path")
    p.add_argument("-m", "--model_path", required=True, help="run directory (created if missing)")
    p.add_argument("--init_ply", default=None,
                   help="rgb stage: adopt this existing 3DGS point_cloud.ply instead of training")
    p.add_argument("--force", action="store_true", help="re-run a finished stage / restart an unfinished one")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_config_args(p)
    return p


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.source_path:
        cfg.data.source_path = str(Path(args.source_path).resolve())
    run_dir = Path(args.model_path)
    if not cfg.data.source_path and (run_dir / "config.yaml").is_file():
        saved, _ = read_saved_config(run_dir / "config.yaml")  # later stages default to the run's scene
        cfg.data = saved.data
    if not cfg.data.source_path:
        raise StageError("no scene: pass -s <scene folder> (or set data.source_path)")
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    device = resolve_device(cfg.run.device)
    meta = {"argfiles": [str(f) for f in args.config], "overrides": list(args.overrides),
            "init_ply": args.init_ply}

    from scene.dataset import load_scene

    def scene_with_holdout(offset: int):
        return load_scene(cfg.data.source_path, images=cfg.data.images, resolution=cfg.data.resolution,
                          holdout_every=cfg.data.holdout_every, holdout_offset=None if offset < 0 else offset,
                          max_width=cfg.data.max_width)

    if args.stage == "rgb":
        from stages.rgb import train_rgb

        scene = scene_with_holdout(cfg.rgb.holdout_offset)  # validates the scene before anything is written
        if not begin_stage(run_dir, "rgb", cfg, ["data", "rgb"], meta, force=args.force):
            print(f"[rgb] already finished in {run_dir / 'rgb'} (use --force to retrain)")
            return 0
        seed_everything(cfg.run.seed)
        print(f"[rgb] {len(scene.train_cameras)} train / {len(scene.test_cameras)} test views, "
              f"{len(scene.points_xyz)} points, device {device}")
        summary = train_rgb(cfg, run_dir, scene, device, init_ply=args.init_ply)
        mark_done(run_dir, "rgb", summary)
        test = summary.get("test", {})
        if test.get("n_views"):
            print(f"[rgb] done: {summary['n_gaussians']} Gaussians, test PSNR {test['psnr']:.2f} dB, "
                  f"SSIM {test['ssim']:.4f}")
        else:
            print(f"[rgb] done: {summary['n_gaussians']} Gaussians")
    elif args.stage == "instance":
        from stages.instance import geometry_source, train_instance

        geometry_source(run_dir)  # fail early, before writing anything, if stage 0 is missing
        scene = scene_with_holdout(cfg.instance.holdout_offset)
        if not begin_stage(run_dir, "instance", cfg, ["data", "instance"], meta, force=args.force,
                           inputs=[geometry_source(run_dir), *feature_files(scene, cfg, "_s")]):
            print(f"[instance] already finished in {run_dir / 'instance'} (use --force to retrain)")
            return 0
        seed_everything(cfg.run.seed)
        print(f"[instance] {len(scene.train_cameras)} train views, SAM level {cfg.instance.sam_level}, "
              f"{cfg.instance.iterations} steps, device {device}")
        summary = train_instance(cfg, run_dir, scene, device)
        mark_done(run_dir, "instance", summary)
        print(f"[instance] done: {summary['n_gaussians']} Gaussians x {summary['feature_dim']} features")
    elif args.stage == "mapping":
        from stages.mapping import instance_source, run_mapping

        instance_source(run_dir)
        scene = scene_with_holdout(-1)  # every view contributes pairs (COS3D builds this scene with eval=False)
        if not begin_stage(run_dir, "mapping", cfg, ["data", "instance", "mapping"], meta, force=args.force,
                           inputs=[instance_source(run_dir), *feature_files(scene, cfg, "_s", "_f")]):
            print(f"[mapping] already finished in {run_dir / 'mapping'} (use --force to redo)")
            return 0
        seed_everything(cfg.run.seed)
        summary = run_mapping(cfg, run_dir, scene, device)
        mark_done(run_dir, "mapping", summary)
        print(f"[mapping] done: {summary['n_pairs']} mask pairs, d = {summary['median_distance']:.4f}, "
              f"{summary['kind']} language field for {summary['n_gaussians']} Gaussians")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
