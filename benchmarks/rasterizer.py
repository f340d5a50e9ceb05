"""Forward + backward timings of the CPU rasterizers (torch reference vs the C++ kernel).

    python benchmarks/rasterizer.py            # N {2k,30k,100k} x {192x144, 384x288} x D {3,16}
    python benchmarks/rasterizer.py --quick    # 30k Gaussians, 192x144, D=3 only
    python benchmarks/rasterizer.py --backends cpp --threads 1

Scenes are random but 3DGS-like: Gaussians in front of a pinhole camera, filling its frustum at
depths 2..6, scales log-uniform so that each one covers a few pixels to a few tiles; opacities
sigmoid(N(0,2)) (many nearly opaque, like a trained model). The same scene is rendered at each image
size (intrinsics scaled with the image). Projection (``project_gaussians``, forward and backward)
and tile binning (``isect_tiles``) are timed separately from compositing. Times are medians over
``--repeats`` runs after one warm-up (``--stat min``: minima), in milliseconds; "M" is the number
of tile-Gaussian intersections, "speed-up" is torch (fwd+bwd) / cpp (fwd+bwd).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaussian_renderer.projection import isect_tiles, project_gaussians  # noqa: E402
from gaussian_renderer.torch_backend import rasterize_torch  # noqa: E402


def make_scene(n: int, seed: int = 0) -> dict:
    """Random visible Gaussians for a camera at the origin looking down +z (OpenCV axes).

    Returns means [n,3], quats [n,4], scales [n,3] (linear), opacities [n], and a generator for
    colours. The field of view is that of fx = 1.0 * width (about 53 degrees horizontally)."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 4.0 * torch.rand(n, generator=g)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * torch.tensor([1.0, 0.75]) * z[:, None] * 1.1
    means = torch.cat([xy, z[:, None]], dim=1)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    # 1..4 px std at 192x144 (fx = 192) for z ~ 4: s ~ 0.02..0.08, anisotropic
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.06), generator=g))
    opac = torch.sigmoid(2.0 * torch.randn(n, generator=g))
    return {"means": means, "quats": quats, "scales": scales, "opacities": opac, "gen": g}


def camera(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[1.0 * width, 0.0, width / 2], [0.0, 1.0 * width, height / 2], [0.0, 0.0, 1.0]])
    return torch.eye(4), K


STAT = statistics.median  # or min (--stat min): robust when other processes share the cores


def timed_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return STAT(ts)


def time_backend(rasterize, inputs, off, ids, W, H, repeats) -> tuple[float, float]:
    """Median forward and backward times (ms) of one rasterizer on fixed projected inputs."""
    m2, con, op, col, bg = inputs
    fwd_ts, bwd_ts = [], []
    for it in range(repeats + 1):
        leaves = [t.detach().requires_grad_() for t in (m2, con, op, col)]
        t0 = time.perf_counter()
        color, alpha = rasterize(*leaves, off, ids, W, H, tile_size=16, bg=bg)
        t1 = time.perf_counter()
        loss = color.square().sum() + alpha.sum()
        loss.backward()
        t2 = time.perf_counter()
        if it > 0:  # the first run is the warm-up
            fwd_ts.append((t1 - t0) * 1e3)
            bwd_ts.append((t2 - t1) * 1e3)
    return STAT(fwd_ts), STAT(bwd_ts)


def run_case(n, W, H, D, backends, repeats, scene_cache):
    if n not in scene_cache:
        scene_cache[n] = make_scene(n)
    s = scene_cache[n]
    viewmat, K = camera(W, H)
    colors = torch.rand(n, D, generator=torch.Generator().manual_seed(1))
    bg = torch.full((D,), 0.1)

    leaves = [s[k].clone().requires_grad_() for k in ("means", "quats", "scales")]

    def proj():
        return project_gaussians(*leaves, viewmat, K, W, H)

    proj_fwd = timed_ms(proj, repeats)
    m2, con, depth, radii = proj()
    grads = [torch.randn_like(m2), torch.randn_like(con)]

    def proj_bwd():
        torch.autograd.backward([m2, con], grads, retain_graph=True)

    proj_bwd_ms = timed_ms(proj_bwd, repeats)
    binning = timed_ms(lambda: isect_tiles(m2, radii, depth, W, H, 16), repeats)
    off, ids = isect_tiles(m2, radii, depth, W, H, 16)
    inputs = (m2.detach(), con.detach(), s["opacities"], colors, bg)
    row = {"N": n, "size": f"{W}x{H}", "D": D, "M": ids.numel(), "proj_fwd": proj_fwd,
           "proj_bwd": proj_bwd_ms, "bin": binning}
    for name, fn in backends.items():
        row[f"{name}_fwd"], row[f"{name}_bwd"] = time_backend(fn, inputs, off, ids, W, H, repeats)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only N=30k, 192x144, D=3")
    ap.add_argument("--backends", default="torch,cpp", help="comma list of torch, cpp")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (after 1 warm-up)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over the repeats (min is robust to other load on the machine)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: keep)")
    ap.add_argument("--sizes", default=None, help="override, e.g. 192x144,384x288")
    ap.add_argument("--n", default=None, help="override, e.g. 2000,30000")
    ap.add_argument("--d", default=None, help="override, e.g. 3,16")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global STAT
    STAT = min if args.stat == "min" else statistics.median

    backends = {}
    for name in args.backends.split(","):
        if name == "torch":
            backends["torch"] = rasterize_torch
        elif name == "cpp":
            from gaussian_renderer import cpp_backend
            if not cpp_backend.available():
                print(f"cpp backend unavailable: {cpp_backend.unavailable_reason()}")
                continue
            backends["cpp"] = cpp_backend.rasterize_cpp
        else:
            ap.error(f"unknown backend {name!r}")

    ns, sizes, ds = [2000, 30000, 100000], [(192, 144), (384, 288)], [3, 16]
    if args.quick:
        ns, sizes, ds = [30000], [(192, 144)], [3]
    if args.n:
        ns = [int(v) for v in args.n.split(",")]
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.d:
        ds = [int(v) for v in args.d.split(",")]

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.stat} of "
          f"{args.repeats} (ms)")
    cols = ["N", "size", "D", "M", "proj_fwd", "proj_bwd", "bin"]
    for b in backends:
        cols += [f"{b}_fwd", f"{b}_bwd"]
    if {"torch", "cpp"} <= set(backends):
        cols.append("speed-up")
    print(" ".join(f"{c:>9}" for c in cols))
    cache: dict = {}
    for n in ns:
        for (W, H) in sizes:
            for D in ds:
                r = run_case(n, W, H, D, backends, args.repeats, cache)
                if "speed-up" in cols:
                    r["speed-up"] = (r["torch_fwd"] + r["torch_bwd"]) / (r["cpp_fwd"] + r["cpp_bwd"])
                cells = []
                for c in cols:
                    v = r[c]
                    cells.append(f"{v:>9.1f}" if isinstance(v, float) else f"{v:>9}")
                print(" ".join(cells), flush=True)


if __name__ == "__main__":
    main()
