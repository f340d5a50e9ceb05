"""The scenes x argument files x seeds grid of sweep.py: planning, the jobs' commands, running one job,
finished cells and the results table. The engines that run the jobs are in stages/engines.py.

A cell is (scene, argument file, seed); its run dir is ``<out_root>/<argfile stem>/seed<k>/<scene>``.
It runs as two jobs: ``train`` (train.py's rgb, instance and mapping stages) and ``eval`` (query.py,
render.py, eval_lerf.py --out <run>/eval). When the eval job has succeeded the driver writes
``<run>/cell.json``; a later sweep skips the cell while that file's fingerprint (the argument files'
sha256s, the --set overrides, the seed, the scene and label folders) matches.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scene.atomic import file_sha256, write_json, write_text
from scene.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SYNTH_ROOT = REPO / "data" / "synthetic"            # where the generated default scene lives (script/common.sh)
DEFAULT_SCENE = "default"
CPU_ARGFILE = REPO / "arguments" / "synthetic_cpu.yaml"  # put first for the default scene, as script/train.sh
BASE = ("base", "-")                                 # argfile names that mean "no ablation file"
METRICS = (("mIoU", "mIoU"), ("mAcc@0.25", "Acc@0.25"))  # table column <- key of eval_lerf.py's metrics.json
TAIL_LINES = 15


def resolve_argfile(name: str) -> Path:
    """An argument file as script/common.sh resolves it: absolute as is, else the current directory, then
    the repo root."""
    p = Path(name)
    tried = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p]
    for t in tried:
        if t.is_file():
            return t.resolve()
    raise UserError(f"argument file not found: {name!r} (tried {', '.join(str(t) for t in tried)})")


@dataclass
class Cell:
    scene: str
    scene_dir: Path
    ablation: str                  # the argfile's stem, or "base"
    argfile: Path | None           # None: the plain config
    seed: int
    run_dir: Path
    label_root: Path
    configs: list[Path]            # every -c file of every command, in order
    overrides: list[str]           # every --set but run.num_threads, in order
    generate: list[str] = field(default_factory=list)  # the generator's command when the scene is missing

    @property
    def key(self) -> str:
        return f"{self.scene} / {self.ablation} / seed{self.seed}"

    @property
    def cell_json(self) -> Path:
        return self.run_dir / "cell.json"

    def fingerprint(self) -> dict:
        return {"argfiles_sha256": [file_sha256(f) for f in self.configs], "overrides": self.overrides,
                "seed": self.seed, "scene_dir": str(self.scene_dir), "label_root": str(self.label_root)}


def plan(scenes, argfiles, seeds, data_root, label_root, out_root, common=(), sets=()) -> list[Cell]:
    """Every cell of the grid, in scene, argfile, seed order. No scenes: the generated default scene
    (made by the sweep when missing, if ``data_root`` is the repo's data/synthetic)."""
    data_root, out_root = Path(data_root).resolve(), Path(out_root).resolve()
    label_root = Path(label_root).resolve() if label_root else data_root / "label"
    common = [resolve_argfile(f) for f in common]
    files = [(None, "base") if f in BASE else (resolve_argfile(f), None) for f in argfiles or ["base"]]
    files = [(f, stem or f.stem) for f, stem in files]
    stems = [s for _, s in files]
    if dup := sorted({s for s in stems if stems.count(s) > 1}):
        raise UserError(f"argument files share a name (their run folders would collide): {', '.join(dup)}")
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds: expected integers >= 0, got {list(seeds)}")
    cells = []
    for scene in scenes or [DEFAULT_SCENE]:
        scene_dir = data_root / scene
        generated = scene_dir == SYNTH_ROOT / DEFAULT_SCENE
        generate = []
        if not scene_dir.is_dir():
            if not generated:
                raise UserError(f"scene folder not found: {scene_dir} (--data_root {data_root}, scene {scene!r})")
            generate = ["python", "-m", "preprocess.synthetic", "--root", str(SYNTH_ROOT), "--scene", scene,
                        "--seed", "0"]
        for argfile, stem in files:
            for seed in seeds:
                configs = ([CPU_ARGFILE] if generated else []) + common + ([argfile] if argfile else [])
                cells.append(Cell(scene, scene_dir, stem, argfile, seed, out_root / stem / f"seed{seed}" / scene,
                                  label_root, configs, [f"run.seed={seed}", *sets], generate))
    return cells


def job_commands(cell: Cell, kind: str, threads: int) -> list[list[str]]:
    """The commands of one job of a cell (``python`` = the job's interpreter; cwd = the repo root). The
    eval job asks for no GPU, so its commands get run.device=cpu."""
    last = [f"run.num_threads={threads}"] + (["run.device=cpu"] if kind == "eval" else [])
    flags = [a for f in cell.configs for a in ("-c", str(f))]
    flags += [a for s in [*cell.overrides, *last] for a in ("--set", s)]
    run = str(cell.run_dir)
    if kind == "train":
        return [["python", "train.py", "--stage", st, "-s", str(cell.scene_dir), "-m", run, *flags]
                for st in ("rgb", "instance", "mapping")]
    labels = ["--set", f"eval.label_root={cell.label_root}"]
    return [["python", "query.py", "-m", run, *flags, *labels],
            ["python", "render.py", "-m", run, *flags, *labels],
            ["python", "eval_lerf.py", "--scenes", cell.scene, "--label_root", str(cell.label_root),
             "--runs_root", str(cell.run_dir.parent), "--out", str(cell.run_dir / "eval"), *flags]]


def make_job(cell: Cell, kind: str, threads: int) -> dict:
    """A job as plain data (so Ray and submitit can ship it to a worker)."""
    return {"cell": cell.key, "kind": kind, "commands": job_commands(cell, kind, threads), "threads": threads,
            "cwd": str(REPO), "log": str(cell.run_dir / "logs" / f"{kind}.log")}


def _tail(path: Path, start: int, n: int = TAIL_LINES) -> str:
    """The last ``n`` lines the log got from byte ``start`` on (the failed command's header and output)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        lines = fh.read().decode("utf-8", errors="replace").strip().splitlines()
    return "\n".join(lines[-n:])


def run_job(job: dict) -> dict:
    """Run a job's commands one after the other, stdout + stderr appended to its log; the first non-zero
    exit stops it. Returns ``{"ok", "seconds", "timings", "failed", "tail", "log"}``."""
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))
    timings, t0 = [], time.perf_counter()
    for cmd in job["commands"]:
        argv = [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]
        start = log.stat().st_size if log.exists() else 0
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] $ {shlex.join(cmd)}\n")
            fh.flush()
            t = time.perf_counter()
            rc = subprocess.run(argv, cwd=job["cwd"], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
            fh.write(f"[exit status {rc}, {time.perf_counter() - t:.1f} s]\n")
        timings.append({"command": shlex.join(cmd), "seconds": round(time.perf_counter() - t, 2)})
        if rc != 0:
            return {"ok": False, "seconds": time.perf_counter() - t0, "timings": timings, "log": str(log),
                    "failed": f"{shlex.join(cmd)} (exit status {rc})", "tail": _tail(log, start)}
    return {"ok": True, "seconds": time.perf_counter() - t0, "timings": timings, "log": str(log),
            "failed": "", "tail": ""}


def is_finished(cell: Cell) -> bool:
    """The cell's cell.json exists and was written with the same argument files, overrides and seed."""
    try:
        data = json.loads(cell.cell_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("fingerprint") == cell.fingerprint()


def finish_cell(cell: Cell, train: dict, evaluation: dict, commands: dict) -> dict:
    """Write ``<run>/cell.json`` from the cell's eval/metrics.json (a missing file: ValueError)."""
    path = cell.run_dir / "eval" / "metrics.json"
    try:
        scene = json.loads(path.read_text(encoding="utf-8"))["scenes"][cell.scene]
    except (OSError, ValueError, KeyError):
        raise ValueError(f"{path}: no metrics of scene {cell.scene!r} (see {evaluation['log']})") from None
    data = {"scene": cell.scene, "ablation": cell.ablation, "argfile": str(cell.argfile or "base"),
            "seed": cell.seed, "run_dir": str(cell.run_dir), "fingerprint": cell.fingerprint(),
            "argfiles": [str(f) for f in cell.configs],
            "commands": {kind: [shlex.join(c) for c in cmds] for kind, cmds in commands.items()},
            "metrics": {col: scene[key] for col, key in METRICS},
            "timings": {"train_s": round(train["seconds"], 2), "eval_s": round(evaluation["seconds"], 2),
                        "commands": train["timings"] + evaluation["timings"]},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(cell.cell_json, data)
    return data


def write_table(out_root) -> str:
    """``<out_root>/grid_metrics.csv`` and ``.json`` from every ``*/seed*/*/cell.json`` under it: one row
    per (ablation, scene), mean and std (sample, ddof=1; 0 for one seed) over its seeds, then a
    "mean" row per ablation: for each seed that finished every scene seen under out_root, the mean over
    scenes, then mean and std over those seeds. Returns the printed table."""
    out_root = Path(out_root)
    cells = []
    for p in sorted(out_root.glob("*/seed*/*/cell.json")):
        try:
            cells.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            print(f"warning: {p}: unreadable, left out of the table ({e})", file=sys.stderr)
    scenes = sorted({c["scene"] for c in cells})
    rows = []
    for abl in sorted({c["ablation"] for c in cells}):
        mine = [c for c in cells if c["ablation"] == abl]
        by_seed = {}  # seed -> {scene: metrics}
        for c in mine:
            by_seed.setdefault(c["seed"], {})[c["scene"]] = c["metrics"]
        for s in scenes:
            per_seed = [m[s] for m in by_seed.values() if s in m]
            if per_seed:
                rows.append(_row(abl, s, per_seed))
        complete = [{col: float(np.mean([m[s][col] for s in scenes])) for col, _ in METRICS}
                    for m in by_seed.values() if all(s in m for s in scenes)]
        rows.append(_row(abl, "mean", complete))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["ablation", "scene"] + [f"{c}_{x}" for c, _ in METRICS for x in ("mean", "std")] + ["n_seeds"]
    w.writerow(cols)
    for r in rows:
        w.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in cols])
    write_text(out_root / "grid_metrics.csv", buf.getvalue())
    write_json(out_root / "grid_metrics.json", rows)
    lines = [f"{'ablation':<24} {'scene':<16} {'mIoU':>15} {'mAcc@0.25':>15} {'n_seeds':>7}"]
    for r in rows:
        vals = [f"{r[c + '_mean']:.2f} ± {r[c + '_std']:.2f}" if r["n_seeds"] else "-" for c, _ in METRICS]
        lines.append(f"{r['ablation']:<24} {r['scene']:<16} {vals[0]:>15} {vals[1]:>15} {r['n_seeds']:>7}")
    return "\n".join(lines)


def _row(ablation: str, scene: str, per_seed: list[dict]) -> dict:
    row = {"ablation": ablation, "scene": scene}
    for col, _ in METRICS:
        v = np.asarray([m[col] for m in per_seed], dtype=np.float64)
        row[f"{col}_mean"] = float(v.mean()) if v.size else ""
        row[f"{col}_std"] = (float(v.std(ddof=1)) if v.size > 1 else 0.0) if v.size else ""
    row["n_seeds"] = len(per_seed)
    return row
