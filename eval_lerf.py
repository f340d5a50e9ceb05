"""Score rendered 3D selections on LERF-OVS (OpenGaussian "3D" protocol, docs/method.md §7).

    python eval_lerf.py --scenes figurines teatime ramen waldo_kitchen \\
        --label_root <DATA_ROOT>/label --runs_root output/<tag> [--out DIR]

For each scene, reads predictions from ``<runs_root>/<scene>/renders/<frame>/<category>.png``
(silhouettes, value > 10 = selected) and the gt masks from ``<label_root>/<scene>/gt/<frame>/``
(generated from ``<label_root>/<scene>/<frame>.json`` where a frame's gt folder is missing; existing
gt files are never overwritten). Per scene: mIoU, mAcc@0.25 (IoU > 0.25), Acc@0.5 over all
(frame, category) units; a missing prediction scores IoU 0. The "mean" row is the unweighted mean
over scenes. Prints a table and writes metrics.json / metrics.csv to --out (default: --runs_root).
Masks are foreground where their grayscale value is > --binarize (eval.binarize, default 10).
Exit status 2 with a one-line message on bad input; everything is checked before anything is written.
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import sys
from pathlib import Path

from scene.lerf_eval import (BIN_THRESHOLD, REFERENCE_UNITS, default_pred_name, evaluate, flat_pred_name, format_table,
                             write_metrics)
from arguments import add_config_args, load_config
from arguments.cli import run_cli

# Units (frame x category) per scene in the published protocol (docs/method.md §7.3, from peer papers):
# a different count on the real data means the label folder is not the standard one.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", nargs="+", required=True, metavar="SCENE",
                   help="scene names, in the order of the output table (e.g. figurines teatime ramen waldo_kitchen)")
    p.add_argument("--label_root", required=True, type=Path,
                   help="folder holding <scene>/<frame>.json and/or <scene>/gt/<frame>/<category>.jpg|png "
                        "(the label/ folder of the LERF-OVS download)")
    p.add_argument("--runs_root", required=True, type=Path,
                   help="folder holding one run directory per scene: <runs_root>/<scene>/")
    p.add_argument("--pred_subdir", default="renders",
                   help="prediction folder inside each run directory (default: renders)")
    p.add_argument("--pred_layout", choices=["nested", "flat"], default="nested",
                   help="nested: <pred>/<frame>/<category>.png (this project, default); "
                        "flat: <pred>/<frame>_<category>.png (OpenGaussian / COS3D release)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write metrics.json and metrics.csv (default: --runs_root)")
    p.add_argument("--binarize", type=int, default=None, metavar="T",
                   help=f"gt and prediction masks are foreground where their value is > T, 0..255 "
                        f"(default: eval.binarize of the -c/--set config, {BIN_THRESHOLD} as OpenGaussian)")
    add_config_args(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def _folder(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found ({hint})")
    if not path.is_dir():
        raise ValueError(f"{path}: is a file, not a folder ({what}; {hint})")


def _encoders_used(run_dir: Path, result: dict) -> str:
    """The text encoder(s) that answered the scored categories, from ``<run>/queries/index.json``."""
    import json

    path = run_dir / "queries" / "index.json"
    if not path.is_file():
        return ""
    queries = json.loads(path.read_text(encoding="utf-8")).get("queries", {})
    used = set()
    for u in result["per_unit"]:
        enc = queries.get(u["category"], {}).get("text_encoder") or {}
        if isinstance(enc, dict) and enc.get("encoder"):
            used.add(" ".join(str(x) for x in (enc["encoder"], enc.get("model"), enc.get("pretrained")) if x))
    return "; ".join(sorted(used))


def run(args) -> int:
    try:
        return _run(args)
    except (FileNotFoundError, ValueError):
        raise
    except OSError as e:  # permissions, a full disk, ...: still one line naming the file
        raise ValueError(f"{e.filename or args.runs_root}: {e.strerror or e}") from None


def _run(args) -> int:
    if args.binarize is None:
        args.binarize = load_config(args.config, args.overrides).eval.binarize
    if not 0 <= args.binarize <= 255:
        raise ValueError(f"--binarize {args.binarize}: expected a grayscale threshold in 0..255")
    _folder(args.label_root, "label root", "give --label_root <DATA_ROOT>/label")
    _folder(args.runs_root, "runs root", "give --runs_root output/<tag>, the folder of the run directories")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"{args.out}: is a file, not a folder (--out is where metrics.json/csv are written)")
    for s in args.scenes:
        pred = args.runs_root / s / args.pred_subdir
        if not pred.is_dir():
            raise FileNotFoundError(f"{pred}: no predictions for scene {s!r} (run the render stage first, or "
                                    f"check --runs_root/--pred_subdir)")
    pred_name = default_pred_name if args.pred_layout == "nested" else flat_pred_name
    results = evaluate(args.scenes, args.label_root, lambda s: args.runs_root / s / args.pred_subdir, pred_name,
                       binarize=args.binarize)
    for s, r in results["scenes"].items():
        r["text_encoder"] = _encoders_used(args.runs_root / s, r)
    print(format_table(results))
    for s, r in results["scenes"].items():
        note = f"{s}: {r['units']} units, text encoder {r['text_encoder'] or 'unknown'}"
        if s in REFERENCE_UNITS and r["units"] != REFERENCE_UNITS[s]:
            note += f" (the published protocol has {REFERENCE_UNITS[s]})"
        if r["missing"]:
            miss = [f"{u['frame']}/{u['category']}" for u in r["per_unit"] if u["missing"]]
            note += f"; {r['missing']} missing predictions scored 0: " + ", ".join(miss[:5])
            note += ", ..." if len(miss) > 5 else ""
        print(note)
    jpath, cpath = write_metrics(results, args.out if args.out is not None else args.runs_root)
    print(f"wrote {jpath} and {cpath}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
