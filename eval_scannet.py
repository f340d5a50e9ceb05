"""Score runs on ScanNet with OpenGaussian's per-point protocol (docs/method.md §8).

    python eval_scannet.py --scenes scene0000_00 scene0062_00 ... --data_root <SCANNET_ROOT> \\
        --runs_root output/<tag> [--subsets 19 15 10] [--out DIR]

For each scene: the run ``<runs_root>/<scene>/`` (instance + mapping stages done, trained with
``rgb.freeze_means`` so its Gaussians are the mesh vertices: script/train_scannet.sh) and the labels
``<data_root>/<scene>/<scene>_vh_clean_2.labels.ply`` (NYU40 ids). Every point gets the class whose
text its language feature matches best, within each class subset (19 / 15 / 10 NYU40 classes);
points of Gaussians with opacity < 0.1 and points labelled outside the subset are not scored.
mIoU / mAcc per scene are means over the classes present in its gt; the "mean" row is the unweighted
mean over scenes. Prints a table and writes metrics.json / metrics.csv to --out (default: --runs_root).
Exit status 2 with a one-line message on bad input; everything is checked before anything is written.
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import sys
from pathlib import Path

from arguments.cli import add_run_config_args, load_run_config, run_cli
from scene.runtime import resolve_device
from scene.scannet import SUBSETS, evaluate_scenes, format_table, labels_path, opacity_valid, read_vertex_labels
from scene.scannet import write_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", nargs="+", required=True, metavar="SCENE",
                   help="scene names, in the order of the output table (e.g. scene0000_00 scene0062_00)")
    p.add_argument("--data_root", required=True, type=Path,
                   help="folder holding <scene>/<scene>_vh_clean_2.labels.ply (the ScanNet scenes)")
    p.add_argument("--runs_root", required=True, type=Path,
                   help="folder holding one run directory per scene: <runs_root>/<scene>/")
    p.add_argument("--subsets", nargs="+", type=int, default=[19, 15, 10], choices=sorted(SUBSETS),
                   help="class subsets to score (default: 19 15 10)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write metrics.json and metrics.csv (default: --runs_root)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    add_run_config_args(p)  # -c / --set over each run's saved config (e.g. the text encoder), --debug
    return p


def run(args) -> int:
    from stages.scannet import point_scores

    for s in args.scenes:
        run_dir = args.runs_root / s
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir}: no trained run for scene {s!r} (script/train_scannet.sh)")
        read_vertex_labels(labels_path(args.data_root / s, s))  # every labels file readable before any work
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"{args.out}: is a file, not a folder (--out is where metrics.json/csv are written)")
    device = resolve_device(args.device)
    per_scene = {}
    for s in args.scenes:
        run_dir, ply = args.runs_root / s, labels_path(args.data_root / s, s)
        cfg = load_run_config(run_dir, args.config, args.overrides)
        scores, opacity = point_scores(cfg, run_dir, ply, device)
        per_scene[s] = (scores, read_vertex_labels(ply), opacity_valid(opacity))
    results = evaluate_scenes(per_scene, args.subsets)
    print(format_table(results))
    jpath, cpath = write_metrics(results, args.out if args.out is not None else args.runs_root)
    print(f"wrote {jpath} and {cpath}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
