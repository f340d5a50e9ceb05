"""Query latency (text embedding -> 3D selection incl. refinement) against the number of Gaussians.

    python benchmarks/query_latency.py [--sizes 100000 1000000] [--device cpu|cuda] [--queries 5]

A scene-like field is synthesised: Gaussians in `--instances` tight instance clusters (16-D unit
features, spread like a trained instance field, d = median spread), each instance with its own
512-D language vector + noise (CLIP-like image-text cosine ~0.3) and random opacities. Every query
is one instance's name vector. Times the relevancy (1 query vs N, 4 negatives), the rescale and the
collaborative refinement, and reports the median per query.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from scene.grounding import relevancy, rescale, select


def make_field(n: int, instances: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(instances, 16, generator=g), dim=-1)
    label = torch.randint(0, instances, (n,), generator=g)
    feats = F.normalize(centres[label] + 0.03 * torch.randn(n, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(instances + 4, 512, generator=g), dim=-1)  # names + 4 negatives
    gap = F.normalize(torch.randn(512, generator=g), dim=0)
    lang = F.normalize(0.3 * text[label] + 0.95 * gap + 0.02 * torch.randn(n, 512, generator=g), dim=-1)
    opacity = torch.rand(n, generator=g)
    d = float((feats - centres[label]).norm(dim=-1).median())
    return (feats.to(device), lang.half().to(device), opacity.to(device), d,
            text[:instances].to(device), text[instances:].to(device))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_queries(n: int, device, n_queries: int = 5, instances: int = 200) -> dict:
    """Median ms of relevancy + rescale and of the collaborative refinement over ``n_queries``
    queries (after one warm-up) on a synthesised field of ``n`` Gaussians."""
    feats, lang, opac, d, names, neg = make_field(n, instances, device)
    rel_t, ref_t, sel_n = [], [], []
    for q in range(n_queries + 1):  # the first one warms up
        sync(device)
        t0 = time.perf_counter()
        s = rescale(relevancy(lang, names[q:q + 1], neg)[0])
        sync(device)
        t1 = time.perf_counter()
        sel = select("collaborative", s, feats, opac, d)
        sync(device)
        t2 = time.perf_counter()
        if q:
            rel_t.append(1e3 * (t1 - t0))
            ref_t.append(1e3 * (t2 - t1))
            sel_n.append(int(sel.sum()))
    return {"n_gaussians": n, "relevancy_ms": statistics.median(rel_t), "refine_ms": statistics.median(ref_t),
            "total_ms": statistics.median([a + b for a, b in zip(rel_t, ref_t)]),
            "selected": statistics.median(sel_n)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="numbers of Gaussians")
    p.add_argument("--instances", type=int, default=200, help="instance clusters in the field")
    p.add_argument("--queries", type=int, default=5, help="queries timed per size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'N':>10} {'relevancy ms':>13} {'refine ms':>10} {'total ms':>9} {'selected':>9}")
    for n in a.sizes:
        r = time_queries(n, device, a.queries, a.instances)
        print(f"{n:>10} {r['relevancy_ms']:>13.1f} {r['refine_ms']:>10.1f} {r['total_ms']:>9.1f} {r['selected']:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
