"""Steps/s of the data-parallel rgb and instance stages: one process vs torchrun gloo ranks on CPU.

    python benchmarks/data_parallel.py                    # 2 views per step: 1 process x 2 threads vs 2 ranks x 1 thread
    python benchmarks/data_parallel.py --quick            # a tiny scene, a few steps (checks the script)
    python benchmarks/data_parallel.py --ranks 2 4 --views 96

Both runs train the same cameras per step (``rgb.batch_views`` = ``instance.batch_views`` = the
largest rank count), so their models agree to float tolerance (tests/test_data_parallel.py) and only
the wall time differs. The generated scene (``preprocess.synthetic``, preset clean) has
``--views`` views at ``--width`` x ``--height``; densification runs as in arguments/synthetic_cpu.yaml.
Reported: the training loop's seconds (``seconds_this_run`` of each stage's done.json, without process
start and imports), steps/s, views/s and the ratio to one process. On a GPU machine the same command
with ``--device cuda`` compares 1 vs K GPUs (nccl); it needs K GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(scene: Path, run: Path, stage: str, ranks: int, threads: int, sets: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={ranks}",
                  "--master_addr=127.0.0.1", f"--master_port={_port()}"]
    else:
        launch = [sys.executable]
    cmd = [*launch, str(REPO / "train.py"), "--stage", stage, "-s", str(scene), "-m", str(run),
           "-c", str(REPO / "arguments" / "synthetic_cpu.yaml"), *sets, "--set", f"run.num_threads={threads}",
           "--set", "run.progress=false"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads((run / stage / "done.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2], help="rank counts to compare with one process (default 2)")
    ap.add_argument("--views", type=int, default=24, help="views of the generated scene (default 24)")
    ap.add_argument("--width", type=int, default=192, help="image width (default 192)")
    ap.add_argument("--height", type=int, default=144, help="image height (default 144)")
    ap.add_argument("--rgb-steps", type=int, default=300, help="rgb steps (default 300; densification from step 100)")
    ap.add_argument("--instance-steps", type=int, default=200, help="instance steps (default 200)")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads in all: one process uses all, "
                    "each of K ranks cores/K (default: every core)")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per rank)")
    ap.add_argument("--quick", action="store_true", help="tiny scene and schedule: checks that the script runs")
    ap.add_argument("--out", type=Path, default=None, help="where scenes and runs go (default: a temporary folder)")
    a = ap.parse_args(argv)
    if a.quick:
        a.views, a.width, a.height, a.rgb_steps, a.instance_steps = 8, 48, 36, 20, 10
    batch = max(a.ranks)
    sys.path.insert(0, str(REPO))
    from preprocess.synthetic import generate_scene

    root = a.out or Path(tempfile.mkdtemp(prefix="dp_bench_"))
    generate_scene(root / "data", "bench", seed=0, preset="clean", progress=False,
                   overrides={"n_views": a.views, "width": a.width, "height": a.height})
    scene = root / "data" / "bench"
    sets = ["--set", f"rgb.iterations={a.rgb_steps}", "--set", f"instance.iterations={a.instance_steps}",
            "--set", f"rgb.batch_views={batch}", "--set", f"instance.batch_views={batch}",
            "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0", "--set", "instance.checkpoint_every=0",
            "--set", "instance.preview_every=0", "--set", f"run.device={a.device}",
            "--set", f"rgb.densify.refine_start_iter={min(100, a.rgb_steps // 2)}"]
    print(f"scene: {a.views} views {a.width}x{a.height}, {batch} views per step, {a.cores} cores, device {a.device}")
    print(f"{'ranks':>5} {'threads/rank':>12} {'stage':>9} {'seconds':>8} {'steps/s':>8} {'views/s':>8} "
          f"{'speed-up':>8} {'Gaussians':>9}")
    base = {}
    for k in [1, *a.ranks]:
        run = root / "runs" / f"ranks{k}"
        threads = max(1, a.cores // k)
        for stage, steps in (("rgb", a.rgb_steps), ("instance", a.instance_steps)):
            done = train(scene, run, stage, k, threads, sets)
            sec = done["seconds_this_run"]
            base.setdefault(stage, sec)
            print(f"{k:>5} {threads:>12} {stage:>9} {sec:>8.1f} {steps / sec:>8.2f} {steps * batch / sec:>8.2f} "
                  f"{base[stage] / sec:>7.2f}x {done['n_gaussians']:>9}")
    print(f"runs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
