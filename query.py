"""Answer text queries on a trained run: each query -> the set of Gaussians forming that object.

    python query.py -m <run dir> [--query "red apple" --query "teapot" ...] [--set query.mode=language_only]

Needs the instance and mapping stages of the run. Without --query (and without query.queries in the
config) the queries are the categories of the scene's labelled frames, as LERF-OVS evaluates them.
Writes ``<run>/queries/<query>.npy`` (bool [N], one per Gaussian of <run>/instance/point_cloud.ply)
and ``<run>/queries/index.json`` (selected counts and per-query time). Export a selection as a
3DGS PLY with --export.
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
    add_run_config_args(p)
    return p


def run(args) -> int:
    import json

    from arguments import save_config

    from scene.gaussian_model import save_ply
    from stages.mapping import load_instance_model
    from scene.selections import load_selection, query_file
    from stages.query import default_queries, run_queries

    run_dir = Path(args.model_path)
    cfg = load_run_config(run_dir, args.config, args.overrides)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    queries = args.query or default_queries(cfg)
    with RunLock(run_dir, "query.py"):
        index = run_queries(cfg, run_dir, queries, device)
        encoders = sorted({json.dumps(v["text_encoder"], sort_keys=True) for v in index.values()})
        save_config(cfg, run_dir / "queries" / "config.yaml",  # the resolved query-time config
                    meta={"queries": list(index), "text_encoder": [json.loads(e) for e in encoders]})
    width = max(len(q) for q in index)
    for q, info in index.items():
        print(f"  {q:<{width}}  {info['n_selected']:>8d} Gaussians  {1000 * info['seconds']:8.1f} ms")
    if args.export:
        params = load_instance_model(run_dir, device)
        n = params["means"].shape[0]
        for q in index:
            sel = load_selection(run_dir, q, n)
            save_ply(query_file(run_dir, q).with_suffix(".ply"), {k: v[sel] for k, v in params.items()})
    enc = next(iter(index.values()))["text_encoder"]
    desc = " ".join(str(x) for x in (enc.get("encoder"), enc.get("model"), enc.get("pretrained")) if x)
    print(f"[query] {len(index)} queries ({cfg.query.mode}, text encoder {desc}) -> {run_dir / 'queries'}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
