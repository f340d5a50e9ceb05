"""GPU benchmark of the whole method on a generated LERF-sized scene: wall time and peak memory per stage,
and query latency against the number of Gaussians.

    python -m benchmarks.gpu                     # CUDA: the `large` preset (200 views, 988x731), paper schedules
    python -m benchmarks.gpu --cpu-sized         # any machine: the `default` preset (48 views, 192x144),
                                                 # schedules 1/100 of the paper's, a few minutes on CPU

Stages, each driven through the project's own entry points in this process (train.py / query.py main
functions, ``stages.rendering.render_selections``, ``scene.grounding``), timed one after the other:

  renderer setup    resolve renderer.backend (auto: gsplat on CUDA), compiling its kernels if needed
  generate          the synthetic scene (skipped when it is already there: "cached")
  rgb               3DGS, 30k iterations (--rgb-iters)
  instance short    instance field, 3k iterations (the paper's 8-minute setting), its own run dir
  instance          instance field, 30k iterations (--instance-iters)
  mapping           mask pairs over every view + kernel-regression language field
  query (1)         query.py with one text query (load model + field, relevancy, refinement)
  query (all)       query.py with every labelled category of the scene
  render            every query's selection in --render-frames views (22: the LERF-OVS-equivalent
                    frame count), masks + colour PNGs, as render.py writes them

Peak GPU memory per stage is ``torch.cuda.max_memory_allocated`` after a reset (tensors only; the
caching allocator's reserved peak is in the JSON). Peak host memory is the process's resident peak
(VmHWM) after resetting it through /proc/self/clear_refs (Linux; "-" where not possible).
Prints a table and writes ``<out>/gpu_benchmark.json``.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# paper schedules (arguments/default.yaml) and the CPU-sized ones (1/100, densification scaled alike)
FULL = {"preset": "large", "rgb_iters": 30000, "instance_iters": 30000, "instance_short_iters": 3000,
        "latency_sizes": [100_000, 300_000, 1_000_000, 2_000_000], "workers": 0}
CPU_SIZED = {"preset": "default", "rgb_iters": 300, "instance_iters": 300, "instance_short_iters": 30,
             "latency_sizes": [10_000, 30_000, 100_000], "workers": 1}


# ----------------------------------------------------------------------------- measuring
def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _host_peak_mib() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Meter:
    """Times one stage and records its peak GPU (if on CUDA) and host memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def __call__(self, fn, *args, **kwargs):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        host_ok = _reset_host_peak()
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        rec = {"seconds": time.perf_counter() - t0,
               "peak_gpu_mib": torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None,
               "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved(self.device) / 2**20 if self.cuda else None,
               "peak_host_mib": _host_peak_mib() if host_ok else None}
        return value, rec


def _ok(code: int, what: str) -> None:
    if code != 0:
        sys.exit(f"benchmark: {what} failed with exit code {code} (its error is printed above)")


# ----------------------------------------------------------------------------- stages
def train_stage(stage: str, scene: Path, run: Path, sets: list[str]) -> None:
    from train import main as train_main

    argv = ["--stage", stage, "-s", str(scene), "-m", str(run), "--force"]
    for s in sets:
        argv += ["--set", s]
    _ok(train_main(argv), f"train.py --stage {stage} -m {run}")


def run_query(run: Path, queries: list[str]) -> dict:
    import query

    argv = ["-m", str(run)]
    for q in queries:
        argv += ["--query", q]
    _ok(query.main(argv), "query.py")
    return json.loads((run / "queries" / "index.json").read_text())["queries"]


def render_frames(run: Path, n_frames: int, queries: list[str]) -> dict:
    """Every query's selection in n_frames evenly spaced views (render.py's selection writer)."""
    from arguments import read_saved_config
    from scene.dataset import load_scene_from_config
    from scene.runtime import resolve_device
    from stages.mapping import load_instance_model
    from stages.rendering import render_selections

    cfg, _ = read_saved_config(run / "config.yaml")
    scene = load_scene_from_config(cfg.data, -1)
    cams = scene.all_cameras
    n = min(n_frames, len(cams))
    frames = [cams[round(i * (len(cams) - 1) / max(n - 1, 1))].image_name for i in range(n)]
    masks = render_selections(cfg, run, load_instance_model(run, resolve_device(cfg.run.device)), scene, frames, queries)
    return {"frames": n, "queries": len(queries), "masks": masks}


def latency_sweep(sizes: list[int], device: torch.device, n_queries: int = 5) -> list[dict]:
    """benchmarks/query_latency.py's field and timing, with peak memory: relevancy (1 query, 4
    negatives) + rescale, then the collaborative refinement; medians over n_queries after a warm-up."""
    from benchmarks.query_latency import time_queries

    rows = []
    for n in sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = time_queries(n, device, n_queries)
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append(row)
        gc.collect()
    return rows


# ----------------------------------------------------------------------------- output
def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_tables(res: dict) -> None:
    dev = res["device"]
    print(f"\nCOS3D GPU benchmark: preset '{res['preset']}' ({res['scene']['views']} views, "
          f"{res['scene']['width']}x{res['scene']['height']}), device {dev}"
          + (f" ({res['gpu']})" if res.get("gpu") else "") + f", renderer {res['backend']}, torch {res['torch']}, "
          f"gsplat {res['gsplat']}")
    print(f"{'stage':<34}{'wall s':>10}{'peak GPU MiB':>14}{'peak host MiB':>15}  notes")
    for name, r in res["stages"].items():
        print(f"{name:<34}{r['seconds']:>10.1f}{_fmt(r['peak_gpu_mib'], '.0f'):>14}"
              f"{_fmt(r['peak_host_mib'], '.0f'):>15}  {r.get('notes', '')}")
    print(f"\nquery latency vs number of Gaussians (collaborative, median of {res['latency_queries']} queries)")
    print(f"{'N':>10}{'relevancy ms':>14}{'refine ms':>11}{'total ms':>10}{'selected':>10}{'peak GPU MiB':>14}")
    for r in res["latency"]:
        print(f"{r['n_gaussians']:>10}{r['relevancy_ms']:>14.1f}{r['refine_ms']:>11.1f}{r['total_ms']:>10.1f}"
              f"{r['selected']:>10.0f}{_fmt(r['peak_gpu_mib'], '.0f'):>14}")


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-sized", action="store_true",
                   help="the default preset with 1/100 schedules (runs on CPU in minutes; same table)")
    p.add_argument("--device", default=None,
                   help="cuda | cuda:N | cpu (default: cuda if available, cpu with --cpu-sized)")
    p.add_argument("--out", default=str(REPO / "output" / "bench_gpu"), help="data, runs and the JSON go here")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    p.add_argument("--preset", default=None, help="synthetic preset (default: large; default with --cpu-sized)")
    p.add_argument("--rgb-iters", type=int, default=None, help="3DGS iterations (30000; 300 with --cpu-sized)")
    p.add_argument("--instance-iters", type=int, default=None, help="instance-field iterations (30000; 300)")
    p.add_argument("--instance-short-iters", type=int, default=None,
                   help="the short instance-field run (3000; 30); 0 skips it")
    p.add_argument("--render-frames", type=int, default=22, help="views the selections are rendered in")
    p.add_argument("--latency-sizes", type=int, nargs="+", default=None,
                   help="numbers of Gaussians for the latency sweep (100k 300k 1M 2M; 10k 30k 100k)")
    p.add_argument("--latency-queries", type=int, default=5, help="queries timed per size")
    p.add_argument("--workers", type=int, default=None, help="scene generator processes (0 = all CPUs)")
    p.add_argument("--backend", default="auto", help="renderer.backend for every stage (auto = gsplat on CUDA)")
    p.add_argument("--progress", action="store_true", help="show the stages' progress bars")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    base = dict(CPU_SIZED if a.cpu_sized else FULL)
    for k in ("preset", "rgb_iters", "instance_iters", "instance_short_iters", "latency_sizes", "workers"):
        if getattr(a, k) is not None:
            base[k] = getattr(a, k)
    device = torch.device(a.device or ("cpu" if a.cpu_sized or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("benchmark: --device cuda but CUDA is not available (use --cpu-sized)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)

    from gsplat import __version__ as gsplat_version

    from preprocess.synthetic import generate_scene
    from preprocess.synthetic.config import make_config

    out = Path(a.out)
    data, runs = out / "data", out / "runs"
    name = f"{base['preset']}_s{a.seed}"
    scene_cfg = make_config(base["preset"])
    res = {"preset": base["preset"], "cpu_sized": a.cpu_sized, "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "cuda": torch.version.cuda, "gsplat": gsplat_version,
           "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
           "scene": {"name": name, "views": scene_cfg.n_views, "width": scene_cfg.width, "height": scene_cfg.height},
           "schedules": {k: base[k] for k in ("rgb_iters", "instance_iters", "instance_short_iters")},
           "stages": {}, "latency_queries": a.latency_queries}
    meter = Meter(device)
    stages = res["stages"]

    # R = rgb iterations; densification keeps 3DGS's proportions (start 500/30k, stop 15k/30k, every 100)
    R = base["rgb_iters"]
    sets = [f"run.device={device}", f"run.progress={str(a.progress).lower()}", f"renderer.backend={a.backend}",
            f"rgb.iterations={R}", "rgb.eval_every=0", f"rgb.checkpoint_every={0 if a.cpu_sized else 5000}",
            f"instance.checkpoint_every={0 if a.cpu_sized else 5000}"]
    if a.cpu_sized or R != 30000:
        sets += [f"rgb.sh_degree_interval={max(1, R // 30)}",
                 f"rgb.densify.refine_start_iter={max(1, R // 60)}", f"rgb.densify.refine_stop_iter={R // 2}",
                 # few refinements (each can double N): 2 in a 300-step run, 145 in 3DGS's 30k
                 f"rgb.densify.refine_every={max(1, min(100, R // 6))}",
                 # short runs: no opacity reset (it would leave no steps to recover)
                 f"rgb.densify.reset_every={R // 10 if R >= 3000 else R}"]
    if a.cpu_sized:
        sets += ["instance.preview_every=0"]

    from gaussian_renderer import resolve_backend

    # load (on first use: compile) the renderer now, so that no stage's time includes the build
    backend, rec = meter(resolve_backend, a.backend, device)
    rec["notes"] = f"backend '{backend}' (first use compiles gsplat's / the C++ kernels)"
    stages["renderer setup"] = rec
    res["backend"] = backend
    print(f"[bench] renderer backend: {backend} ({rec['seconds']:.1f} s)", flush=True)

    existed = (data / name / "synthetic.json").is_file()
    scene_dir, rec = meter(generate_scene, data, name, a.seed, base["preset"], progress=a.progress,
                           workers=base["workers"], log=lambda *_: None)
    rec["notes"] = "cached (generated earlier)" if existed else f"{scene_cfg.n_views} views, {base['workers']} workers"
    stages["generate"] = rec
    print(f"[bench] scene {scene_dir} ({rec['seconds']:.1f} s)", flush=True)

    main_run, short_run = runs / "main" / name, runs / "instance_short" / name
    _, rec = meter(train_stage, "rgb", scene_dir, main_run, sets)
    done = json.loads((main_run / "rgb" / "done.json").read_text())
    test = done.get("test", {})
    rec["notes"] = f"{R} its, {done['n_gaussians']} Gaussians" + (
        f", test PSNR {test['psnr']:.2f}" if test.get("n_views") else "")
    stages["rgb (3DGS)"] = rec
    print(f"[bench] rgb: {rec['seconds']:.1f} s", flush=True)

    S = base["instance_short_iters"]
    if S:
        short_run.mkdir(parents=True, exist_ok=True)
        link = short_run / "rgb"            # shares the 3DGS model of the main run
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to((main_run / "rgb").resolve())
        _, rec = meter(train_stage, "instance", scene_dir, short_run, sets + [f"instance.iterations={S}"])
        rec["notes"] = f"{S} its"
        stages[f"instance field ({S} its)"] = rec
        print(f"[bench] instance {S}: {rec['seconds']:.1f} s", flush=True)

    I = base["instance_iters"]
    _, rec = meter(train_stage, "instance", scene_dir, main_run, sets + [f"instance.iterations={I}"])
    rec["notes"] = f"{I} its"
    stages[f"instance field ({I} its)"] = rec
    print(f"[bench] instance {I}: {rec['seconds']:.1f} s", flush=True)

    inst = sets + [f"instance.iterations={I}"]
    _, rec = meter(train_stage, "mapping", scene_dir, main_run, inst)
    done = json.loads((main_run / "mapping" / "done.json").read_text())
    rec["notes"] = f"{done['n_pairs']} pairs, {scene_cfg.n_views} views"
    stages["mapping"] = rec

    categories = json.loads((scene_dir / "queries.json").read_text())["queries"]
    index, rec = meter(run_query, main_run, categories[:1])
    q = categories[0]
    rec["notes"] = f"'{q}': {index[q]['n_selected']} selected, {1e3 * index[q]['seconds']:.0f} ms in-stage"
    stages["query (1)"] = rec
    index, rec = meter(run_query, main_run, categories)
    rec["notes"] = f"{len(categories)} queries, {1e3 * sum(v['seconds'] for v in index.values()):.0f} ms in-stage"
    stages["query (all categories)"] = rec

    info, rec = meter(render_frames, main_run, a.render_frames, categories)
    rec["notes"] = (f"{info['frames']} frames x {info['queries']} queries = {info['masks']} masks, "
                    f"{1e3 * rec['seconds'] / max(info['masks'], 1):.0f} ms/mask")
    stages[f"render ({info['frames']} frames)"] = rec

    print("[bench] query latency sweep", flush=True)
    res["latency"] = latency_sweep(base["latency_sizes"], device, a.latency_queries)

    print_tables(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {out / 'gpu_benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
