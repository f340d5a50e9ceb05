"""The C++ CPU rasterizer against its arithmetic limit.

    python benchmarks/rasterizer_limit.py                # 30k Gaussians, 192x144, D = 3 (the scene of rasterizer.py)
    python benchmarks/rasterizer_limit.py --n 100000 --size 384x288 --d 16

The limit of a view = the pixel-Gaussian pairs it must composite x the float operations of one pair /
the machine's measured float rate. Pairs are counted here with plain torch, tile by tile, from the
same projection and binning as the renderer: "binned" = tile-Gaussian intersections x tile pixels
(what a naive tile rasterizer evaluates), "reached" = pairs with sigma >= 0 and alpha >= 1/255 (what
must be evaluated at least), "composited" = reached pairs in front of the pixel's transmittance stop
(what changes the image). Operations per composited pair, counted from the maths in
gaussian_renderer/csrc/rasterize.cpp (an FMA = 2): forward 2 (offsets) + 8 (sigma) + 24 (exp: range
reduction + degree-6 polynomial) + 3 (alpha) + 3 (transmittance, weight) + 2 D (colour) ~ 40 + 2 D;
backward ~ 2.5 x that (the forward's recomputation, the transmittance recovery, the five partial
derivatives and the colour gradient). The float rate is torch's float32 matrix multiply (one
2048 x 2048 product, all threads): an upper bound no compositing loop reaches (it is latency-bound on
exp and the transmittance chain), so "fraction of limit" reads as how far from a GEMM's efficiency
the kernel is, not as a target of 100 %.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gaussian_renderer.projection import isect_tiles, project_gaussians  # noqa: E402
from rasterizer import camera, make_scene, time_backend  # noqa: E402

ALPHA_MIN, T_MIN, MAX_ALPHA = 1.0 / 255.0, 1e-4, 0.999  # gsplat 1.5.3 (gaussian_renderer/torch_backend.py)


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.no_grad()
def count_pairs(m2, con, op, off, ids, W, H, ts=16) -> dict:
    """Binned, reached and composited pixel-Gaussian pairs, tile by tile (torch, float32)."""
    tiles_x = (W + ts - 1) // ts
    binned = reached = composited = 0
    for t in range(off.numel() - 1):  # CSR: the Gaussians of tile t, front to back
        g = ids[int(off[t]):int(off[t + 1])]
        if g.numel() == 0:
            continue
        x0, y0 = (t % tiles_x) * ts, (t // tiles_x) * ts
        ys, xs = torch.meshgrid(torch.arange(y0, min(y0 + ts, H)), torch.arange(x0, min(x0 + ts, W)), indexing="ij")
        px, py = xs.reshape(-1).float() + 0.5, ys.reshape(-1).float() + 0.5            # [P]
        dx, dy = m2[g, 0:1] - px[None], m2[g, 1:2] - py[None]                          # [G, P]
        A, B, C = con[g, 0:1], con[g, 1:2], con[g, 2:3]
        sigma = 0.5 * (A * dx * dx + C * dy * dy) + B * dx * dy
        alpha = torch.clamp(op[g, None] * torch.exp(-sigma), max=MAX_ALPHA)
        ok = (sigma >= 0) & (alpha >= ALPHA_MIN)
        binned += g.numel() * px.numel()
        reached += int(ok.sum())
        T = torch.cumprod(torch.where(ok, 1 - alpha, torch.ones_like(alpha)), dim=0)   # T after each Gaussian
        composited += int((ok & (T > T_MIN)).sum())
    return {"binned": binned, "reached": reached, "composited": composited}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30000, help="Gaussians (default 30000)")
    ap.add_argument("--size", default="192x144", help="WxH (default 192x144)")
    ap.add_argument("--d", type=int, default=3, help="feature channels (default 3)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (median, after a warm-up)")
    a = ap.parse_args(argv)
    W, H = (int(v) for v in a.size.split("x"))
    from gaussian_renderer import cpp_backend

    if not cpp_backend.available():
        sys.exit(f"error: the C++ rasterizer is unavailable: {cpp_backend.unavailable_reason()}")
    s = make_scene(a.n)
    viewmat, K = camera(W, H)
    m2, con, depth, radii = project_gaussians(s["means"], s["quats"], s["scales"], viewmat, K, W, H)
    off, ids = isect_tiles(m2, radii, depth, W, H, 16)
    colors = torch.rand(a.n, a.d, generator=torch.Generator().manual_seed(1))
    bg = torch.full((a.d,), 0.1)
    inputs = (m2.detach(), con.detach(), s["opacities"], colors, bg)
    fwd_ms, bwd_ms = time_backend(cpp_backend.rasterize_cpp, inputs, off, ids, W, H, a.repeats)
    pairs = count_pairs(m2.detach(), con.detach(), s["opacities"], off, ids, W, H)
    peak = gemm_gflops()
    f_fwd = 40 + 2 * a.d
    f_bwd = 2.5 * f_fwd
    print(f"N {a.n}, {W}x{H}, D {a.d}, threads {torch.get_num_threads()}; float32 GEMM {peak:.1f} GFLOP/s")
    print(f"pairs: binned {pairs['binned']:,}, reached {pairs['reached']:,}, composited {pairs['composited']:,} "
          f"(tile-Gaussian intersections {ids.numel():,})")
    for name, ms, f in (("forward", fwd_ms, f_fwd), ("backward", bwd_ms, f_bwd)):
        limit = pairs["composited"] * f / (peak * 1e9) * 1e3
        gflops = pairs["composited"] * f / (ms * 1e-3) / 1e9
        print(f"{name:>8}: {ms:7.2f} ms; limit {limit:6.3f} ms ({f:.0f} flop x composited pairs); "
              f"{gflops:5.1f} GFLOP/s achieved = {100 * limit / ms:4.1f} % of the GEMM rate; "
              f"{pairs['reached'] / (ms * 1e-3) / 1e6:6.1f} M reached pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
