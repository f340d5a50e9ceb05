"""Synthetic open-vocabulary benchmark: the whole method on generated LERF-OVS-shaped scenes.

    python benchmarks/synthetic_ovs.py [--seeds 0 1 2] [--preset default] [--out output/bench_ovs]

For every seed: generate the scene, train rgb -> instance -> mapping (arguments/synthetic_cpu.yaml),
then query + render + evaluate with the collaborative inference, language-only, instance-only, and
with the MLP mapping (its own mapping stage, sharing rgb/instance). Prints one table of
mIoU / mAcc@0.25 per scene and mean, per variant, plus stage timings, and writes results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (mapping kind, query mode)
    "collaborative": ("kernel", "collaborative"),
    "language_only": ("kernel", "language_only"),
    "instance_only": ("kernel", "instance_only"),
    "mlp_mapping": ("mlp", "collaborative"),
}


def sh(*cmd, env=None):
    t0 = time.time()
    r = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.time() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene seeds (one scene each)")
    p.add_argument("--preset", default="default", help="synthetic noise preset (clean | default | hard)")
    p.add_argument("--out", default=str(REPO / "output" / "bench_ovs"), help="data + runs + results folder")
    p.add_argument("--argfile", default=str(REPO / "arguments" / "synthetic_cpu.yaml"),
                   help="training schedule argument file")
    a = p.parse_args(argv)
    out = Path(a.out)
    data = out / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results: dict = {"preset": a.preset, "seeds": a.seeds, "scenes": {}}
    quiet = ["--set", "run.progress=false"]
    for seed in a.seeds:
        name = f"{a.preset}_s{seed}"
        sh("-m", "preprocess.synthetic", "--root", data, "--scene", name, "--seed", seed, "--preset", a.preset,
           "--quiet", env=env)
        base = out / "runs" / "kernel" / name
        times = {}
        for stage in ("rgb", "instance", "mapping"):
            times[stage] = round(sh("train.py", "--stage", stage, "-s", data / name, "-m", base, "-c", a.argfile,
                                    *quiet, env=env), 1)
        mlp = out / "runs" / "mlp" / name
        mlp.mkdir(parents=True, exist_ok=True)
        for stage in ("rgb", "instance"):
            if not (mlp / stage).exists():
                (mlp / stage).symlink_to(base / stage)
        times["mapping_mlp"] = round(sh("train.py", "--stage", "mapping", "-s", data / name, "-m", mlp, "-c", a.argfile,
                                        "--set", "mapping.kind=mlp", *quiet, env=env), 1)
        scene_res = {"seconds": times}
        for variant, (kind, mode) in VARIANTS.items():
            run = base if kind == "kernel" else mlp
            t0 = time.time()
            sh("query.py", "-m", run, "--set", f"query.mode={mode}", *quiet, env=env)
            sh("render.py", "-m", run, *quiet, env=env)
            ev_out = out / "eval" / variant / name
            sh("eval_lerf.py", "--scenes", name, "--label_root", data / "label", "--runs_root", run.parent,
               "--out", ev_out, env=env)
            m = json.loads((ev_out / "metrics.json").read_text())["scenes"][name]
            scene_res[variant] = {k: m[k] for k in ("units", "mIoU", "Acc@0.25", "Acc@0.5")}
            scene_res[variant]["seconds_infer"] = round(time.time() - t0, 1)
        results["scenes"][name] = scene_res
        print(f"{name}: " + ", ".join(f"{v} {scene_res[v]['mIoU']:.1f}" for v in VARIANTS), flush=True)

    names = list(results["scenes"])
    print(f"\nSynthetic OVS benchmark, preset '{a.preset}', seeds {a.seeds} (mIoU / mAcc@0.25, %)")
    print(f"{'variant':<15}" + "".join(f"{n:>16}" for n in names) + f"{'mean':>16}")
    for v in VARIANTS:
        vals = [results["scenes"][n][v] for n in names]
        cells = "".join(f"{x['mIoU']:>8.1f} /{x['Acc@0.25']:>6.1f}" for x in vals)
        mi = sum(x["mIoU"] for x in vals) / len(vals)
        ma = sum(x["Acc@0.25"] for x in vals) / len(vals)
        results.setdefault("mean", {})[v] = {"mIoU": mi, "Acc@0.25": ma}
        print(f"{v:<15}{cells}{mi:>8.1f} /{ma:>6.1f}")
    print("\nstage seconds (2 CPU cores): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {t}" for k, t in results["scenes"][n]["seconds"].items()) for n in names))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
