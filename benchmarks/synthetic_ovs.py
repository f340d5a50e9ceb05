"""Synthetic open-vocabulary benchmark: the whole method on generated LERF-OVS-shaped scenes.

    python benchmarks/synthetic_ovs.py [--seeds 0 1 2] [--repeats 1] [--preset default] [--out output/bench_ovs]

For every seed: generate the scene; then, --repeats times, train rgb -> instance -> mapping
(arguments/synthetic_cpu.yaml) into a fresh run and query + render + evaluate with the collaborative
inference, language-only, instance-only (clustered, and the earlier single-seed rule), with the MLP
mapping (its own mapping stage, sharing rgb/instance), cos3d_plus (arguments/cos3d_plus.yaml), each of
its two rules alone, and the contrast against the other queries (query.contrast_queries).
Prints mIoU / mAcc@0.25 per run, per variant: the mean +- std over all runs, the seed-to-seed std (of
the per-seed means) and the repeat std (same seed, same command; 0 when the runs are bit-identical),
plus stage timings; writes results.json (per-frame IoUs: <out>/eval/<variant>/<scene>/metrics.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (mapping kind, query.py arguments)
    "collaborative": ("kernel", []),
    "language_only": ("kernel", ["--set", "query.mode=language_only"]),
    "instance_only": ("kernel", ["--set", "query.mode=instance_only"]),
    "instance_seed": ("kernel", ["--set", "query.mode=instance_seed"]),
    "mlp_mapping": ("mlp", []),
    "cos3d_plus": ("kernel", ["-c", str(REPO / "arguments" / "cos3d_plus.yaml")]),
    # cos3d_plus's rules one at a time, and the contrast against the other queries (docs/method.md §5.1.1)
    "plus_connect_only": ("kernel", ["--set", "query.connect_radius=3.0"]),
    "plus_coverage_only": ("kernel", ["--set", "query.mask_coverage_min=0.5"]),
    "contrast": ("kernel", ["--set", "query.contrast_queries=true"]),
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
    p.add_argument("--repeats", type=int, default=1, help="runs of the same command per seed (default 1)")
    p.add_argument("--preset", default="default", help="synthetic noise preset (clean | default | hard)")
    p.add_argument("--out", default=str(REPO / "output" / "bench_ovs"), help="data + runs + results folder")
    p.add_argument("--argfile", default=str(REPO / "arguments" / "synthetic_cpu.yaml"),
                   help="training schedule argument file")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()  # the MLP runs link the kernel runs' stages: absolute targets
    data = out / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results: dict = {"preset": a.preset, "seeds": a.seeds, "repeats": a.repeats, "scenes": {}}
    quiet = ["--set", "run.progress=false"]
    for seed in a.seeds:
        name = f"{a.preset}_s{seed}"
        sh("-m", "preprocess.synthetic", "--root", data, "--scene", name, "--seed", seed, "--preset", a.preset,
           "--quiet", env=env)
        for rep in range(a.repeats):
            results["scenes"][f"{name}/r{rep}"] = run_once(a, out, data, name, rep, env, quiet)
    report(results, out)
    return 0


def run_once(a, out: Path, data: Path, name: str, rep: int, env, quiet) -> dict:
    """One fresh training of scene ``name`` and every inference variant on it."""
    base = out / "runs" / f"kernel_r{rep}" / name
    times = {}
    for stage in ("rgb", "instance", "mapping"):
        times[stage] = round(sh("train.py", "--stage", stage, "-s", data / name, "-m", base, "-c", a.argfile,
                                *quiet, env=env), 1)
    mlp = out / "runs" / f"mlp_r{rep}" / name
    mlp.mkdir(parents=True, exist_ok=True)
    for stage in ("rgb", "instance"):
        if not (mlp / stage).exists():
            (mlp / stage).symlink_to(base / stage)
    times["mapping_mlp"] = round(sh("train.py", "--stage", "mapping", "-s", data / name, "-m", mlp, "-c", a.argfile,
                                    "--set", "mapping.kind=mlp", *quiet, env=env), 1)
    scene_res = {"seconds": times}
    for variant, (kind, args) in VARIANTS.items():
        run = base if kind == "kernel" else mlp
        t0 = time.time()
        sh("query.py", "-m", run, *args, *quiet, env=env)
        sh("render.py", "-m", run, *quiet, env=env)
        ev_out = out / "eval" / variant / name
        sh("eval_lerf.py", "--scenes", name, "--label_root", data / "label", "--runs_root", run.parent,
           "--out", ev_out, env=env)
        m = json.loads((ev_out / "metrics.json").read_text())["scenes"][name]
        scene_res[variant] = {k: m[k] for k in ("units", "mIoU", "Acc@0.25", "Acc@0.5")}
        scene_res[variant]["seconds_infer"] = round(time.time() - t0, 1)
    print(f"{name} r{rep}: " + ", ".join(f"{v} {scene_res[v]['mIoU']:.2f}" for v in VARIANTS), flush=True)
    return scene_res


def _std(xs) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def report(results: dict, out: Path) -> None:
    runs = results["scenes"]
    seeds = sorted({k.split("/")[0] for k in runs})
    print(f"\nSynthetic OVS benchmark, preset '{results['preset']}', seeds {results['seeds']}, "
          f"{results['repeats']} repeat(s) each (mIoU / mAcc@0.25, %)")
    print(f"{'variant':<19}" + "".join(f"{n:>22}" for n in runs))
    for v in VARIANTS:
        print(f"{v:<19}" + "".join(f"{runs[n][v]['mIoU']:>14.2f} /{runs[n][v]['Acc@0.25']:>6.1f}" for n in runs))
    print(f"\n{'variant':<19}{'mIoU mean +- std':>20}{'mAcc mean +- std':>20}{'seed std':>10}{'repeat std':>12}")
    for v in VARIANTS:
        mi = [r[v]["mIoU"] for r in runs.values()]
        ma = [r[v]["Acc@0.25"] for r in runs.values()]
        per_seed = {s: [runs[k][v]["mIoU"] for k in runs if k.startswith(s + "/")] for s in seeds}
        seed_std = _std([statistics.mean(x) for x in per_seed.values()])
        rep_std = statistics.mean(_std(x) for x in per_seed.values())
        results.setdefault("summary", {})[v] = {"mIoU": statistics.mean(mi), "mIoU_std": _std(mi),
                                                "Acc@0.25": statistics.mean(ma), "Acc@0.25_std": _std(ma),
                                                "seed_std": seed_std, "repeat_std": rep_std}
        print(f"{v:<19}{statistics.mean(mi):>12.2f} +- {_std(mi):<5.2f}{statistics.mean(ma):>12.2f} +- "
              f"{_std(ma):<5.2f}{seed_std:>10.2f}{rep_std:>12.2f}")
    print("\nstage seconds (2 CPU cores): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {t}" for k, t in runs[n]["seconds"].items()) for n in runs))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
