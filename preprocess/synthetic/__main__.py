"""CLI: ``python -m preprocess.synthetic --root data/synthetic --scene NAME --seed S``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from arguments.cli import run_cli

from .config import PRESETS, NoiseKnobs, SceneConfig
from .generate import generate_scene


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    knobs = ", ".join(f.name for f in fields(NoiseKnobs))
    p = argparse.ArgumentParser(
        prog="python -m preprocess.synthetic",
        description="Generate a synthetic LERF-OVS-shaped scene (images, COLMAP model, LangSplat "
                    "language features, labels) with an analytic ray caster.")
    p.add_argument("--root", required=True, help="dataset root; writes <root>/<scene>/ and <root>/label/<scene>/")
    p.add_argument("--scene", required=True, help="scene folder name")
    p.add_argument("--seed", type=int, default=0, help="random seed (integer >= 0); the whole scene is a "
                   "deterministic function of seed + preset + overrides (default 0)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="clean: no mask/CLIP noise; default: realistic noise, 48 views 192x144; hard: "
                        "strong noise; large: 200 views 988x731 for GPU benchmarks (default: default)")
    p.add_argument("--views", type=int, help=f"number of views (default: the preset's; {SceneConfig.n_views} in 'default')")
    p.add_argument("--width", type=int, help=f"image width in pixels (default: the preset's; {SceneConfig.width} in 'default')")
    p.add_argument("--height", type=int, help=f"image height in pixels (default: the preset's; {SceneConfig.height} in 'default')")
    p.add_argument("--objects", type=int, help=f"number of objects (default: the preset's; {SceneConfig.n_objects} in 'default')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any SceneConfig field or noise knob (noise.KNOB=VALUE), repeatable; "
                        f"noise knobs: {knobs}")
    p.add_argument("--force", action="store_true",
                   help="overwrite the output folders even if they hold a different scene")
    p.add_argument("--workers", type=int, default=1,
                   help="processes rendering views in parallel, 0 = all CPUs (default 1); the output "
                        "is identical for any number of workers")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {}
    for key, val in (("n_views", args.views), ("width", args.width), ("height", args.height),
                     ("n_objects", args.objects)):
        if val is not None:
            overrides[key] = val
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())

    def generate(args) -> int:  # bad settings, a folder holding another scene -> one line, exit 2
        generate_scene(args.root, args.scene, args.seed, args.preset, overrides, force=args.force,
                       progress=not args.quiet, workers=args.workers)
        return 0

    return run_cli(generate, args)


if __name__ == "__main__":
    sys.exit(main())
