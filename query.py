"""Answer text queries or point prompts on a trained run: each -> the set of Gaussians forming that object.

    python query.py -m <run dir> [--query "red apple" --query "teapot" ...] [--set query.mode=language_only]

Needs the instance and mapping stages of the run. Without --query (and without query.queries in the
config) the queries are the categories of the scene's labelled frames, as LERF-OVS evaluates them.
A point prompt (--point X Y --view NAME) selects the instance under that pixel (docs/method.md §5.6).
--granularity part|object|group|<scale> selects a finer or coarser level of a text query, --hierarchy
all three nested levels and their tree, <query>_hierarchy.json (docs/method.md §5.8).
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
    p.add_argument("--name", metavar="NAME", help="with --point or --image: the selection's name (default "
                                                  "point_<view>_<x>_<y> / image_<file stem>[_<box>])")
    p.add_argument("--image", metavar="FILE", help="an image prompt instead of text: the image (or its --box) is "
                   "embedded with the scene's image encoder and queried as a text query (docs/method.md §5.7)")
    p.add_argument("--box", nargs=4, type=int, metavar=("X0", "Y0", "X1", "Y1"),
                   help="with --image: the part of the image to use, pixel coordinates, x1 / y1 exclusive")
    p.add_argument("--granularity", metavar="G",
                   help="part | object | group | a positive scale s of the region thresholds 1 - s*m*d (object = 1, "
                        "the plain selection): nested selections -> queries/<query>@<G>.npy (docs/method.md §5.8)")
    p.add_argument("--hierarchy", action="store_true",
                   help="with --query: the part, object and group selections (<query>@part ...) and "
                        "queries/<query>_hierarchy.json, the tree of their regions (docs/method.md §5.8)")
    add_run_config_args(p)
    return p


def run(args) -> int:
    import json

    from arguments import save_config

    from stages.edit import check_query_edits, write_query_edits
    from stages.query import default_queries, run_queries

    run_dir = Path(args.model_path)
    kinds = edit_kinds(args)
    if args.granularity is not None or args.hierarchy:
        return run_levels(args, run_dir, kinds)
    if args.image is not None or args.box is not None:
        return run_image(args, run_dir, kinds)
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
    if args.remove and not (args.query or args.point or args.image):
        raise ValueError("--remove needs the object(s) to remove: give --query TEXT (without it every labelled "
                         "category would be removed, each into a full-size copy of the scene)")
    return [k for k in ("export", "remove", "sheet") if getattr(args, k)]


def finish_prompt(cfg, run_dir: Path, name: str, kinds: list[str], device, what: str) -> int:
    """The edit outputs ``kinds`` of one recorded prompt's selection (stages/edit.py), and the last line."""
    from scene.selections import query_file
    from stages.edit import write_query_edits

    if kinds:
        with RunLock(run_dir, "query.py"):
            write_query_edits(cfg, run_dir, [name], kinds, device)
    print(f"[query] {what} -> {query_file(run_dir, name)}"
          + (f" ({' '.join('--' + k for k in kinds)} written)" if kinds else ""))
    return 0


def run_points(args, run_dir: Path, kinds: list[str]) -> int:
    """--point X Y [--point ...] [--negative-point X Y ...] --view NAME [--name NAME] (stages/prompts.py),
    then the edit outputs ``kinds`` of the selection (stages/edit.py)."""
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
    return finish_prompt(cfg, run_dir, name, kinds, device, f"point prompt in view {args.view}")


def run_image(args, run_dir: Path, kinds: list[str]) -> int:
    """--image FILE [--box X0 Y0 X1 Y1] [--name NAME] (preprocess/image_prompt.py): the image's embedding queried
    as a text query (stages/query.py), then the edit outputs ``kinds`` of the selection (stages/edit.py)."""
    import time

    from preprocess.image_prompt import check_box, default_name, embed_image_prompt, read_image
    from scene.names import safe_stem
    from scene.selections import record_selections
    from stages.query import build_encoder, load_query_model, select_from_vectors

    if args.image is None:
        raise ValueError("--box goes with --image FILE (an image prompt)")
    if args.query or args.point or args.negative_point or args.view is not None:
        raise ValueError("give one kind of prompt: --image, --query (text) or --point (a point prompt), not several")
    image = read_image(args.image)
    box = check_box(args.box, image.shape[1], image.shape[0], args.image)
    name = args.name if args.name is not None else default_name(args.image, args.box)
    safe_stem(name)                                            # refuses an empty / unusable name early
    cfg = load_run_config(run_dir, args.config, args.overrides)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    with RunLock(run_dir, "query.py"):
        t0 = time.time()
        pos, enc_info = embed_image_prompt(cfg, image, box, args.image, device)
        qm = load_query_model(cfg, run_dir, device)
        enc, _ = build_encoder(cfg, run_dir)
        neg = enc.encode(list(cfg.query.negatives)).to(device)
        (sel, _), = select_from_vectors(cfg, qm, pos.to(device), neg)
        prompt = {"image": str(args.image), "box": list(args.box) if args.box else None}
        record = {"mode": cfg.query.mode, "prompt": prompt,
                  "image_encoder": enc_info, "seconds": round(time.time() - t0, 4)}
        rec = record_selections(run_dir, qm.model, qm.d, {name: (sel.cpu().numpy(), record)})[name]
    shown = f" (object {enc_info['object']} in view {enc_info['view']})" if "object" in enc_info else ""
    print(f"  {name}  {rec['n_selected']:>8d} Gaussians  {1000 * rec['seconds']:8.1f} ms{shown}")
    return finish_prompt(cfg, run_dir, name, kinds, device,
                         f"image prompt {args.image} ({enc_info['encoder']} image encoder)")


def run_levels(args, run_dir: Path, kinds: list[str]) -> int:
    """--granularity G or --hierarchy (stages/hierarchy.py, docs/method.md §5.8)."""
    from stages.hierarchy import granularity_scale, run_granularity, run_hierarchy
    from stages.query import default_queries

    other = (args.point or args.negative_point or args.view is not None or args.name is not None
             or getattr(args, "image", None) is not None or getattr(args, "box", None) is not None)
    if other:
        raise ValueError("--granularity and --hierarchy go with text queries (--query), not with point or image prompts")
    if args.hierarchy and args.granularity is not None:
        raise ValueError("give either --granularity G (one level) or --hierarchy (all three), not both")
    if args.hierarchy and len(args.query) != 1:
        raise ValueError("--hierarchy needs exactly one --query TEXT (the object whose hierarchy is written)")
    if kinds:
        raise ValueError("--export, --remove and --sheet go with a plain --query or --point, not with "
                         "--granularity / --hierarchy")
    cfg = load_run_config(run_dir, args.config, args.overrides)
    if args.granularity is not None:
        granularity_scale(cfg, args.granularity)   # a bad name or number: refused before any work
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    if args.hierarchy:
        with RunLock(run_dir, "query.py"):
            path, tree = run_hierarchy(cfg, run_dir, args.query[0], device)
        for n in tree["nodes"]:
            if n["kind"] == "level":
                print(f"  {n['file']:<40}  {n['n_gaussians']:>8d} Gaussians  (scale {n['scale']:g})")
        print(f"[query] hierarchy of {args.query[0]!r} ({len(tree['nodes'])} nodes) -> {path}")
        return 0
    queries = args.query or default_queries(cfg)
    with RunLock(run_dir, "query.py"):
        index = run_granularity(cfg, run_dir, queries, args.granularity, device)
    for name, info in index.items():
        print(f"  {name}  {info['n_selected']:>8d} Gaussians  {1000 * info['seconds']:8.1f} ms")
    print(f"[query] {len(index)} queries at granularity {args.granularity} -> {run_dir / 'queries'}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
