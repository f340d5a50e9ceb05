"""The language mapping at scale: the dense field (release form) vs the factored field, seconds per part.

    python benchmarks/mapping_scale.py                      # 1M Gaussians, 10k anchors, k 25, smoothing 10
    python benchmarks/mapping_scale.py --gaussians 100000 --anchors 2000

Both forms use the pruned top-k now; the dense form with the brute-force top-k (the code before the
factored field) costs the dense total + (brute force - pruned top-k). A trained-like field is synthesised: 16-D instance features in 200 tight clusters (objects), anchors
drawn around the same centres (as mask means are), unit 512-D CLIP rows, Gaussian centres in 200
blobs. "dense" is what the mapping stage computed before the factored field: ``kernel_mapping``
(top-k anchors, softmax weights, the N x 512 weighted sums) then ``smooth_knn`` (10-NN mean of the
N x 512 field, normalised). "factored" (``mapping.factored``, the default) is ``knn_indices`` + the
factored build (``scene/language_field.py: factor_kernel_field``: top-k, weights, the norms of the
unsmoothed and smoothed vectors); its top-k prunes anchors by bounding groups of rows
(``scene/mapping.py: anchor_topk``), the brute-force top-k is timed beside it. The two fields are
checked to agree on 2000 random rows (max abs error).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scene.language_field import factor_kernel_field  # noqa: E402
from scene.mapping import _topk_blocks, anchor_topk, kernel_mapping, knn_indices, smooth_knn  # noqa: E402


def make(n: int, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(200, 16, generator=g), dim=-1)
    label = torch.randint(0, 200, (n,), generator=g)
    feat = centres[label] + 0.05 * torch.randn(n, 16, generator=g)
    anchors = 0.9 * centres[torch.randint(0, 200, (m,), generator=g)] + 0.03 * torch.randn(m, 16, generator=g)
    clip = F.normalize(torch.randn(m, 512, generator=g), dim=-1)
    xyz = 3.0 * torch.randn(200, 3, generator=g)[label] + 0.2 * torch.randn(n, 3, generator=g)
    return feat, anchors, clip, xyz


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gaussians", type=int, default=1_000_000, help="N (default 1000000)")
    p.add_argument("--anchors", type=int, default=10_000, help="M mask pairs (default 10000)")
    p.add_argument("--top_k", type=int, default=25, help="anchors per Gaussian (default 25, COS3D)")
    p.add_argument("--smooth_k", type=int, default=10, help="smoothing neighbours (default 10, COS3D)")
    p.add_argument("--skip-dense", action="store_true", help="time the factored field only")
    a = p.parse_args(argv)
    feat, anchors, clip, xyz = make(a.gaussians, a.anchors)
    k = min(a.top_k, a.anchors)
    print(f"N {a.gaussians}, M {a.anchors}, top_k {k}, smooth_k {a.smooth_k}, torch threads {torch.get_num_threads()}")
    rows = {}
    if not a.skip_dense:
        dense0, rows["dense: kernel regression (top-k + N x 512 sums)"] = timed(
            lambda: kernel_mapping(feat, anchors, clip, top_k=k, sigma=0.1))
        dense, rows["dense: 3D smoothing (KD-tree + N x 512 means)"] = timed(
            lambda: smooth_knn(xyz, dense0, k=a.smooth_k))
        del dense0
    nbr, rows["factored: KD-tree neighbours"] = timed(lambda: knn_indices(xyz, a.smooth_k))
    _, rows["  (of which: top-k anchors alone)"] = timed(lambda: anchor_topk(F.normalize(feat, dim=-1), anchors, k))
    _, rows["  (top-k by brute force, for comparison)"] = timed(
        lambda: _topk_blocks(F.normalize(feat, dim=-1), anchors, k, 1 << 26))
    field, rows["factored: build (top-k, weights, norms)"] = timed(
        lambda: factor_kernel_field(feat, anchors, clip, k, 0.1, nbr))
    dense_total = sum(v for n, v in rows.items() if n.startswith("dense"))
    fact_total = sum(v for n, v in rows.items() if n.startswith("factored"))
    for name, sec in rows.items():
        print(f"{name:<52} {sec:>8.2f} s")
    if not a.skip_dense:
        print(f"{'dense total':<52} {dense_total:>8.2f} s")
    print(f"{'factored total':<52} {fact_total:>8.2f} s")
    if not a.skip_dense:
        sample = torch.randperm(a.gaussians, generator=torch.Generator().manual_seed(1))[:2000]
        err = (field.rows(sample) - dense[sample]).abs().max().item()
        print(f"dense / factored: {dense_total / fact_total:.2f}x; max |difference| on 2000 rows: {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
