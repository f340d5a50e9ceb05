"""The engines that run sweep.py's jobs (stages/grid.py makes them), and the driver that chains them.

Every engine has ``submit(job, resources) -> handle``, ``wait(handles) -> [(handle, result), ...]`` (at
least one finished job) and ``close()``; a job that crashed (not a command that failed: run_job reports
that itself) comes back as a failed result naming the exception.

  serial    in this process, one job at a time (a cell's eval job right after its train job)
  ray       a ``ray.remote`` task per job on a local Ray cluster (``ray.init(num_cpus=...)``) or one
            joined with ``address``; the train job asks for GPUs when the cluster has any
  submitit  ``submitit.AutoExecutor``: Slurm jobs where Slurm is available, else (or with
            ``local=True``) its local executor, which starts every job at once, so the driver keeps
            at most cpus // cpus_per_job of them running

ray and submitit are imported here, lazily, so the rest of the project needs neither.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from scene.errors import UserError

from . import grid


@dataclass
class Options:
    cpus: int | None = None           # local cluster size (ray, submitit local); None = os.cpu_count()
    cpus_per_job: int = 1             # CPUs (= threads) of a train job
    cpus_per_eval_job: int = 1        # CPUs (= threads) of an eval job
    gpus_per_train_job: int = 1       # GPUs of a train job where the cluster has GPUs (0: never)
    address: str | None = None        # ray: join this cluster ("auto", "ray://host:10001", ...)
    submitit_local: bool = False      # submitit: the local executor even where Slurm is available
    slurm_partition: str | None = None
    timeout_min: int = 720
    out_root: Path = Path("output/sweep")

    def resources(self, kind: str) -> dict:
        if kind == "train":
            return {"cpus": self.cpus_per_job, "gpus": self.gpus_per_train_job}
        return {"cpus": self.cpus_per_eval_job, "gpus": 0}


def _need(module: str, pip: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"the {module} engine needs the {module} package: pip install '{pip}'") from None


def _crashed(e: BaseException) -> dict:
    line = (str(e).strip().splitlines() or [""])[-1]
    return {"ok": False, "seconds": 0.0, "timings": [], "log": "", "failed": f"the job crashed: "
            f"{type(e).__name__}: {line}", "tail": str(e)[-2000:]}


def _repo_on_path() -> str:
    """PYTHONPATH with the repo root first, so workers started from here import stages.grid."""
    parts = [str(grid.REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return os.environ["PYTHONPATH"]


class Serial:
    cap = None

    def __init__(self, opts: Options):
        self.jobs, self.next = {}, 0

    def submit(self, job, resources):
        self.next += 1
        self.jobs[self.next] = job
        return self.next

    def wait(self, handles):
        # a cell's eval job before the next cell's train job: cells finish one after the other
        h = next((h for h in handles if self.jobs[h]["kind"] == "eval"), handles[0])
        try:
            return [(h, grid.run_job(self.jobs.pop(h)))]
        except Exception as e:  # noqa: BLE001  (an OSError starting a command, ...)
            return [(h, _crashed(e))]

    def close(self):
        pass


class Ray:
    cap = None

    def __init__(self, opts: Options):
        self.ray = ray = _need("ray", "ray>=2.40")
        env = {"env_vars": {"PYTHONPATH": _repo_on_path()}}
        if opts.address:
            ray.init(address=opts.address, log_to_driver=False, runtime_env=env)
        else:
            ray.init(num_cpus=opts.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     runtime_env=env)
        res = ray.cluster_resources()
        self.has_gpu = res.get("GPU", 0) > 0
        need = max(opts.cpus_per_job, opts.cpus_per_eval_job)
        if need > res.get("CPU", 0):
            ray.shutdown()
            raise UserError(f"a job asks for {need} CPUs but the Ray cluster has {res.get('CPU', 0):g}")
        self.remote = ray.remote(max_retries=0)(grid.run_job)
        self.refs = {}

    def submit(self, job, resources):
        req = {"num_cpus": resources["cpus"]}
        if resources["gpus"] and self.has_gpu:
            req["num_gpus"] = resources["gpus"]
        ref = self.remote.options(**req).remote(job)
        return ref

    def wait(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as e:  # noqa: BLE001  (RayTaskError, a worker that died, ...)
                out.append((ref, _crashed(e)))
        return out

    def close(self):
        self.ray.shutdown()


class Submitit:
    def __init__(self, opts: Options):
        submitit = _need("submitit", "submitit>=1.5")
        _repo_on_path()  # the local executor's and sbatch's jobs inherit this environment
        self.ex = submitit.AutoExecutor(folder=Path(opts.out_root) / ".submitit" / "%j",
                                        cluster="local" if opts.submitit_local else None)
        self.opts = opts
        local = self.ex.cluster != "slurm"
        self.cap = max(1, (opts.cpus or os.cpu_count() or 1) // max(1, opts.cpus_per_job)) if local else None

    def submit(self, job, resources):
        params = {"name": f"{job['kind']}-{job['cell'].replace(' / ', '-')}", "timeout_min": self.opts.timeout_min,
                  "cpus_per_task": resources["cpus"], "gpus_per_node": resources["gpus"]}
        if self.opts.slurm_partition:
            params["slurm_partition"] = self.opts.slurm_partition  # ignored by the local executor
        self.ex.update_parameters(**params)
        return self.ex.submit(grid.run_job, job)

    def wait(self, handles):
        while True:
            done = [j for j in handles if j.done()]
            if done:
                break
            time.sleep(1.0)
        out = []
        for j in done:
            try:
                out.append((j, j.result()))
            except Exception as e:  # noqa: BLE001  (FailedJobError, UncompletedJobError: timeout, OOM, ...)
                out.append((j, _crashed(e)))
        return out

    def close(self):
        pass


ENGINES = {"serial": Serial, "ray": Ray, "submitit": Submitit}


def drive(engine, cells, opts: Options, say=print) -> dict:
    """Run every cell's train job, and its eval job as soon as the train job succeeded; write cell.json
    after the eval job. Returns ``{"ran": [...], "failed": [...]}`` (failed: dicts naming the cell, the
    job, the command and the log)."""
    backlog = [(c, "train") for c in cells]
    inflight, done = {}, {}
    ran, failed = [], []
    while backlog or inflight:
        while backlog and (engine.cap is None or len(inflight) < engine.cap):
            i = next((i for i, (_, k) in enumerate(backlog) if k == "eval"), 0)
            cell, kind = backlog.pop(i)
            res = opts.resources(kind)
            job = grid.make_job(cell, kind, res["cpus"])
            inflight[engine.submit(job, res)] = (cell, kind, job)
        for handle, result in engine.wait(list(inflight)):
            cell, kind, job = inflight.pop(handle)
            if result["ok"] and kind == "train":
                done[cell.key] = (result, job)
                backlog.append((cell, "eval"))
                say(f"[sweep] {cell.key}: train ok ({result['seconds']:.1f} s)")
                continue
            if result["ok"]:
                train, train_job = done.pop(cell.key)
                try:
                    data = grid.finish_cell(cell, train, result, {"train": train_job["commands"],
                                                                  "eval": job["commands"]})
                except ValueError as e:
                    result = dict(result, ok=False, failed=str(e))
                else:
                    m = data["metrics"]
                    say(f"[sweep] {cell.key}: eval ok ({result['seconds']:.1f} s), mIoU {m['mIoU']:.2f}, "
                        f"mAcc@0.25 {m['mAcc@0.25']:.2f}")
                    ran.append(cell)
                    continue
            failed.append({"cell": cell.key, "scene": cell.scene, "argfile": str(cell.argfile or "base"),
                           "seed": cell.seed, "job": kind, "failed": result["failed"],
                           "log": result["log"], "tail": result["tail"]})
            say(f"[sweep] {cell.key}: FAILED in its {kind} job: {result['failed']}; log {result['log'] or '-'}")
    return {"ran": ran, "failed": failed}
