"""Train one stage of the pipeline into a run directory.

    python train.py --stage rgb -s <scene> -m <run dir> [-r 2] [-c argfile ...] [--set section.key=value ...]

Stages (each reads its finished predecessor from the same run dir):
  rgb       vanilla 3DGS on the scene's images -> <run>/rgb/point_cloud.ply
            (or adopt an existing 3DGS model with --init_ply, skipping training)
  instance  frozen geometry + a 16-D instance feature per Gaussian, ProtoNCE on SAM level-3 masks
            -> <run>/instance/point_cloud.ply (3DGS PLY + semantic_0..15)
  mapping   training-free instance -> CLIP mapping: mask-level pairs over all views + the per-Gaussian
            language field (kernel regression or MLP, 3D smoothing) -> <run>/mapping/

A finished stage is skipped unless --force; an interrupted one resumes from its checkpoint; one whose
predecessor was redone starts over. One process at a time works in a run dir.
graphdeco habits: -r/--resolution, -w/--white_background and --eval set data.resolution,
data.white_background and the held-out split (on by default here, as 3DGS --eval).
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from arguments import ConfigError, add_config_args, load_config, read_saved_config
from arguments.cli import run_cli
from scene import distributed
from scene.errors import StageError
from scene.rundir import RunLock, begin_stage, mark_done, require_finished
from scene.runtime import resolve_device, seed_everything


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline, declared: what it is checked against and how it runs."""
    name: str
    sections: tuple[str, ...]          # config sections whose change makes a checkpoint unusable
    predecessor: str | None            # the finished stage it builds on
    holdout: Callable                  # cfg -> holdout offset of its scene (-1: every view)
    input_suffixes: tuple[str, ...]    # the scene's _s/_f files it reads (part of its inputs)
    run: Callable                      # (cfg, run_dir, scene, device, args, ranks) -> summary dict
    outputs: tuple[str, ...]           # run-dir files later stages read
    report: Callable                   # summary -> one line
    parallel: bool = False             # trains data-parallel under torchrun (scene/distributed.py)


def _ranks_note(ranks) -> str:
    return f", {ranks.world} ranks ({'nccl' if ranks.device.type == 'cuda' else 'gloo'})" if ranks.active else ""


def _run_rgb(cfg, run_dir, scene, device, args, ranks):
    from stages.rgb import train_rgb
    if ranks.is_main:
        print(f"[rgb] {len(scene.train_cameras)} train / {len(scene.test_cameras)} test views, "
              f"{len(scene.points_xyz)} points, device {device}{_ranks_note(ranks)}")
    return train_rgb(cfg, run_dir, scene, device, init_ply=args.init_ply, ranks=ranks)


def _report_rgb(s):
    t = s.get("test", {})
    psnr = f", test PSNR {t['psnr']:.2f} dB, SSIM {t['ssim']:.4f}" if t.get("n_views") else ""
    return f"{s['n_gaussians']} Gaussians{psnr}"


def _run_instance(cfg, run_dir, scene, device, args, ranks):
    from stages.instance import train_instance
    if ranks.is_main:
        print(f"[instance] {len(scene.train_cameras)} train views, SAM level {cfg.instance.sam_level}, "
              f"{cfg.instance.iterations} steps, device {device}{_ranks_note(ranks)}")
    return train_instance(cfg, run_dir, scene, device, ranks=ranks)


def _run_mapping(cfg, run_dir, scene, device, args, ranks):
    from stages.mapping import run_mapping
    return run_mapping(cfg, run_dir, scene, device)


STAGES = {s.name: s for s in (
    Stage("rgb", ("data", "rgb"), None, lambda c: c.rgb.holdout_offset, (), _run_rgb,
          ("rgb/point_cloud.ply",), _report_rgb, parallel=True),
    Stage("instance", ("data", "instance"), "rgb", lambda c: c.instance.holdout_offset, ("_s",), _run_instance,
          ("instance/point_cloud.ply",),
          lambda s: f"{s['n_gaussians']} Gaussians x {s['feature_dim']} features", parallel=True),
    # every view contributes pairs (COS3D builds this scene with eval=False)
    Stage("mapping", ("data", "instance", "mapping"), "instance", lambda c: -1, ("_s", "_f"), _run_mapping,
          ("mapping/pairs.pt",),  # language_field.pt is a cache tagged with the hash of its inputs
          lambda s: f"{s['n_pairs']} mask pairs, d = {s['median_distance']:.4f}, {s['kind']} language field "
                    f"for {s['n_gaussians']} Gaussians"),
)}


def stage_inputs(stage: Stage, scene, cfg, init_ply: str | None) -> dict:
    """The scene files a stage reads, ``{key: path}`` (their content is part of its fingerprint)."""
    if stage.name == "rgb":
        files = {f"{cfg.data.images}/{c.image_path.name}": c.image_path for c in scene.all_cameras if c.image_path}
        if init_ply:
            files["init_ply"] = Path(init_ply)
        return files
    folder = Path(scene.source_path) / cfg.instance.features_folder  # missing files: the stage names them
    return {f"{folder.name}/{c.image_name}{sfx}.npy": p for c in scene.all_cameras for sfx in stage.input_suffixes
            if (p := folder / f"{c.image_name}{sfx}.npy").is_file()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGES), help="which stage to train")
    p.add_argument("-s", "--source_path", default=None,
                   help="scene folder (images/, sparse/0/, language_features/); overrides data.source_path; "
                        "later stages default to the run's scene")
    p.add_argument("-m", "--model_path", required=True, help="run directory (created if missing)")
    p.add_argument("--init_ply", default=None,
                   help="rgb stage: adopt this existing 3DGS point_cloud.ply instead of training")
    p.add_argument("-r", "--resolution", type=int, default=None,
                   help="as 3DGS -r: 1/2/4/8 downscale factor, other > 0 target width, -1 native (data.resolution)")
    p.add_argument("-w", "--white_background", action="store_true",
                   help="as 3DGS -w: white background (data.white_background)")
    p.add_argument("--eval", action="store_true",
                   help="as 3DGS --eval: hold out every data.holdout_every-th view (the default here; "
                        "train on all views with --set rgb.holdout_offset=-1)")
    p.add_argument("--force", action="store_true", help="re-run a finished stage / restart an unfinished one")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_config_args(p)
    return p


def config_from_args(args):
    cfg = load_config(args.config, args.overrides)
    if args.resolution is not None:
        if args.resolution == 0 or args.resolution < -1:
            raise ConfigError(f"-r {args.resolution}: expected -1, 1/2/4/8 or a target width > 0")
        cfg.data.resolution = args.resolution
    if args.white_background:
        cfg.data.white_background = True
    if args.eval and cfg.rgb.holdout_offset < 0:
        cfg.rgb.holdout_offset = 0  # 3DGS --eval: views 0, 8, 16, ... are held out
    if args.source_path:
        src = Path(args.source_path)
        if not src.is_dir():
            raise StageError(f"{src}: scene folder not found")
        cfg.data.source_path = str(src.resolve())
    run_dir = Path(args.model_path)
    if not cfg.data.source_path and (run_dir / "config.yaml").is_file():
        saved, _ = read_saved_config(run_dir / "config.yaml")  # later stages default to the run's scene
        cfg.data = saved.data
    if not cfg.data.source_path:
        raise StageError("no scene: pass -s <scene folder> (or set data.source_path)")
    if cfg.instance.sam_level != cfg.mapping.sam_level:
        raise ConfigError(f"instance.sam_level={cfg.instance.sam_level} but mapping.sam_level={cfg.mapping.sam_level}: "
                          f"the pairs must come from the masks that trained the field; set both")
    return cfg


def run(args) -> int:
    stage = STAGES[args.stage]
    cfg = config_from_args(args)
    run_dir = Path(args.model_path)
    if args.init_ply and stage.name != "rgb":
        raise StageError("--init_ply is for the rgb stage")
    world, rank, _ = distributed.from_env()
    if world > 1 and (not stage.parallel or args.init_ply):
        if rank:  # nothing to share: rank 0 does the stage alone
            return 0
        print(f"[{stage.name}] not data-parallel: rank 0 runs it alone ({world} ranks launched)")
        world = 1
    if stage.parallel:  # a batch that does not split over the ranks is refused before anything is written
        distributed.views_per_step(getattr(cfg, stage.name).batch_views, distributed.Ranks(world=world), stage.name)
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    device = resolve_device(cfg.run.device)
    meta = {"argfiles": [str(f) for f in args.config], "overrides": list(args.overrides), "init_ply": args.init_ply}

    from scene.dataset import load_scene_from_config

    if stage.predecessor:  # before anything (even the run dir) is created
        require_finished(run_dir, stage.predecessor, stage.name)
    off = stage.holdout(cfg)
    # loading validates the scene before anything is written
    scene = load_scene_from_config(cfg.data, off)
    if args.init_ply:  # bad inputs are refused before a finished stage is invalidated by them
        from scene.gaussian_model import check_ply
        check_ply(args.init_ply)
    if stage.input_suffixes:
        from scene.language_features import check_folder
        check_folder(cfg.data.source_path, scene.all_cameras, cfg.instance.features_folder)
    ranks = distributed.init(device) if world > 1 else distributed.Ranks(device=device)
    try:
        return _run_stage(stage, cfg, run_dir, scene, args, meta, ranks)
    finally:
        distributed.shutdown(ranks)


def _run_stage(stage, cfg, run_dir, scene, args, meta, ranks) -> int:
    """Rank 0 locks the run dir and prepares the stage; every rank trains; rank 0 marks it done."""
    with RunLock(run_dir, f"train.py --stage {stage.name}") if ranks.is_main else nullcontext():
        go = None
        if ranks.is_main:
            try:
                go = begin_stage(run_dir, stage.name, cfg, list(stage.sections), meta, force=args.force,
                                 predecessor=stage.predecessor, inputs=stage_inputs(stage, scene, cfg, args.init_ply))
            finally:
                distributed.broadcast(go, ranks)  # None: rank 0 failed and says why
        else:
            go = distributed.broadcast(None, ranks)
            if go is None:
                return 2
        if not go:
            if ranks.is_main:
                print(f"[{stage.name}] already finished in {run_dir / stage.name} (use --force to redo it)")
            return 0
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        summary = stage.run(cfg, run_dir, scene, ranks.device, args, ranks)
        if not ranks.is_main:
            return 0
        mark_done(run_dir, stage.name, summary, {k: run_dir / k for k in stage.outputs})
    print(f"[{stage.name}] done: {stage.report(summary)}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
