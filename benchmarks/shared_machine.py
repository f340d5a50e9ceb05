"""Two jobs on one machine: the training step rate of one job alone and beside a second identical job.

    python benchmarks/shared_machine.py                 # PASSIVE vs the runtime default, 20 s per measurement
    python benchmarks/shared_machine.py --seconds 10 --policies PASSIVE

Each job is a separate process running a 3DGS-like training step (C++ CPU rasterizer, 20k Gaussians,
192x144, forward + backward + Adam) for ``--seconds`` and reporting steps per second. "paired" runs
two such processes at the same time; the ratio is paired / solo for one job (0.5 = a fair share of a
machine the job saturates alone; far below 0.5 = the jobs waste the machine fighting over it).
``PASSIVE`` (what the project's entry points set, see ``stages/__init__.py``) lets waiting OpenMP
threads sleep; ``unset`` is the OpenMP runtime's default (spin a while, then sleep: the behaviour
before); ``ACTIVE`` makes them spin.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = "--worker"


def worker(seconds: float, threads: int) -> None:
    import torch

    from gaussian_renderer import render
    from scene.cameras import Camera, intrinsics, look_at

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    n, w, h = 20000, 192, 144
    params = {"means": (torch.rand(n, 3, generator=g) - 0.5) * 2, "quats": torch.randn(n, 4, generator=g),
              "scales": torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.005),
              "opacities": torch.randn(n, generator=g), "sh0": torch.rand(n, 1, 3, generator=g) - 0.5,
              "shN": torch.zeros(n, 0, 3)}
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    R, t = look_at([0.0, -3.0, 0.5], [0.0, 0.0, 0.0])
    cam = Camera(uid=0, image_name="bench", R=R, t=t, K=intrinsics(0.9 * w, 0.9 * w, w / 2, h / 2), width=w, height=h)
    target = torch.rand(h, w, 3, generator=g)
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def step():
        out = render(params, cam, backend="cpp", return_depth=False)
        loss = (out.color - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (and the kernel build, once)
        step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t0)}))


def launch(n_jobs: int, policy: str, seconds: float, threads: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, WORKER, str(seconds), str(threads)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n_jobs)]
    rates = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds * 10 + 300)
        if p.returncode != 0:
            raise SystemExit(f"worker failed (rc {p.returncode})")
        rates.append(json.loads(out.strip().splitlines()[-1])["steps_per_s"])
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per job (default 20)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per job; 0 = torch's default (default 0)")
    p.add_argument("--policies", nargs="+", default=["PASSIVE", "unset"], choices=["PASSIVE", "unset", "ACTIVE"],
                   help="OMP_WAIT_POLICY values to compare; unset = the runtime's default (default: PASSIVE unset)")
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}, {args.seconds:.0f} s per job, torch threads: {args.threads or 'default'}")
    print(f"{'policy':<8} {'solo it/s':>10} {'paired it/s (each)':>22} {'paired/solo':>12}")
    for policy in args.policies:
        solo = launch(1, policy, args.seconds, args.threads)[0]
        paired = launch(2, policy, args.seconds, args.threads)
        each = " / ".join(f"{r:.1f}" for r in paired)
        print(f"{policy:<8} {solo:>10.1f} {each:>22} {min(paired) / solo:>12.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == WORKER:
        worker(float(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
