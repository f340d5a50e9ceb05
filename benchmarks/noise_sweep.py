"""Noise sweep: each failure-mode knob of the synthetic generator at several strengths x seeds.

    python benchmarks/noise_sweep.py [--seeds 0 1 2] [--knobs crop_context ...] [--out output/noise_sweep]
    python benchmarks/noise_sweep.py --plot-only [--out output/noise_sweep] [--plot docs/noise_sweep.png]

Every point is the ``default`` preset with one knob of ``preprocess/synthetic/config.py``
(``NoiseKnobs``: crop_context, part_name_drop, similar_confusion, shared_word_mix, surface_drift,
shared_names) set to a strength; strength 0 is the default preset itself. Per point: generate the
scene, train (arguments/synthetic_cpu.yaml), query + render + evaluate (LERF-OVS protocol) six
variants: collaborative, language_only, instance_only (the clustered rule), the MLP mapping,
cos3d_plus (arguments/cos3d_plus.yaml) and the paper's rule with ``query.contrast_queries``.

Reuse: the language knobs change only the per-mask vectors (``_f.npy``), never the images, the
COLMAP model or the masks, so a point's run links the rgb and instance stages of its seed's
strength-0 run and trains only the mapping; the script checks those files are the same bytes
before linking (and the run directory's fingerprints check the COLMAP model again).
``shared_names`` renames objects, which changes their colours, so its points train everything.

Writes ``<out>/results.csv`` (one row per seed x knob x strength x variant, appended as points
finish: an interrupted sweep continues where it stopped, a variant added later is evaluated on the
trained runs, ``--redo`` evaluates variants again), ``<out>/units/<point>/<variant>.json``
(per-frame IoUs), and the plot (mIoU mean +- std over seeds against each knob's strength).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stages  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)

# knob -> strengths (besides 0); untuned: evenly up to a strong setting of each knob
STRENGTHS = {
    "crop_context": [0.3, 0.6, 1.0],
    "part_name_drop": [0.5, 1.0],
    "similar_confusion": [0.15, 0.3],
    "shared_word_mix": [0.3, 0.6],
    "surface_drift": [0.3, 0.6],
    "shared_names": [1.0],
}
RETRAIN = {"shared_names"}  # knobs that change the images: every stage is trained
VARIANTS = {  # name -> (mapping kind, query arguments)
    "collaborative": ("kernel", []),
    "language_only": ("kernel", ["--set", "query.mode=language_only"]),
    "instance_only": ("kernel", ["--set", "query.mode=instance_only"]),
    "mlp_mapping": ("mlp", []),
    "cos3d_plus": ("kernel", ["-c", str(REPO / "arguments" / "cos3d_plus.yaml")]),
    "contrast": ("kernel", ["--set", "query.contrast_queries=true"]),
}
FIELDS = ["seed", "knob", "strength", "variant", "mIoU", "Acc@0.25", "units", "seconds"]
QUIET = ["--set", "run.progress=false"]


def call(main, argv) -> None:
    """One entry point's ``main(argv)`` in this process, its output kept unless it fails."""
    buf = StringIO()
    with redirect_stdout(buf):
        rc = main([str(a) for a in argv])
    if rc != 0:
        sys.exit(f"failed (rc {rc}): {' '.join(map(str, argv))}\n{buf.getvalue()[-3000:]}")


def tree_hash(scene: Path) -> str:
    """sha256 over the files a language knob must not change: images, COLMAP model, SAM masks."""
    h = hashlib.sha256()
    files = sorted([*scene.glob("images/*"), *scene.glob("sparse/0/*"), *scene.glob("language_features/*_s.npy")])
    for f in files:
        h.update(str(f.relative_to(scene)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def train(data: Path, scene: str, runs: Path, argfile: str, base: str | None) -> dict:
    """rgb + instance (or links to ``base``'s) + kernel mapping, and the MLP mapping beside it."""
    from train import main as train_main

    kernel, mlp = runs / "kernel" / scene, runs / "mlp" / scene
    times = {}
    for run in (kernel, mlp):
        run.mkdir(parents=True, exist_ok=True)
    src = runs / "kernel" / (base or scene)
    for stage in ("rgb", "instance"):
        if base is None:
            t0 = time.time()
            call(train_main, ["--stage", stage, "-s", data / scene, "-m", kernel, "-c", argfile, *QUIET])
            times[stage] = round(time.time() - t0, 1)
        elif not (kernel / stage).exists():
            (kernel / stage).symlink_to(src / stage)
        if not (mlp / stage).exists():
            (mlp / stage).symlink_to(src / stage)
    for run, kind in ((kernel, "kernel"), (mlp, "mlp")):
        t0 = time.time()
        call(train_main, ["--stage", "mapping", "-s", data / scene, "-m", run, "-c", argfile,
                          "--set", f"mapping.kind={kind}", *QUIET])
        times[f"mapping_{kind}"] = round(time.time() - t0, 1)
    return times


def share_coverage(src: Path, dst: Path) -> None:
    """Copy ``queries/mask_coverage.pt`` (stages/coverage.py) from run ``src`` to run ``dst`` when
    ``dst`` has none; the query stage still checks the instance model's hash and the masks' hashes."""
    f, g = src / "queries" / "mask_coverage.pt", dst / "queries" / "mask_coverage.pt"
    if f.is_file() and not g.exists():
        g.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, g)


def evaluate_variants(data: Path, scene: str, runs: Path, out: Path, variants) -> dict:
    from eval_lerf import main as eval_main
    from query import main as query_main
    from render import main as render_main

    res = {}
    for variant in variants:
        kind, args = VARIANTS[variant]
        run = runs / kind / scene
        t0 = time.time()
        call(query_main, ["-m", run, *args, *QUIET])
        call(render_main, ["-m", run, *QUIET])
        ev = out / "eval" / variant / scene
        call(eval_main, ["--scenes", scene, "--label_root", data / "label", "--runs_root", run.parent, "--out", ev])
        m = json.loads((ev / "metrics.json").read_text())["scenes"][scene]
        units = out / "units" / scene / f"{variant}.json"
        units.parent.mkdir(parents=True, exist_ok=True)
        units.write_text(json.dumps(m["per_unit"], indent=1))
        res[variant] = {"mIoU": m["mIoU"], "Acc@0.25": m["Acc@0.25"], "units": m["units"],
                        "seconds": round(time.time() - t0, 1)}
    return res


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def sweep(a) -> None:
    from preprocess.synthetic import generate_scene

    out = Path(a.out).resolve()  # stage links must resolve from any working directory
    data, runs, csv_path = out / "data", out / "runs", out / "results.csv"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(csv_path)
    if a.redo:  # results of these variants are dropped (e.g. after a change to cos3d_plus.yaml)
        rows = [r for r in rows if r["variant"] not in a.redo]
        write_rows(csv_path, rows)
    done: dict = {}
    for r in rows:
        done.setdefault((r["seed"], r["knob"], r["strength"]), set()).add(r["variant"])
    points = [("none", 0.0)] + [(k, s) for k in a.knobs for s in STRENGTHS[k]]
    t_start = time.time()
    for seed in a.seeds:
        base = f"s{seed}_none_0"
        base_hash = None
        for i, (knob, strength) in enumerate(points):
            scene = base if knob == "none" else f"s{seed}_{knob}_{strength:g}"
            todo = [v for v in VARIANTS if v not in done.get((str(seed), knob, f"{strength:g}"), set())]
            if not todo:
                continue
            t0 = time.time()
            generate_scene(data, scene, seed, "default", overrides={} if knob == "none" else {knob: strength},
                           progress=False, log=lambda *_: None, workers=a.workers)
            reuse = knob not in RETRAIN and knob != "none"
            if reuse:
                base_hash = base_hash or tree_hash(data / base)
                if tree_hash(data / scene) != base_hash:
                    sys.exit(f"{data / scene}: images / COLMAP model / masks differ from {data / base}; "
                             f"knob {knob} cannot reuse the strength-0 stages (add it to RETRAIN)")
            if reuse and not (runs / "kernel" / base / "instance" / "done.json").is_file():
                sys.exit(f"{runs / 'kernel' / base}: the strength-0 run is missing; sweep the point 'none' first")
            times = train(data, scene, runs, a.argfile, base if reuse else None)  # finished stages are skipped
            if reuse:  # same instance model and masks: the strength-0 run's mask coverage (its key is checked)
                share_coverage(runs / "kernel" / base, runs / "kernel" / scene)
            res = evaluate_variants(data, scene, runs, out, todo)
            append_rows(csv_path, [{"seed": seed, "knob": knob, "strength": f"{strength:g}", "variant": v,
                                    "mIoU": f"{r['mIoU']:.3f}", "Acc@0.25": f"{r['Acc@0.25']:.3f}",
                                    "units": r["units"], "seconds": r["seconds"]} for v, r in res.items()])
            print(f"[{time.time() - t_start:6.0f} s] seed {seed} {knob}={strength:g}: "
                  + ", ".join(f"{v} {r['mIoU']:.1f}" for v, r in res.items())
                  + f"  ({time.time() - t0:.0f} s; " + ", ".join(f"{k} {t}" for k, t in times.items()) + ")",
                  flush=True)


def summarise(rows: list[dict]) -> dict:
    """(knob, strength, variant) -> (mean, std, n) of mIoU over seeds; strength 0 ('none') is every knob's 0."""
    groups: dict = {}
    for r in rows:
        knobs = list(STRENGTHS) if r["knob"] == "none" else [r["knob"]]
        for k in knobs:
            groups.setdefault((k, float(r["strength"]), r["variant"]), []).append(float(r["mIoU"]))
    return {key: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for key, v in groups.items()}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(rows)
    knobs = [k for k in STRENGTHS if any(key[0] == k and key[1] > 0 for key in s)]
    if not knobs:
        sys.exit("no swept knob in the results yet: nothing to plot")
    cols = 3
    nrows = (len(knobs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    seeds = sorted({r["seed"] for r in rows})
    for ax, knob in zip(axes.flat, knobs):
        for v in VARIANTS:
            pts = sorted((x, m, sd) for (k, x, vv), (m, sd, _) in s.items() if k == knob and vv == v)
            if pts:
                xs, ms, sds = zip(*pts)
                ax.errorbar(xs, ms, yerr=sds, marker="o", ms=4, capsize=3, label=v)
        ax.set_title(knob)
        ax.set_xlabel("strength")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(knobs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Synthetic LERF-OVS scenes, default preset + one knob; mean +- std over seeds {', '.join(seeds)}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def print_table(rows: list[dict]) -> None:
    s = summarise(rows)
    print(f"\n{'knob':<18}{'strength':>9}" + "".join(f"{v:>16}" for v in VARIANTS))
    for knob in STRENGTHS:
        for x in sorted({key[1] for key in s if key[0] == knob}):
            cells = [s.get((knob, x, v)) for v in VARIANTS]
            print(f"{knob:<18}{x:>9g}" + "".join(f"{c[0]:>9.1f} +-{c[1]:>4.1f}" if c else f"{'-':>16}" for c in cells))


def print_losses(rows: list[dict], out: Path, variant: str = "collaborative", against: str = "language_only",
                 n: int = 3) -> None:
    """Per knob and strength where ``variant`` loses to ``against`` (mean over seeds): the ``n`` units
    (scene, frame, category) with the largest IoU drop, from ``<out>/units``."""
    s = summarise(rows)
    print(f"\nwhere {variant} loses to {against} (mean mIoU over seeds), worst units (IoU {variant} / {against}):")
    for (knob, x, v), (m, _, _) in sorted(s.items()):
        other = s.get((knob, x, against))
        if v != variant or other is None or m >= other[0] or (knob != "crop_context" and x == 0):
            continue
        drops = []
        for r in rows:
            if r["variant"] != variant or float(r["strength"]) != x or r["knob"] not in (knob, "none"):
                continue
            if (x == 0) != (r["knob"] == "none"):
                continue
            scene = f"s{r['seed']}_{r['knob']}_{r['strength']}"
            try:
                mine = json.loads((out / "units" / scene / f"{variant}.json").read_text())
                theirs = json.loads((out / "units" / scene / f"{against}.json").read_text())
            except OSError:
                continue
            for a, b in zip(mine, theirs):
                drops.append((b["iou"] - a["iou"], scene, a["frame"], a["category"], a["iou"], b["iou"]))
        drops.sort(reverse=True)
        cells = "; ".join(f"{sc} {fr} '{c}' {i1:.2f}/{i2:.2f}" for _, sc, fr, c, i1, i2 in drops[:n])
        print(f"  {'default preset' if x == 0 else f'{knob}={x:g}'}: {m:.1f} vs {other[0]:.1f}: {cells}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene seeds (default 0 1 2)")
    p.add_argument("--knobs", nargs="+", default=list(STRENGTHS), choices=list(STRENGTHS),
                   help="knobs to sweep (default all; strength 0 is always run)")
    p.add_argument("--out", default=str(REPO / "output" / "noise_sweep"), help="data + runs + results folder")
    p.add_argument("--argfile", default=str(REPO / "arguments" / "synthetic_cpu.yaml"), help="training schedule")
    p.add_argument("--workers", type=int, default=2, help="processes rendering each generated scene (default 2)")
    p.add_argument("--plot", default=None, help="plot file (default <out>/noise_sweep.png)")
    p.add_argument("--plot-only", action="store_true", help="only plot and tabulate <out>/results.csv")
    p.add_argument("--redo", nargs="+", default=[], choices=list(VARIANTS), metavar="VARIANT",
                   help="drop these variants' results and evaluate them again (trained stages are kept)")
    a = p.parse_args(argv)
    if not a.plot_only:
        sweep(a)
    rows = read_rows(Path(a.out) / "results.csv")
    if not rows:
        sys.exit(f"{Path(a.out) / 'results.csv'}: no results yet")
    print_table(rows)
    print_losses(rows, Path(a.out).resolve())
    plot(rows, Path(a.plot) if a.plot else Path(a.out) / "noise_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
