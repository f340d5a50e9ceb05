"""Query latency (text embedding -> 3D selection incl. refinement) against the number of Gaussians, with the
language field dense (N x 512, the release's form) and factored (scene/language_field.py, the default).

    python benchmarks/query_latency.py [--sizes 100000 1000000] [--device cpu|cuda] [--queries 5]

A scene-like field is synthesised: Gaussians in `--instances` tight instance clusters (16-D unit
features, spread like a trained instance field, d = median spread), 20 mask anchors per instance
around its centre, each anchor's 512-D CLIP row its instance's name vector + a shared offset + noise
(CLIP-like image-text cosine ~0.3), centres in one blob per instance, random opacities. The kernel
field (top-25 anchors, sigma 0.1, 10-NN smoothing) is built once in factored form; the dense twin is
its N x 512 float32 materialisation (what the dense path holds in memory). Every query is one
instance's name vector. Times the relevancy + rescale (1 query vs N, 4 negatives) of each form (the
factored one with its sparse sums in C++, scene/csrc/field_sums.cpp, the default on a CPU, and in torch,
"(torch sums)") and the collaborative refinement (the same for all), reports the median per query, and
checks that the dense and factored forms select the same Gaussians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from scene.grounding import relevancy, rescale, select
from scene.language_field import DenseField, factor_kernel_field
from scene.mapping import knn_indices


def make_field(n: int, instances: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(instances, 16, generator=g), dim=-1)
    label = torch.randint(0, instances, (n,), generator=g)
    feats = F.normalize(centres[label] + 0.03 * torch.randn(n, 16, generator=g), dim=-1)
    a_label = torch.arange(instances).repeat_interleave(20)
    anchors = centres[a_label] + 0.02 * torch.randn(a_label.shape[0], 16, generator=g)
    text = F.normalize(torch.randn(instances + 4, 512, generator=g), dim=-1)  # names + 4 negatives
    gap = F.normalize(torch.randn(512, generator=g), dim=0)
    clip = F.normalize(0.3 * text[a_label] + 0.95 * gap + 0.02 * torch.randn(a_label.shape[0], 512, generator=g), dim=-1)
    xyz = 3.0 * torch.randn(instances, 3, generator=g)[label] + 0.1 * torch.randn(n, 3, generator=g)
    opacity = torch.rand(n, generator=g)
    d = float((feats - centres[label]).norm(dim=-1).median())
    feats, anchors, clip, xyz = (t.to(device) for t in (feats, anchors, clip, xyz))
    field = factor_kernel_field(feats, anchors, clip, 25, 0.1, knn_indices(xyz, 10), xyz=xyz)
    return feats, field, opacity.to(device), d, text[:instances].to(device), text[instances:].to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class TorchSums:
    """The factored field with its sparse sums in torch (embedding_bag), for the comparison."""

    def __init__(self, field):
        self.field, self.shape, self.device = field, field.shape, field.device

    def dots(self, vectors, chunk_size=0):
        return self.field.dots(vectors, backend="torch")


def time_queries(n: int, device, n_queries: int = 5, instances: int = 200) -> dict:
    """Median ms of relevancy + rescale (dense and factored field) and of the collaborative refinement
    over ``n_queries`` queries (after one warm-up) on a synthesised field of ``n`` Gaussians."""
    feats, field, opac, d, names, neg = make_field(n, instances, device)
    dense = DenseField(field.dense())
    t = {"dense": [], "factored": [], "torch_sums": [], "refine": []}
    sel_n, same = [], True
    for q in range(n_queries + 1):  # the first one warms up
        scores = {}
        for name, lang in (("dense", dense.values), ("factored", field), ("torch_sums", TorchSums(field))):
            sync(device)
            t0 = time.perf_counter()
            scores[name] = rescale(relevancy(lang, names[q:q + 1], neg)[0])
            sync(device)
            if q:
                t[name].append(1e3 * (time.perf_counter() - t0))
        sync(device)
        t0 = time.perf_counter()
        sel = select("collaborative", scores["factored"], feats, opac, d)
        sync(device)
        if q:
            t["refine"].append(1e3 * (time.perf_counter() - t0))
            sel_n.append(int(sel.sum()))
        same &= torch.equal(sel, select("collaborative", scores["dense"], feats, opac, d))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"n_gaussians": n, "dense_ms": med["dense"], "factored_ms": med["factored"],
            "torch_sums_ms": med["torch_sums"], "refine_ms": med["refine"],
            "total_dense_ms": med["dense"] + med["refine"], "total_factored_ms": med["factored"] + med["refine"],
            "selected": statistics.median(sel_n), "same_selections": same}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="numbers of Gaussians")
    p.add_argument("--instances", type=int, default=200, help="instance clusters in the field")
    p.add_argument("--queries", type=int, default=5, help="queries timed per size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}; relevancy = relevancy + rescale of one query")
    print(f"{'N':>10} {'dense ms':>9} {'factored ms':>12} {'ratio':>6} {'(torch sums)':>13} {'refine ms':>10} "
          f"{'total dense':>12} {'total factored':>15} {'selected':>9} {'same':>5}")
    for n in a.sizes:
        r = time_queries(n, device, a.queries, a.instances)
        print(f"{n:>10} {r['dense_ms']:>9.1f} {r['factored_ms']:>12.1f} {r['dense_ms'] / r['factored_ms']:>5.1f}x "
              f"{r['torch_sums_ms']:>13.1f} {r['refine_ms']:>10.1f} {r['total_dense_ms']:>12.1f} "
              f"{r['total_factored_ms']:>15.1f} {r['selected']:>9.0f} {str(r['same_selections']):>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
