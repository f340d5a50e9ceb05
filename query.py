"""Answer text queries or point prompts on a trained run: each -> the set of Gaussians forming that object.

    python query.py -m <run dir> [--query "red apple" --query "teapot" ...] [--set query.mode=language_only]

Needs the instance and mapping stages of the run. Without --query (and without query.queries in the
config) the queries are the categories of the scene's labelled frames, as LERF-OVS evaluates them.
A point prompt (--point X Y --view NAME) selects the instance under that pixel (docs/method.md §5.6).
Writes ``<run>/queries/<query>.npy`` (bool [N], one per Gaussian of <run>/instance/point_cloud.ply)
and ``<run>/queries/index.json`` (selected counts and per-query time). Export a selection as a
3DGS PLY with --export, the scene without it with --remove, and see both with --sheet (stages/edit.py).
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import sys
from pathlib import Path

from arguments.cli import add_run_config_args, load_run_config, run_cli
from scene.rundir import RunLock
from scene.runtime import resolve_device, seed_everything


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="run directory (instance + mapping stages done)")
    p.add_argument("--query", action="append", default=[], metavar="TEXT",
                   help="a text query; repeatable (default: the labelled categories of the scene)")
    p.add_argument("--export", action="store_true",
                   help="also write <run>/queries/<query>.ply: the selected Gaussians as a standard 3DGS PLY")
    p.add_argument("--remove", action="store_true",
                   help="also write <run>/queries/<query>_removed.ply: the scene WITHOUT the selection (N - |selection| "
                        "Gaussians), a standard 3DGS PLY without semantic_* (for splat viewers; look at it with "
                        "render.py --edited); needs --query (one full-size PLY per query)")
    p.add_argument("--sheet", action="store_true",
                   help="also write <run>/queries/<query>_sheet.png: a contact sheet, rows = up to 4 labelled frames "
                        "that show the query's category (else evenly spaced views), columns = before (the whole "
                        "model), the selection alone (on white), after (the model without it), tiles at most 480 "
                        "px wide; needs no --remove")
    p.add_argument("--point", action="append", nargs=2, type=float, default=[], metavar=("X", "Y"),
                   help="a point prompt instead of text: pixel (X, Y) of --view (x right, y down, at the run's "
                        "resolution) selects the instance around the Gaussian drawn most in it; repeatable (union)")
    p.add_argument("--negative-point", action="append", nargs=2, type=float, default=[], metavar=("X", "Y"),
                   dest="negative_point", help="with --point: remove the instance around this pixel; repeatable")
    p.add_argument("--view", metavar="NAME", help="with --point: the view (image name, e.g. frame_00003)")
    p.add_argument("--name", metavar="NAME", help="with --point: the selection's name (default point_<view>_<x>_<y>)")
    add_run_config_args(p)
    return p


def run(args) -> int:
    import json

    from arguments import save_config

    from stages.edit import check_query_edits, write_query_edits
    from stages.query import default_queries, run_queries

    run_dir = Path(args.model_path)
    kinds = edit_kinds(args)
    if args.point or args.negative_point or args.view is not None or args.name is not None:
        return run_points(args, run_dir, kinds)
    cfg = load_run_config(run_dir, args.config, args.overrides)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    queries = args.query or default_queries(cfg)
    check_query_edits(run_dir, queries, kinds)  # before anything is written
    with RunLock(run_dir, "query.py"):
        index = run_queries(cfg, run_dir, queries, device)
        encoders = sorted({json.dumps(v["text_encoder"], sort_keys=True) for v in index.values()})
        save_config(cfg, run_dir / "queries" / "config.yaml",  # the resolved query-time config
                    meta={"queries": list(index), "text_encoder": [json.loads(e) for e in encoders]})
    width = max(len(q) for q in index)
    for q, info in index.items():
        print(f"  {q:<{width}}  {info['n_selected']:>8d} Gaussians  {1000 * info['seconds']:8.1f} ms")
    if kinds:
        with RunLock(run_dir, "query.py"):
            write_query_edits(cfg, run_dir, list(index), kinds, device)
        print(f"[query] {' '.join('--' + k for k in kinds)}: {len(index)} queries -> {run_dir / 'queries'}")
    enc = next(iter(index.values()))["text_encoder"]
    desc = " ".join(str(x) for x in (enc.get("encoder"), enc.get("model"), enc.get("pretrained")) if x)
    print(f"[query] {len(index)} queries ({cfg.query.mode}, text encoder {desc}) -> {run_dir / 'queries'}")
    return 0


def edit_kinds(args) -> list[str]:
    """The edit outputs asked for (stages/edit.py), in the order they are written."""
    if args.remove and not (args.query or args.point):
        raise ValueError("--remove needs the object(s) to remove: give --query TEXT (without it every labelled "
                         "category would be removed, each into a full-size copy of the scene)")
    return [k for k in ("export", "remove", "sheet") if getattr(args, k)]


def run_points(args, run_dir: Path, kinds: list[str]) -> int:
    """--point X Y [--point ...] [--negative-point X Y ...] --view NAME [--name NAME] (stages/prompts.py),
    then the edit outputs ``kinds`` of the selection (stages/edit.py)."""
    from scene.selections import query_file
    from stages.edit import write_query_edits
    from stages.prompts import run_point_prompt

    if not args.point:
        raise ValueError("--view, --negative-point and --name go with --point X Y (a point prompt)")
    if args.view is None:
        raise ValueError("--point needs --view NAME: the view (image name, e.g. frame_00003) the pixel is in")
    if args.query:
        raise ValueError("give either --query (text) or --point (a point prompt), not both")
    cfg = load_run_config(run_dir, args.config, args.overrides)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    with RunLock(run_dir, "query.py"):
        name, rec, info = run_point_prompt(cfg, run_dir, args.view, args.point, args.negative_point, args.name, device)
    seeds = ", ".join(f"{s['gaussian']} (w {s['weight']:.2f})" for s in info["seeds"])
    print(f"  {name}  {rec['n_selected']:>8d} Gaussians  {1000 * rec['seconds']:8.1f} ms  seeds {seeds}")
    if kinds:
        with RunLock(run_dir, "query.py"):
            write_query_edits(cfg, run_dir, [name], kinds, device)
    print(f"[query] point prompt in view {args.view} -> {query_file(run_dir, name)}"
          + (f" ({' '.join('--' + k for k in kinds)} written)" if kinds else ""))
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
