"""Run the grid scenes x argument files x seeds: every cell trained, queried, rendered and scored, as jobs
on Ray (a local cluster by default), Slurm through submitit, or in this process; then one table.

    python sweep.py --scenes s0 s1 --argfiles base arguments/ablations/language_only.yaml --seeds 0 1 2
    python sweep.py --engine submitit --slurm-partition gpu --data_root <lerf_ovs> --scenes figurines ramen ...
    python sweep.py ... --dry-run          # the cells and their commands, nothing run

A cell (scene, argument file, seed) runs in <out_root>/<argfile stem>/seed<k>/<scene> as two jobs: a
train job (train.py --stage rgb, instance, mapping; asks for GPUs where the cluster has them) and,
once it succeeded, an eval job (CPU: query.py, render.py, eval_lerf.py --out <run>/eval). Every
command gets -c <the -c files> -c <the cell's argument file> --set run.seed=<k> --set <yours>
--set run.num_threads=<the job's CPUs> (and OMP_NUM_THREADS; the eval job's also --set
run.device=cpu), runs in the repo root and appends its output to <run>/logs/{train,eval}.log.
The generated default scene (data/synthetic/default) gets arguments/synthetic_cpu.yaml first, as
script/train.sh does. The argument file "base" (or "-") is the plain config: no ablation file, run
folder <out_root>/base.

A finished cell writes <run>/cell.json (commands, argument files' sha256s, seed, mIoU / mAcc@0.25,
timings) and is skipped by a later sweep while its argument files and --set overrides are unchanged;
otherwise it runs again (train.py skips finished stages, resumes interrupted ones and redoes or refuses
stages whose settings changed). A failed cell is reported and does not stop the others.
At the end: <out_root>/grid_metrics.{csv,json} from every cell.json under --out_root: one row per
(ablation, scene) with mean ± std (sample std; 0 for one seed) over its finished seeds, and a "mean" row per ablation
over the seeds that finished every scene (stages/grid.py), then a summary.
Exit status 0: every cell finished; 1: some cell failed; 2: bad input (one line).
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from arguments.cli import run_cli
from scene.errors import UserError
from stages import engines, grid


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the grid")
    g.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                   help="scene folders of --data_root (default: the generated default scene 'default' of "
                        "data/synthetic, generated first when missing)")
    g.add_argument("--argfiles", nargs="+", default=["base"], metavar="ARGFILE",
                   help="one argument file per ablation (a relative path: the current directory, then the "
                        "repo root); 'base' or '-' = the plain config (default: base)")
    g.add_argument("--seeds", nargs="+", type=_positive, default=[0], metavar="K",
                   help="run.seed of each repetition (default: 0)")
    g.add_argument("--data_root", type=Path, default=grid.SYNTH_ROOT,
                   help="folder of the scenes (default: data/synthetic of the repo)")
    g.add_argument("--label_root", type=Path, default=None,
                   help="LERF-OVS labels, <label_root>/<scene>/... (default: <data_root>/label)")
    g.add_argument("--out_root", type=Path, default=grid.REPO / "output" / "sweep",
                   help="where the runs and grid_metrics.csv go (default: output/sweep of the repo)")
    g.add_argument("-c", "--config", action="append", default=[], metavar="ARGFILE",
                   help="argument file applied to every cell before its own (repeatable), e.g. tests/readme_tiny.yaml")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override applied to every command of every cell after run.seed (repeatable)")
    g.add_argument("--dry-run", action="store_true",
                   help="print every cell (to run / finished) and its commands; run nothing")
    e = p.add_argument_group("the engine")
    e.add_argument("--engine", choices=sorted(engines.ENGINES), default="ray",
                   help="ray: Ray tasks (pip install 'ray>=2.40'); submitit: Slurm jobs, or its local executor "
                        "(pip install submitit); serial: one job after the other in this process (default: ray)")
    e.add_argument("--cpus", type=_positive, default=None,
                   help="ray: the CPUs of the local cluster; submitit's local executor: at most "
                        "CPUS // --cpus-per-job jobs at once; serial: unused (default: every CPU of the machine)")
    e.add_argument("--cpus-per-job", type=_positive, default=1,
                   help="CPUs a train job asks for, and its threads (default: 1)")
    e.add_argument("--cpus-per-eval-job", type=_positive, default=1,
                   help="CPUs an eval job asks for, and its threads (default: 1)")
    e.add_argument("--gpus-per-train-job", type=_positive, default=1,
                   help="GPUs a train job asks for when the cluster has GPUs; 0 = CPU only (default: 1)")
    e.add_argument("--address", default=None,
                   help="ray: join this cluster instead of starting a local one ('auto', 'ray://host:10001'); "
                        "the repo, the python environment, the data and --out_root must then be at the same "
                        "paths on every node")
    e.add_argument("--submitit-local", action="store_true",
                   help="submitit: the local executor (jobs as processes of this machine) even where Slurm is "
                        "available (without Slurm it is used anyway)")
    e.add_argument("--slurm-partition", default=None, help="submitit on Slurm: the partition of every job")
    e.add_argument("--timeout-min", type=_positive, default=720,
                   help="submitit: the time limit of a job in minutes (default: 720)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def show(cell: grid.Cell, opts: engines.Options) -> str:
    lines = [f"== {cell.key}: {'finished, would be skipped' if grid.is_finished(cell) else 'to run'} "
             f"-> {cell.run_dir}"]
    if cell.generate:
        lines.append(f"  generate the scene: {shlex.join(cell.generate)}")
    for kind in ("train", "eval"):
        res = opts.resources(kind)
        gpus = f", {res['gpus']} GPUs where the cluster has GPUs" if res["gpus"] else ""
        lines.append(f"  {kind} job ({res['cpus']} CPUs{gpus}):")
        lines += [f"    {shlex.join(c)}" for c in grid.job_commands(cell, kind, res["cpus"])]
    return "\n".join(lines)


def run(args) -> int:
    if min(args.cpus_per_job, args.cpus_per_eval_job, args.timeout_min) < 1 or args.cpus == 0:
        raise UserError("--cpus, --cpus-per-job, --cpus-per-eval-job and --timeout-min must be >= 1")
    cells = grid.plan(args.scenes, args.argfiles, args.seeds, args.data_root, args.label_root, args.out_root,
                      args.config, args.overrides)
    opts = engines.Options(cpus=args.cpus, cpus_per_job=args.cpus_per_job, cpus_per_eval_job=args.cpus_per_eval_job,
                           gpus_per_train_job=args.gpus_per_train_job, address=args.address,
                           submitit_local=args.submitit_local, slurm_partition=args.slurm_partition,
                           timeout_min=args.timeout_min, out_root=Path(args.out_root).resolve())
    if args.dry_run:
        print("\n".join(show(c, opts) for c in cells))
        return 0
    for cmd in {tuple(c.generate) for c in cells if c.generate}:
        print(f"[sweep] generating the default scene: {shlex.join(cmd)}")
        if subprocess.run([sys.executable, *cmd[1:]], cwd=grid.REPO).returncode != 0:
            raise UserError(f"generating the default scene failed: {shlex.join(cmd)}")
    todo, skipped = [], []
    for c in cells:
        if grid.is_finished(c):
            skipped.append(c)
            print(f"[sweep] {c.key}: skipped (finished)")
        else:
            c.cell_json.unlink(missing_ok=True)  # a stale record must not count in the table if the cell fails
            todo.append(c)
    result = {"ran": [], "failed": []}
    if todo:
        engine = engines.ENGINES[args.engine](opts)
        print(f"[sweep] {len(todo)} cells to run on engine {args.engine}")
        try:
            result = engines.drive(engine, todo, opts, say=lambda s: print(s, flush=True))
        finally:
            engine.close()
    out_root = Path(args.out_root)
    if list(out_root.glob("*/seed*/*/cell.json")):
        print()
        print(grid.write_table(out_root))
        print(f"wrote {out_root / 'grid_metrics.csv'} and {out_root / 'grid_metrics.json'}")
    print(f"\n[sweep] {len(result['ran'])} ran, {len(skipped)} skipped (finished), {len(result['failed'])} failed")
    for f in result["failed"]:
        print(f"[sweep] FAILED scene {f['scene']}, argfile {f['argfile']}, seed {f['seed']}: {f['job']} job: "
              f"{f['failed']}\n  log: {f['log'] or '-'}")
        if f["tail"]:
            print("  " + f["tail"].replace("\n", "\n  "))
    return 1 if result["failed"] else 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
