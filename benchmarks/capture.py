"""Structure-from-motion timings of preprocess/capture.py on a generated scene.

    python -m benchmarks.capture [--views 48 --width 192 --height 144] [--camera-model OPENCV] [--keep DIR]

Generates the synthetic scene (preset clean, seed 0), copies its images into a fresh scene folder,
runs ``python -m preprocess.capture`` on it and prints, from ``<scene>/sparse/0/summary.json``, the
seconds and images/s of each step (extraction, matching, mapping, undistortion) and what registered.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=48)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--supersample", type=int, default=2, help="the generator's colour samples per pixel side")
    p.add_argument("--camera-model", default="OPENCV")
    p.add_argument("--threads", type=int, default=-1)
    p.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    from preprocess.synthetic import generate_scene

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="capture_bench_"))
    try:
        t = time.time()
        gen = generate_scene(root / "gen", "bench", seed=0, preset="clean", progress=False, log=lambda *_: None,
                             overrides={"n_views": args.views, "width": args.width, "height": args.height,
                                        "supersample": args.supersample})
        print(f"generated {args.views} views {args.width}x{args.height} in {time.time() - t:.1f} s")
        scene = root / "scene"
        if scene.exists():
            shutil.rmtree(scene)
        shutil.copytree(gen / "images", scene / "images")
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "preprocess.capture", "-s", str(scene), "--no-progress",
                            "--camera-model", args.camera_model, "--threads", str(args.threads),
                            "--min-registered", "0"], cwd=REPO, capture_output=True, text=True)
        wall = time.time() - t
        if r.returncode != 0:
            print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"capture failed ({r.returncode})")
            return 1
        s = json.loads((scene / "sparse" / "0" / "summary.json").read_text())
        print(f"engine {s['engine']} {s['pycolmap_version'] or ''}, camera {s['camera_model']}, matcher "
              f"{s['matcher']}, {os.cpu_count()} CPUs, threads {args.threads}")
        print(f"| step | seconds | images/s |\n|---|---:|---:|")
        for k, v in s["steps"].items():
            print(f"| {k} | {v['seconds']:.2f} | {v['images_per_s']:.1f} |")
        print(f"| total (incl. process starts) | {wall:.2f} | {s['images_total'] / wall:.1f} |")
        print(f"registered {s['images_registered']} of {s['images_total']} "
              f"({100 * s['registered_fraction']:.0f}%), {s['points3D']} points, mean reprojection error "
              f"{s['mean_reprojection_error_px']:.3f} px, output PINHOLE {s['output_size'][0]}x{s['output_size'][1]}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
