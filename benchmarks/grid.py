"""The same small grid through sweep.py's serial engine and its Ray engine: wall time of each.

    python benchmarks/grid.py                     # 2 scenes (12 views, 96x72) x 2 argument files, 100 iterations
    python benchmarks/grid.py --quick             # 8 views, 64x48, 10 iterations: checks that it runs
    python benchmarks/grid.py --out output/grid_bench --cpus 2

The grid: two generated scenes (python -m preprocess.synthetic, seeds 0 and 1) x two argument files
(tests/readme_tiny.yaml with --iterations rgb / instance steps, and the same with
query.mode=language_only), seed 0. "serial" runs the 8 jobs one after the other in one process, each
with --cpus threads (sweep.py --engine serial --cpus-per-job N --cpus-per-eval-job N); "ray" runs
them on a local Ray cluster of --cpus CPUs, one thread per job (sweep.py --engine ray --cpus N), so
jobs run side by side. Both start from fresh output folders; the Ray time includes starting the
cluster. Prints both wall times and serial / ray (> 1: the Ray engine was faster) and writes
<out>/grid_benchmark.json. Run it alone on the machine: other work skews both numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def sweep(out: Path, data: Path, argfiles: list[Path], engine: str, cpus: int) -> float:
    if engine == "serial":
        threads = ["--cpus-per-job", str(cpus), "--cpus-per-eval-job", str(cpus)]
    else:
        threads = ["--cpus", str(cpus)]
    cmd = [sys.executable, "sweep.py", "--scenes", "s0", "s1", "--argfiles", *map(str, argfiles), "--seeds", "0",
           "--data_root", str(data), "--out_root", str(out / engine), "--engine", engine, *threads]
    print(f"== {engine}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"error: the {engine} sweep failed (exit status {r.returncode}); see the logs under {out / engine}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="where the scenes, argument files and both sweeps go (default: a new temporary folder)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny grid (8 views, 64x48, 3 objects, 10 iterations) to check that the benchmark runs")
    p.add_argument("--views", type=int, default=12, help="views per scene (default: 12)")
    p.add_argument("--width", type=int, default=96, help="image width (default: 96)")
    p.add_argument("--height", type=int, default=72, help="image height (default: 72)")
    p.add_argument("--iterations", type=int, default=100, help="rgb and instance training steps (default: 100)")
    p.add_argument("--cpus", type=int, default=2,
                   help="serial: threads of each job; ray: CPUs of the local cluster (default: 2)")
    args = p.parse_args()
    if args.quick:
        args.views, args.width, args.height, args.iterations = 8, 64, 48, 10
    if args.cpus < 1:
        sys.exit("error: --cpus must be >= 1")
    out = (args.out or Path(tempfile.mkdtemp(prefix="grid_bench_"))).resolve()
    for engine in ("serial", "ray"):
        if (out / engine).exists():
            sys.exit(f"error: {out / engine} exists: give a fresh --out (both sweeps must start from nothing)")
    data = out / "data"
    for seed, scene in enumerate(("s0", "s1")):
        subprocess.run([sys.executable, "-m", "preprocess.synthetic", "--root", str(data), "--scene", scene,
                        "--seed", str(seed), "--views", str(args.views), "--width", str(args.width), "--height",
                        str(args.height), "--objects", "3", "--quiet"], cwd=REPO, check=True)
    tiny = yaml.safe_load((REPO / "tests" / "readme_tiny.yaml").read_text(encoding="utf-8"))
    tiny["rgb"]["iterations"] = tiny["instance"]["iterations"] = args.iterations
    argfiles = [out / "argfiles" / "tiny.yaml", out / "argfiles" / "language_only.yaml"]
    argfiles[0].parent.mkdir(parents=True, exist_ok=True)
    argfiles[0].write_text(yaml.safe_dump(tiny), encoding="utf-8")
    argfiles[1].write_text(yaml.safe_dump({**tiny, "query": {"mode": "language_only"}}), encoding="utf-8")

    walls = {engine: sweep(out, data, argfiles, engine, args.cpus) for engine in ("serial", "ray")}
    result = {"serial_s": round(walls["serial"], 2), "ray_s": round(walls["ray"], 2),
              "serial_over_ray": round(walls["serial"] / walls["ray"], 3), "cpus": args.cpus,
              "grid": {"scenes": 2, "argfiles": 2, "seeds": 1, "views": args.views, "width": args.width,
                       "height": args.height, "iterations": args.iterations}}
    (out / "grid_benchmark.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nserial ({args.cpus} threads per job): {walls['serial']:.1f} s")
    print(f"ray ({args.cpus} CPUs, 1 thread per job): {walls['ray']:.1f} s")
    print(f"serial / ray: {result['serial_over_ray']:.2f}   ({out / 'grid_benchmark.json'})")


if __name__ == "__main__":
    main()
